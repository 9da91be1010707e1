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


@dataclass
class RunRecord:
    """What a run folder says about the run."""

    path: Path
    name: str
    config: dict[str, Any]
    finished: dict[str, Any] | None
    curves: dict[str, Curve] = field(default_factory=dict)

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


def read_run(run_dir: Path, logdir: Path) -> RunRecord | None:
    """The run in ``run_dir``, or ``None`` when it has no ``config.yaml`` (not a padam-fit run)."""
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        return None
    config = yaml.safe_load(config_path.read_text()) or {}
    finished_path = run_dir / FINISHED_FILE
    finished = json.loads(finished_path.read_text()) if finished_path.is_file() else None
    name = run_dir.relative_to(logdir).as_posix() if run_dir != logdir else run_dir.name
    return RunRecord(
        path=run_dir,
        name=name,
        config=config,
        finished=finished,
        curves=epoch_curves(read_scalars(run_dir)),
    )
