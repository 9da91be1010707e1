"""Reading ``padam-fit`` runs back: what each run is, its config, epoch curves and completion.

A run folder is any folder with TensorBoard event files directly in it (``save_dir/name/version``
of the TensorBoardLogger). Scalars are read with TensorBoard's own ``EventAccumulator`` and shown
as TensorBoard shows them: a resumed run opens its writer with ``purge_step`` (the step it
resumes from), and the points the stopped attempt wrote at that step or later are dropped.

Every scalar sits on Lightning's global-step axis. Per-step tags (named ``*_step``, e.g.
``train/loss_step``) are not epoch curves and are left out. The others are logged at the last
step of their epoch together with Lightning's ``epoch`` scalar (the 0-based epoch index) at the
same step, which numbers them as epochs *completed*: the value logged at the end of epoch index
``e`` belongs to epoch ``e + 1``.

What a run is comes from its ``run.json`` (written by ``padam-sweep``: axis labels and titles,
seed). A plain ``padam-fit`` run has none; it is then named by its folder's path under the
report's log folder with a trailing ``/version_N`` or ``-seedN`` taken off (so
``cifar10-wrn16_4-padam/version_0`` and ``.../version_1`` are both ``cifar10-wrn16_4-padam``), or
by the folder above it, the run name, when that path is only ``version_N`` (a report on a run
name's folder or on one run folder); its seed is the config's ``seed_everything``. The report
then adds the settings that differ between runs of one name to their labels
(:func:`padam_lightning.experiments.report_groups.label_plain_runs`).
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

EVENT_FILE_PREFIX = "events.out.tfevents."
#: Lightning's epoch index (0-based), logged at each step that has other values.
EPOCH_TAG = "epoch"
#: The file in each run folder that says what the run is (written by padam-sweep).
RUN_FILE = "run.json"
#: The axis of runs without a ``run.json``: one label per run folder (seeds stripped).
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
    """What a run folder says about the run.

    Attributes:
        axes: The run's value on each axis, in the sweep's axis order.
        notes: Files of the folder that could not be read and were passed over, one line each.
        plain: Whether the run has no ``run.json`` (a plain ``padam-fit`` run, whose one axis,
            :data:`FOLDER_AXIS`, is its name).
    """

    path: Path
    name: str
    config: dict[str, Any]
    finished: dict[str, Any] | None
    axes: dict[str, AxisValue]
    seed: int | None
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plain: bool = False

    @property
    def epochs_completed(self) -> int:
        """Epochs completed: the last epoch (numbered from 1) with a logged test error, or 0."""
        curve = self.curves.get("val/err")
        return curve.epochs[-1] if curve and curve.epochs else 0

    @property
    def max_epochs(self) -> int | None:
        """The planned number of epochs (``trainer.max_epochs``; ``None`` when not set or -1)."""
        value = self.setting("trainer.max_epochs")
        planned = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if planned else None

    @property
    def optimizer(self) -> str | None:
        """The optimizer as reports name it, or ``None`` when the config names none.

        ``Padam``, ``SGDM``, ``AMSGrad``...: see :func:`optimizer_title`.
        """
        class_path = self.setting("model.optimizer.class_path")
        if not class_path:
            return None
        settings = self.setting("model.optimizer.init_args")
        return optimizer_title(str(class_path), settings if isinstance(settings, dict) else {})

    def setting(self, dotted: str) -> Any:
        """A value of the run's ``config.yaml`` by dotted key (``None`` when absent)."""
        value: Any = self.config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def optimizer_title(class_path: str, settings: dict[str, Any]) -> str:
    """An optimizer's display name from its class and settings, as run names tell them apart.

    The rule of padam-fit's run names (``padam_lightning.cli.padam_cli.optimizer_label``): SGD
    with momentum is ``SGDM``, Adam with ``amsgrad`` is ``AMSGrad`` (AdamW with it ``AdamW
    (amsgrad)``); any other optimizer is its class name (``Padam``). TensorBoard's HParams table
    names optimizers by the same rule (``padam_lightning.training.tensorboard``, which may not
    import this package's ``experiments``).
    """
    name = class_path.rsplit(".", 1)[-1]
    if name == "SGD" and settings.get("momentum"):
        return "SGDM"
    if name in ("Adam", "AdamW") and settings.get("amsgrad"):
        return "AMSGrad" if name == "Adam" else "AdamW (amsgrad)"
    return name


def check_output_folder(path: Path, option: str) -> None:
    """Check that ``path`` is a folder, or can be created as one, that this user can write into.

    Called before any work, so a wrong path is one line up front rather than a traceback from
    ``mkdir`` (``FileExistsError``, ``NotADirectoryError``) after minutes of reading or training.

    Args:
        path: The folder (it and its parents may be missing).
        option: The command-line option that gave it, for the message (e.g. ``--out``).

    Raises:
        UserError: If ``path`` or one of its parents is an existing file, or the nearest
            existing folder is not writable.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pass a folder (created if new).")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{option} {path}: {existing} is a file, not a folder; pass a folder (created if new)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write into {existing} (permission denied).")


def find_run_dirs(logdir: Path) -> list[Path]:
    """Folders under ``logdir`` (itself included) holding event files.

    Hidden folders are skipped, and so are the ``eval/`` folders of ``padam-fit validate`` /
    ``test`` / ``predict``: their results belong to a run but are not its training curves.
    """
    found = []
    for root, dirs, files in os.walk(logdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != EVAL_FOLDER)
        if any(name.startswith(EVENT_FILE_PREFIX) for name in files):
            found.append(Path(root))
    return sorted(found)


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag of a run folder as ``{tag: {step: value}}``, in step order.

    The points a resumed run's ``purge_step`` orphaned are dropped, as TensorBoard drops them;
    of two points of one tag at one step, the later read wins.
    """
    # Imported here: TensorBoard's reader pulls in a lot, and only the report needs it.
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    accumulator = EventAccumulator(
        str(run_dir), size_guidance={SCALARS: 0}, purge_orphaned_data=True
    )
    # Each purge is logged as a warning ("Detected out of order event.step ..."): expected here.
    logger = logging.getLogger("tensorboard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        accumulator.Reload()
    finally:
        logger.setLevel(level)
    scalars: dict[str, dict[int, float]] = {}
    for tag in accumulator.Tags()[SCALARS]:
        events = sorted(accumulator.Scalars(tag), key=lambda event: event.step)  # stable
        scalars[tag] = {event.step: event.value for event in events}
    return scalars


def epoch_curves(scalars: dict[str, dict[int, float]]) -> dict[str, Curve]:
    """Per-epoch curves of the epoch-level tags, numbered by the ``epoch`` at their steps.

    A point without an ``epoch`` at its step is left out; of several points in one epoch
    (validation more often than once an epoch), the last is kept.
    """
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
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _read_config(path: Path) -> dict[str, Any]:
    """A run's ``config.yaml``.

    Raises:
        UnreadableRunError: If the file cannot be read or is not a YAML mapping.
    """
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UnreadableRunError(f"{path.name} is unreadable ({_one_line(err)})") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UnreadableRunError(
            f"{path.name} holds a {type(config).__name__}, not padam-fit's config mapping"
        )
    return config


def _one_line(err: Exception) -> str:
    """An error's message in one line (YAML's span several: keep the problem and where it is)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _identity(
    identity: dict[str, Any] | None, name: str, config: dict[str, Any], run_dir: Path
) -> tuple[dict[str, AxisValue], int | None, bool]:
    """The run's axes and seed from its ``run.json``, or by the folder rule without one.

    Returns:
        The axes, the seed, and whether the folder rule gave them (no usable ``run.json``).
    """
    axes = identity.get("axes") if identity else None
    if isinstance(axes, dict) and all(isinstance(v, dict) for v in axes.values()):
        values = {
            str(axis): AxisValue(
                str(value.get("label")),
                str(value.get("title") or value.get("label")),
                int(value.get("index") or 0),
            )
            for axis, value in axes.items()
        }
        seed = identity.get("seed") if identity else None
        plain = False
    else:
        group = _SEED_SUFFIX.sub("", name)
        if _VERSION.match(group):  # the log folder is the run's own or its name's folder
            group = run_dir.resolve().parent.name or group
        values = {FOLDER_AXIS: AxisValue(group, group)}
        seed = config.get("seed_everything")
        plain = True
    return values, seed if isinstance(seed, int) and not isinstance(seed, bool) else None, plain


def read_run(run_dir: Path, logdir: Path) -> RunRecord | None:
    """The run in ``run_dir``, or ``None`` when it has no ``config.yaml`` (not a padam-fit run).

    A damaged ``finished.json`` (truncated by a full disk or a partial copy, edited by hand) does
    not stop the run from being read: it counts as not finished and the record carries a note. A
    damaged ``run.json`` likewise: the run is grouped by its folder, with a note.

    Raises:
        UnreadableRunError: If ``config.yaml`` cannot be read.
    """
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = _read_config(config_path)
    notes = []
    finished, note = read_json_object(run_dir / FINISHED_FILE)
    if note is not None:
        notes.append(f"{note}; taken as not finished")
    identity, note = read_json_object(run_dir / RUN_FILE)
    if note is not None:
        notes.append(f"{note}; grouped by its folder name")
    name = run_dir.relative_to(logdir).as_posix() if run_dir != logdir else run_dir.resolve().name
    axes, seed, plain = _identity(identity, name, config, run_dir)
    return RunRecord(
        path=run_dir,
        name=name,
        config=config,
        finished=finished,
        axes=axes,
        seed=seed,
        curves=epoch_curves(read_scalars(run_dir)),
        notes=notes,
        plain=plain,
    )
