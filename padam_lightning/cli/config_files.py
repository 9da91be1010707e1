"""Checks of the ``--config`` files a ``padam-fit`` command stacks, before jsonargparse reads them.

A later file's ``trainer.callbacks`` would silently drop an earlier file's (``callbacks+:`` adds).
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


def _read_mapping(path: str) -> dict[str, Any]:
    """The file's YAML mapping ({} if it is missing); UserError if it is no YAML mapping."""
    try:
        content = yaml.safe_load(Path(path).read_text())
    except OSError:
        return {}  # jsonargparse names it
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        if isinstance(err, UnicodeDecodeError):
            problem, where = "a damaged or binary file", f" (byte {err.start} is not UTF-8 text)"
        raise UserError(f"--config {path} is not valid YAML: {problem}{where}.") from None
    if not isinstance(content, dict):
        what = "it is empty" if content is None else f"a {type(content).__name__}, not settings"
        raise UserError(f"--config {path} is no config file: {what} (expected 'trainer:' ...).")
    return content


def _callbacks(config: dict[str, Any]) -> tuple[str | None, list[str]]:
    """Whether a config sets (``"replace"``) or appends to (``"append"``) callbacks, and which."""
    trainer = config.get("trainer")
    sections = [trainer] if isinstance(trainer, dict) else []
    sections.append({k.removeprefix("trainer."): v for k, v in config.items() if "." in str(k)})
    for section in sections:
        for key, mode in (("callbacks", "replace"), ("callbacks+", "append")):
            if key in section:
                value = section[key]
                entries = [] if value is None else value if isinstance(value, list) else [value]
                paths = [e.get("class_path") if isinstance(e, dict) else e for e in entries]
                return mode, [str(path).rsplit(".", 1)[-1] for path in paths]
    return None, []


def check_config_files(args: Sequence[str]) -> None:
    """Refuse (UserError) a ``--config`` that is no YAML, a sweep, or drops earlier callbacks."""
    earlier: list[str] = []  # "<class> (from <file>)" of each callback the files so far add
    for path in config_file_args(args):
        config = _read_mapping(path)
        if "grid" in config:
            raise UserError(
                f"--config {path} is a sweep file (it has a 'grid' of runs), which padam-sweep "
                f"runs: padam-sweep {path}. padam-fit takes the config of one run, such as "
                "configs/wrn.yaml."
            )
        mode, names = _callbacks(config)
        if mode == "replace" and earlier:
            raise UserError(
                f"--config {path} sets trainer.callbacks, which replaces the callbacks of the "
                f"configs before it and would drop {', '.join(earlier)}. To add to them, write "
                f"'callbacks+:' instead of 'callbacks:' under 'trainer:' in {path} "
                "(or leave the earlier config out if the replacement is meant)."
            )
        added = [f"{name} (from {path})" for name in names]
        earlier = added if mode == "replace" else earlier + added
