"""Reading ``padam-fit`` runs back: what each run is, its config, epoch curves and completion.

A run folder is any folder with TensorBoard event files directly in it (``save_dir/name/version``
of the TensorBoardLogger). Scalars are read with TensorBoard's own ``EventAccumulator``; a run
that crashed and resumed in the same folder has several event files and may have written some
steps twice, so for each tag and step the latest write (by wall time) wins.

Epoch-level scalars are numbered as epochs *completed*: the value logged at the end of epoch index
``e`` belongs to epoch ``e + 1``. Two layouts of the event files are read:

- older runs log each epoch's scalars at the global step of the epoch's last batch, with an
  ``epoch`` scalar (the epoch index) at the same steps: the epoch is read from it;
- newer runs log epoch-level scalars with the epoch index itself as the step.

A run is read the first way when the steps of its ``train/loss`` each carry a distinct ``epoch``
value (then each tag whose steps do is read that way too), otherwise the second way. Per-step
tags (named ``*_step``, e.g. ``train/loss_step``) are not epoch curves and are left out.

What a run is comes from its ``run.json`` (written by ``padam-sweep``: axis labels and titles,
seed). A plain ``padam-fit`` run has none; it is then one group per run folder, named by the
folder's path under the report's log folder with a trailing ``/version_N`` or ``-seedN`` taken
off (so ``cifar10-wrn16_4-padam/version_0`` and ``.../version_1`` pool as two seeds of
``cifar10-wrn16_4-padam``), and its seed is the config's ``seed_everything``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.cli.run_layout import CONFIG_FILE, EVAL_FOLDER, FINISHED_FILE
from padam_lightning.errors import UserError

EVENT_FILE_PREFIX = "events.out.tfevents."
EPOCH_TAG = "epoch"
#: The running training loss, logged at the end of every epoch in both layouts.
TRAIN_LOSS_TAG = "train/loss"
#: The file in each run folder that says what the run is (written by padam-sweep).
RUN_FILE = "run.json"
#: The axis of runs without a ``run.json``: one label per run folder (seeds stripped).
FOLDER_AXIS = "run"
_SEED_SUFFIX = re.compile(r"(/version_\d+|-seed\d+)$")


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
    """

    path: Path
    name: str
    config: dict[str, Any]
    finished: dict[str, Any] | None
    axes: dict[str, AxisValue]
    seed: int | None
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def epochs_completed(self) -> int:
        """The last epoch with a logged test error (0 when none)."""
        curve = self.curves.get("val/err")
        return curve.epochs[-1] if curve and curve.epochs else 0

    @property
    def max_epochs(self) -> int | None:
        """The configured number of epochs (``trainer.max_epochs``; ``None`` when not set)."""
        value = self.setting("trainer.max_epochs")
        return value if isinstance(value, int) else None

    def setting(self, dotted: str) -> Any:
        """A value of the run's ``config.yaml`` by dotted key (``None`` when absent)."""
        value: Any = self.config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


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
    """Every scalar tag of a run folder as ``{tag: {step: value}}``, latest write per step."""
    # Imported here: TensorBoard's reader pulls in a lot, and only the report needs it.
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    accumulator = EventAccumulator(
        str(run_dir), size_guidance={SCALARS: 0}, purge_orphaned_data=False
    )
    accumulator.Reload()
    scalars: dict[str, dict[int, float]] = {}
    for tag in accumulator.Tags()[SCALARS]:
        latest: dict[int, tuple[float, float]] = {}
        for event in accumulator.Scalars(tag):
            previous = latest.get(event.step)
            if previous is None or event.wall_time >= previous[0]:
                latest[event.step] = (event.wall_time, float(event.value))
        scalars[tag] = {step: value for step, (_, value) in sorted(latest.items())}
    return scalars


def epoch_curves(scalars: dict[str, dict[int, float]]) -> dict[str, Curve]:
    """Per-epoch curves of the epoch-level tags (see the module docstring for the two layouts)."""
    epoch_at_step = {step: round(value) for step, value in scalars.get(EPOCH_TAG, {}).items()}

    def through_epoch(by_step: dict[int, float]) -> bool:
        indices = [epoch_at_step.get(step) for step in by_step]
        return None not in indices and len(set(indices)) == len(indices)

    tags = [t for t, by_step in scalars.items() if by_step and _is_epoch_level(t)]
    # The layout is the run's, read from its training loss (logged every epoch): a tag logged only
    # some epochs (validation every n epochs) at steps = epoch indices can find distinct `epoch`
    # values at those small global steps by chance.
    reference = TRAIN_LOSS_TAG if TRAIN_LOSS_TAG in tags else None
    older = through_epoch(scalars[reference]) if reference else True
    curves = {}
    for tag in tags:
        by_step = scalars[tag]
        if older and through_epoch(by_step):
            indices = [epoch_at_step[step] for step in by_step]
        else:
            indices = list(by_step)  # the step is the epoch index
        by_epoch = dict(zip((i + 1 for i in indices), by_step.values(), strict=True))
        ordered = tuple(sorted(by_epoch))
        curves[tag] = Curve(ordered, tuple(by_epoch[e] for e in ordered))
    return curves


def _is_epoch_level(tag: str) -> bool:
    return tag != EPOCH_TAG and not tag.endswith("_step")


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
    identity: dict[str, Any] | None, name: str, config: dict[str, Any]
) -> tuple[dict[str, AxisValue], int | None]:
    """The run's axes and seed from its ``run.json``, or by the folder rule without one."""
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
    else:
        group = _SEED_SUFFIX.sub("", name)
        values = {FOLDER_AXIS: AxisValue(group, group)}
        seed = config.get("seed_everything")
    return values, seed if isinstance(seed, int) and not isinstance(seed, bool) else None


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
    name = run_dir.relative_to(logdir).as_posix() if run_dir != logdir else run_dir.name
    axes, seed = _identity(identity, name, config)
    return RunRecord(
        path=run_dir,
        name=name,
        config=config,
        finished=finished,
        axes=axes,
        seed=seed,
        curves=epoch_curves(read_scalars(run_dir)),
        notes=notes,
    )
