"""``padam-fit``'s command line and its policy: run folders, checkpoints, resume checks, errors.

The library (:mod:`padam_lightning.training`) works without it; this package decides where a run
writes, what a resume may change and how mistakes are reported. The command itself
(:mod:`~padam_lightning.cli.padam_cli`, which imports Lightning) loads on first use, so that
``padam-sweep`` and ``padam-report`` can read :mod:`~padam_lightning.cli.run_layout` cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from padam_lightning.cli.padam_cli import (
        USAGE,
        PadamCLI,
        RunConfigSaver,
        build_cli,
        main,
        optimizer_label,
        resume_command,
    )

__all__ = [
    "USAGE",
    "PadamCLI",
    "RunConfigSaver",
    "build_cli",
    "main",
    "optimizer_label",
    "resume_command",
]


def __getattr__(name: str) -> Any:
    """The command's public names, imported from ``padam_cli`` when first asked for."""
    if name in __all__:
        return getattr(importlib.import_module("padam_lightning.cli.padam_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
