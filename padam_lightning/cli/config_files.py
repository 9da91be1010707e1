"""Checks of the ``--config`` files a ``padam-fit`` command stacks, before jsonargparse reads them.

A list in a later ``--config`` file replaces that of an earlier one, so a config setting
``trainer.callbacks`` would silently drop the callbacks an earlier one added; ``callbacks+:``
appends instead (the shipped experiment configs use it). A sweep file given to ``padam-fit`` is
refused too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.errors import UserError


def config_file_args(args: Sequence[str]) -> list[str]:
    """The ``--config`` values of a command line, in order (``--config X`` and ``--config=X``)."""
    found: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            found.append(args[index + 1])
        elif arg.startswith("--config="):
            found.append(arg.removeprefix("--config="))
    return found


def _read_mapping(path: str) -> dict[str, Any] | None:
    """The file's YAML mapping, or None when it is missing or unreadable (jsonargparse says why)."""
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return content if isinstance(content, dict) else None


def _callbacks(config: dict[str, Any]) -> tuple[str | None, list[str]]:
    """Whether a config sets (``"replace"``) or appends to (``"append"``) the callbacks, and which.

    Both spellings jsonargparse reads count: ``trainer: {callbacks: ...}`` and
    ``trainer.callbacks: ...``.
    """
    trainer = config.get("trainer")
    sections = [trainer] if isinstance(trainer, dict) else []
    sections.append({k.removeprefix("trainer."): v for k, v in config.items() if "." in str(k)})
    for section in sections:
        for key, mode in (("callbacks", "replace"), ("callbacks+", "append")):
            if key in section:
                value = section[key]
                entries = [] if value is None else value if isinstance(value, list) else [value]
                return mode, [_class_name(entry) for entry in entries]
    return None, []


def _class_name(entry: Any) -> str:
    """``TrainPass`` for ``{class_path: padam_lightning.training.train_pass.TrainPass}``."""
    return str(entry.get("class_path") if isinstance(entry, dict) else entry).rsplit(".", 1)[-1]


def check_not_sweep_files(config_files: Sequence[str]) -> None:
    """Refuse a sweep file (a top-level ``grid``) given to ``padam-fit --config``.

    Raises:
        UserError: Naming the command that runs it, where jsonargparse would only report an
            unknown key.
    """
    for path in config_files:
        config = _read_mapping(path)
        if config is not None and "grid" in config:
            raise UserError(
                f"--config {path} is a sweep file (it has a 'grid' of runs), which padam-sweep "
                f"runs: padam-sweep {path}. padam-fit takes the config of one run, such as "
                "configs/wrn.yaml."
            )


def check_callback_stacking(config_files: Sequence[str]) -> None:
    """Refuse a ``--config`` file (in the order given) that drops callbacks an earlier one added.

    Raises:
        UserError: Naming both files, the dropped callbacks and the fix.
    """
    earlier: list[str] = []  # "<class> (from <file>)" of each callback the files so far add
    for path in config_files:
        mode, names = _callbacks(_read_mapping(path) or {})
        if mode == "replace" and earlier:
            raise UserError(
                f"--config {path} sets trainer.callbacks, which replaces the callbacks of the "
                f"configs before it and would drop {', '.join(earlier)}. To add to them, write "
                f"'callbacks+:' instead of 'callbacks:' under 'trainer:' in {path} "
                "(or leave the earlier config out if the replacement is meant)."
            )
        added = [f"{name} (from {path})" for name in names]
        if mode == "replace":
            earlier = added
        elif mode == "append":
            earlier += added
