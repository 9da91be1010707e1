"""Reading ``padam-fit`` run folders back: what each run is, its config, curves and end.

Each epoch-level scalar is numbered by Lightning's ``epoch`` scalar at its global step, + 1
(epochs completed); points a resumed writer's ``purge_step`` orphaned are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.cli.run_layout import CONFIG_FILE, EVAL_FOLDER, FINISHED_FILE
from padam_lightning.errors import UserError

EVENT_FILE_PREFIX, EPOCH_TAG = "events.out.tfevents.", "epoch"
#: The file in each run folder that says what the run is (written by padam-sweep).
RUN_FILE = "run.json"
#: The axis of runs without a ``run.json``: their run name.
FOLDER_AXIS = "run"
_SEED_SUFFIX = re.compile(r"(/version_\d+|-seed\d+)$")
_VERSION = re.compile(r"^version_\d+$")


@dataclass(frozen=True)
class Curve:
    """One scalar per epoch: ``values[i]`` was logged at the end of epoch ``epochs[i]``."""

    epochs: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class AxisValue:
    """A run's choice on one sweep axis: its label, display title and position in the sweep."""

    label: str
    title: str
    index: int = 0


class UnreadableRunError(Exception):
    """A run folder whose ``config.yaml`` cannot be read; the message says why, in one line."""


@dataclass
class RunRecord:
    """What a run folder says about the run (``info`` is its ``run.json``, ``{}`` without)."""

    path: Path
    name: str
    config: dict[str, Any]
    finished: dict[str, Any] | None
    axes: dict[str, AxisValue]
    seed: int | None
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plain: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs_completed(self) -> int:
        """The last epoch (from 1) with a logged test error, or 0."""
        return self.curves["val/err"].epochs[-1] if "val/err" in self.curves else 0

    @property
    def max_epochs(self) -> int | None:
        """The planned epochs (``trainer.max_epochs``; ``None`` when unset or -1)."""
        value = self.setting("trainer.max_epochs")
        return value if type(value) is int and value > 0 else None  # not a bool

    @property
    def pruned(self) -> bool:
        """Whether a search's pruner stopped the run early (``finished.json``'s ``stop``)."""
        return (self.finished or {}).get("stop") == "pruned"

    @property
    def optimizer(self) -> str | None:
        """The optimizer as reports name it (:func:`optimizer_title`), or ``None``."""
        class_path = self.setting("model.optimizer.class_path")
        settings = self.setting("model.optimizer.init_args")
        return optimizer_title(str(class_path), settings or {}) if class_path else None

    def setting(self, dotted: str) -> Any:
        """A value of the run's ``config.yaml`` by dotted key (``None`` when absent)."""
        value: Any = self.config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def optimizer_title(class_path: str, settings: dict[str, Any]) -> str:
    """``SGDM``, ``AMSGrad``, ``AdamW (amsgrad)`` or the class name, as run names say it.

    The rule of ``padam_lightning.cli.padam_cli.optimizer_label`` and of
    ``padam_lightning.training.tensorboard`` (which may not import this package).
    """
    name = class_path.rsplit(".", 1)[-1]
    if name == "SGD" and settings.get("momentum"):
        return "SGDM"
    if name in ("Adam", "AdamW") and settings.get("amsgrad"):
        return "AMSGrad" if name == "Adam" else "AdamW (amsgrad)"
    return name


def check_output_folder(path: Path, option: str) -> None:
    """Refuse (:class:`UserError`), before any work, a ``path`` that cannot be a writable folder."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise UserError(f"{option} {path}{where} is a file, not a folder; pass a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write into {existing} (permission denied).")


def find_run_dirs(logdir: Path) -> list[Path]:
    """Folders under ``logdir`` (itself included) holding event files, not hidden or ``eval/``."""
    found = []
    for root, dirs, files in os.walk(logdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != EVAL_FOLDER)
        if any(name.startswith(EVENT_FILE_PREFIX) for name in files):
            found.append(Path(root))
    return sorted(found)


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag of a run folder as ``{tag: {step: value}}``, as TensorBoard shows them."""
    # Imported here: TensorBoard's reader pulls in a lot, and only the report needs it.
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # purges orphans
    logger = logging.getLogger("tensorboard")  # it warns of each purge: expected here
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        accumulator.Reload()
    finally:
        logger.setLevel(level)
    return {
        tag: {e.step: e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: e.step)}
        for tag in accumulator.Tags()[SCALARS]
    }


def epoch_curves(scalars: dict[str, dict[int, float]]) -> dict[str, Curve]:
    """Per-epoch curves of the epoch-level tags (not ``*_step``); the last point of an epoch."""
    epoch_at_step = scalars.get(EPOCH_TAG, {})
    curves: dict[str, Curve] = {}
    for tag, by_step in scalars.items():
        if tag == EPOCH_TAG or tag.endswith("_step"):
            continue
        by_epoch = {
            round(epoch_at_step[step]) + 1: value
            for step, value in by_step.items()
            if step in epoch_at_step
        }
        if by_epoch:
            epochs = tuple(sorted(by_epoch))
            curves[tag] = Curve(epochs, tuple(by_epoch[e] for e in epochs))
    return curves


def read_json_object(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object file (``None`` when absent or unreadable) and a note when unreadable."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: invalid JSON or UTF-8
        return None, f"{path.name} is unreadable ({_one_line(err)})"
    return (data, None) if isinstance(data, dict) else (None, f"{path.name} is not a JSON object")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UnreadableRunError(f"{path.name} is unreadable ({_one_line(err)})") from err
    if not isinstance(config, dict | None):
        raise UnreadableRunError(
            f"{path.name} holds a {type(config).__name__}, not padam-fit's config mapping"
        )
    return config or {}


def _one_line(err: Exception) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def read_run(run_dir: Path, logdir: Path) -> RunRecord | None:
    """The run in ``run_dir``; ``None`` without a ``config.yaml``; UnreadableRunError if bad.

    A damaged ``finished.json`` counts as not finished, a damaged ``run.json`` as none: a note.
    """
    if not (run_dir / CONFIG_FILE).is_file():
        return None
    config = _read_config(run_dir / CONFIG_FILE)
    notes = []
    finished, note = read_json_object(run_dir / FINISHED_FILE)
    if note is not None:
        notes.append(f"{note}; taken as not finished")
    found, note = read_json_object(run_dir / RUN_FILE)
    info = found or {}
    if note is not None:
        notes.append(f"{note}; grouped by its folder name")
    name = run_dir.relative_to(logdir).as_posix() if run_dir != logdir else run_dir.resolve().name
    axes = info.get("axes")
    if isinstance(axes, dict) and all(isinstance(v, dict) for v in axes.values()):
        values = {
            str(axis): AxisValue(
                str(v.get("label")), str(v.get("title") or v.get("label")), int(v.get("index") or 0)
            )
            for axis, v in axes.items()
        }
        seed, plain = info.get("seed"), False
    else:  # a plain padam-fit run: its name, or the name's folder above ``version_N``
        group = _SEED_SUFFIX.sub("", name)
        if _VERSION.match(group):
            group = run_dir.resolve().parent.name or group
        values = {FOLDER_AXIS: AxisValue(group, group)}
        seed, plain = config.get("seed_everything"), True
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    curves = epoch_curves(read_scalars(run_dir))
    return RunRecord(run_dir, name, config, finished, values, seed, curves, notes, plain, info)
