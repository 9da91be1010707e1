"""``padam-fit``'s command line and its policy: run folders, checkpoints, resume checks, errors.

The library (:mod:`padam_lightning.training`) works without it; this package decides where a run
writes, what a resume may change and how mistakes are reported. The command itself
(:mod:`~padam_lightning.cli.padam_cli`, which imports Lightning) loads on first use, so that
``padam-sweep`` and ``padam-report`` can read :mod:`~padam_lightning.cli.run_layout` cheaply.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from padam_lightning.cli.padam_cli import (
        USAGE,
        PadamCLI,
        RunConfigSaver,
        build_cli,
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


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
CTRL_C_EXIT_STATUS = 130


def main(args: list[str] | None = None) -> None:
    """Entry point of ``padam-fit``: Ctrl-C before training starts stops in one line.

    The command imports torch and Lightning, parses and builds the run for some seconds before
    training starts (from then on a stop is :class:`~padam_lightning.training.run_record.
    RunRecord`'s). Ctrl-C in those seconds raises ``KeyboardInterrupt`` wherever the
    interpreter is, which Python reports with a long traceback; this entry point, which imports
    nothing heavy itself, says instead that the command stopped, with exit status 130.

    Args:
        args: The arguments after ``padam-fit``; None reads ``sys.argv``.
    """
    try:
        importlib.import_module("padam_lightning.cli.padam_cli").main(args)
    except KeyboardInterrupt:
        command = sys.modules.get("padam_lightning.cli.padam_cli")
        if getattr(command, "subcommand_started", False):
            print("\npadam-fit: stopped by Ctrl-C.", file=sys.stderr)
        else:
            print("\npadam-fit: stopped by Ctrl-C before the run started.", file=sys.stderr)
        sys.exit(CTRL_C_EXIT_STATUS)


def __getattr__(name: str) -> Any:
    """The command's public names, imported from ``padam_cli`` when first asked for."""
    if name in __all__ and name != "main":
        return getattr(importlib.import_module("padam_lightning.cli.padam_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
