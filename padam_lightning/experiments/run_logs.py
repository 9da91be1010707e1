"""Reading finished (or running) ``padam-fit`` runs back: config, epoch curves, completion.

A run folder is any folder with TensorBoard event files directly in it (``save_dir/name/version``
of the TensorBoardLogger). Scalars are read with TensorBoard's own ``EventAccumulator``; a run
that crashed and resumed in the same folder has several event files and may have written some
steps twice, so for each tag and step the latest write (by wall time) wins. Epoch-level scalars
are mapped from their global step to the epoch with the ``epoch`` scalar Lightning logs at the
same steps, and numbered as epochs *completed*: the value logged at the end of epoch index ``e``
belongs to epoch ``e + 1``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.run_layout import CONFIG_FILE, FINISHED_FILE

EVENT_FILE_PREFIX = "events.out.tfevents."
EPOCH_TAG = "epoch"


@dataclass(frozen=True)
class Curve:
    """One scalar per epoch: ``values[i]`` was logged at the end of epoch ``epochs[i]``."""

    epochs: tuple[int, ...]
    values: tuple[float, ...]

    def last(self) -> float:
        """The value at the last logged epoch."""
        return self.values[-1]

    def as_pairs(self) -> list[list[float]]:
        """``[[epoch, value], ...]`` for JSON."""
        return [[e, v] for e, v in zip(self.epochs, self.values, strict=True)]


class UnreadableRunError(Exception):
    """A run folder whose ``config.yaml`` cannot be read; the message says why, in one line."""


@dataclass
class RunRecord:
    """What a run folder says about the run.

    Attributes:
        notes: Files of the folder that could not be read and were passed over, one line each.
    """

    path: Path
    name: str
    config: dict[str, Any]
    finished: dict[str, Any] | None
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int | None:
        """The run's ``seed_everything``."""
        seed = self.config.get("seed_everything")
        return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def epochs_completed(self) -> int:
        """The last epoch with a logged test error (0 when none)."""
        curve = self.curves.get("val/err")
        return curve.epochs[-1] if curve and curve.epochs else 0


def find_run_dirs(logdir: Path) -> list[Path]:
    """Folders under ``logdir`` (itself included) holding event files, skipping hidden folders."""
    found = []
    for root, dirs, files in os.walk(logdir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
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
    """Per-epoch curves of the epoch-level tags (at most one logged step per epoch).

    Lightning logs ``epoch`` with every logging call, per-step ones too; a tag with several steps
    in one epoch is a per-step scalar and is left out.
    """
    epoch_at_step = {step: round(value) + 1 for step, value in scalars.get(EPOCH_TAG, {}).items()}
    curves = {}
    for tag, by_step in scalars.items():
        if tag == EPOCH_TAG or not by_step:
            continue
        epochs = [epoch_at_step.get(step) for step in by_step]
        if any(e is None for e in epochs) or len(set(epochs)) != len(epochs):
            continue
        by_epoch = dict(zip(epochs, by_step.values(), strict=True))
        ordered = tuple(sorted(e for e in by_epoch if e is not None))
        curves[tag] = Curve(ordered, tuple(by_epoch[e] for e in ordered))
    return curves


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


def _read_finished(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's ``finished.json`` (``None`` when absent or unreadable) and a note when unreadable."""
    if not path.is_file():
        return None, None
    try:
        finished = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: invalid JSON or UTF-8
        return None, f"{path.name} is unreadable ({_one_line(err)}); taken as not finished"
    if not isinstance(finished, dict):
        return None, f"{path.name} is not a JSON object; taken as not finished"
    return finished, None


def _one_line(err: Exception) -> str:
    """An error's message in one line (YAML's span several: keep the problem and where it is)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def read_run(run_dir: Path, logdir: Path) -> RunRecord | None:
    """The run in ``run_dir``, or ``None`` when it has no ``config.yaml`` (not a padam-fit run).

    A damaged ``finished.json`` (truncated by a full disk or a partial copy, edited by hand) does
    not stop the run from being read: it counts as not finished and the record carries a note.

    Raises:
        UnreadableRunError: If ``config.yaml`` cannot be read; the run cannot be grouped without
            it.
    """
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = _read_config(config_path)
    finished, note = _read_finished(run_dir / FINISHED_FILE)
    name = run_dir.relative_to(logdir).as_posix() if run_dir != logdir else run_dir.name
    return RunRecord(
        path=run_dir,
        name=name,
        config=config,
        finished=finished,
        curves=epoch_curves(read_scalars(run_dir)),
        notes=[note] if note is not None else [],
    )
