"""Checks of the ``--config`` files a ``padam-fit`` command stacks, before jsonargparse reads them.

jsonargparse applies several ``--config`` files in order, and a list in a later file replaces the
list of an earlier one: a config that sets ``trainer.callbacks`` silently drops the callbacks that
an earlier config added (a p schedule, the released code's training pass). A key written with a
trailing ``+`` (``callbacks+:``) appends instead, as jsonargparse documents for lists; the shipped
experiment configs use it. This module refuses the silent drop and names the fix, and refuses a
sweep file (``configs/sweeps/*.yaml``, for ``padam-sweep``) given to ``padam-fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.errors import UserError

#: The config key whose list a later file would replace.
CALLBACKS_KEY = "callbacks"


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


def _callback_entries(config: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """How a config sets the trainer's callbacks (``"replace"``, ``"append"`` or None) and to what.

    Both spellings jsonargparse reads are covered: nested (``trainer: {callbacks: ...}``) and
    dotted (``trainer.callbacks: ...``).
    """
    trainer = config.get("trainer")
    sections = [trainer] if isinstance(trainer, dict) else []
    sections.append({k.removeprefix("trainer."): v for k, v in config.items() if "." in str(k)})
    for section in sections:
        for key, mode in ((CALLBACKS_KEY, "replace"), (f"{CALLBACKS_KEY}+", "append")):
            if key in section:
                value = section[key]
                if value is None:
                    return mode, []
                return mode, value if isinstance(value, list) else [value]
    return None, []


def _callback_name(entry: Any) -> str:
    """``TrainPass`` for ``{class_path: padam_lightning.training.train_pass.TrainPass}``."""
    class_path = entry.get("class_path") if isinstance(entry, dict) else entry
    return str(class_path).rsplit(".", 1)[-1]


#: The key that makes a YAML file a sweep file (``configs/sweeps/*.yaml``); no run config has it.
SWEEP_KEY = "grid"


def check_not_sweep_files(config_files: Sequence[str]) -> None:
    """Refuse a sweep file given to ``padam-fit --config``, naming the command that runs it.

    jsonargparse would report its first key as an unknown config key, which says nothing about
    what the file is.

    Raises:
        UserError: If a file has a top-level ``grid``.
    """
    for path in config_files:
        config = _read_mapping(path)
        if config is not None and SWEEP_KEY in config:
            raise UserError(
                f"--config {path} is a sweep file (it has a '{SWEEP_KEY}' of runs), which "
                f"padam-sweep runs: padam-sweep {path}. padam-fit takes the config of one run, "
                "such as configs/wrn.yaml."
            )


def check_callback_stacking(config_files: Sequence[str]) -> None:
    """Refuse a config file that would drop callbacks added by an earlier ``--config`` file.

    Args:
        config_files: The ``--config`` files in the order given.

    Raises:
        UserError: If a file sets ``trainer.callbacks`` (a replacement) after another file added
            callbacks; the message names both files, the dropped callbacks and the fix.
    """
    earlier: list[tuple[str, list[Any]]] = []
    for path in config_files:
        config = _read_mapping(path)
        if config is None:
            continue
        mode, entries = _callback_entries(config)
        if mode == "replace" and earlier:
            dropped = ", ".join(
                f"{_callback_name(entry)} (from {source})"
                for source, added in earlier
                for entry in added
            )
            raise UserError(
                f"--config {path} sets trainer.callbacks, which replaces the callbacks of the "
                f"configs before it and would drop {dropped}. To add to them, write "
                f"'{CALLBACKS_KEY}+:' instead of '{CALLBACKS_KEY}:' under 'trainer:' in {path} "
                "(or leave the earlier config out if the replacement is meant)."
            )
        if mode == "replace":
            earlier = [(path, entries)] if entries else []
        elif mode == "append":
            earlier.append((path, entries))
