"""What benchmarks/chaos.py compares: a run folder's final checkpoint and its TensorBoard points.

A stopped and resumed run must equal the uninterrupted one bit for bit: every entry of
:data:`COMPARED` in the final ``last.ckpt`` (tensors with ``torch.equal``; :func:`first_difference`
names the first key that differs), and every scalar tag's (step, value) points as TensorBoard reads
them (:func:`read_curves`; :func:`compare_curves` lists the points lost, extra, changed and
duplicated).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FINISHED_FILE, LAST_CHECKPOINT = "finished.json", "last.ckpt"
#: Checkpoint entries compared, and their names in the output.
COMPARED = {"state_dict": "weights", "optimizer_states": "optimizer", "lr_schedulers": "scheduler"}


Curves = dict[str, list[tuple[int, float]]]


@dataclass
class RunResult:
    """What a run folder holds: its final checkpoint, curves and ``finished.json``."""

    folder: Path
    checkpoint: dict[str, Any] | None
    curves: Curves
    finished: dict[str, Any] | None


def run_folders(save_dir: Path) -> list[Path]:
    """The run folders under ``save_dir``, oldest version first."""
    folders = [p for p in save_dir.glob("*/version_*") if p.is_dir()]
    return sorted(folders, key=lambda p: (p.parent.name, int(p.name.rsplit("_", 1)[-1] or 0)))


def finished_folder(save_dir: Path) -> Path | None:
    """The newest run folder with ``finished.json`` (None: none finished)."""
    done = [p for p in run_folders(save_dir) if (p / FINISHED_FILE).is_file()]
    return done[-1] if done else None


def has_checkpoint(save_dir: Path) -> bool:
    """Whether a run folder under ``save_dir`` holds a ``last.ckpt`` to resume."""
    return any((p / "checkpoints" / LAST_CHECKPOINT).is_file() for p in run_folders(save_dir))


def read_curves(folder: Path) -> Curves:
    """Every scalar tag's (step, value) points, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    # The accumulator warns about each purge on the "tensorboard" logger; the points tell it all.
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(logging.ERROR)
    try:
        accumulator = EventAccumulator(
            str(folder), size_guidance={SCALARS: 0}, purge_orphaned_data=True
        )
        accumulator.Reload()
        return {
            tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()[SCALARS]
        }
    finally:
        tb_logger.setLevel(level)


def read_run(folder: Path) -> RunResult:
    """Read a run folder (its ``last.ckpt`` may be missing)."""
    last = folder / "checkpoints" / LAST_CHECKPOINT
    checkpoint = (
        torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    )
    finished_path = folder / FINISHED_FILE
    finished = json.loads(finished_path.read_text()) if finished_path.is_file() else None
    return RunResult(folder, checkpoint, read_curves(folder), finished)


def first_difference(ours: Any, theirs: Any, path: str = "") -> str | None:
    """The first key path where two checkpoint entries differ (None: bit-identical)."""
    if isinstance(ours, torch.Tensor) or isinstance(theirs, torch.Tensor):
        if not (isinstance(ours, torch.Tensor) and isinstance(theirs, torch.Tensor)):
            return f"{path} (a tensor in one only)"
        if ours.dtype != theirs.dtype or ours.shape != theirs.shape:
            return f"{path} ({ours.dtype}{list(ours.shape)} vs {theirs.dtype}{list(theirs.shape)})"
        return None if torch.equal(ours, theirs) else path
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        if set(ours) != set(theirs):
            only = sorted(map(str, set(ours) ^ set(theirs)))
            return f"{path} (keys in one only: {', '.join(only[:3])})"
        for key in ours:
            found = first_difference(ours[key], theirs[key], f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(ours, list | tuple) and isinstance(theirs, list | tuple):
        if len(ours) != len(theirs):
            return f"{path} (length {len(ours)} vs {len(theirs)})"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(ours, float) and isinstance(theirs, float) and math.isnan(ours):
        return None if math.isnan(theirs) else f"{path} ({ours!r} vs {theirs!r})"
    return None if ours == theirs else f"{path} ({ours!r} vs {theirs!r})"


@dataclass
class CurveDiff:
    """How a run's curves differ from the reference's, as ``(tag, step)`` lists."""

    lost: list[tuple[str, int]] = field(default_factory=list)
    extra: list[tuple[str, int]] = field(default_factory=list)
    changed: list[tuple[str, int]] = field(default_factory=list)
    duplicated: list[tuple[str, int]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # tags whose points are out of step order

    @property
    def ok(self) -> bool:
        """Whether the curves are the reference's, point for point."""
        return not (self.lost or self.extra or self.changed or self.duplicated or self.order)

    def summary(self) -> str:
        """A few words for the trial's line."""
        if self.ok:
            return "ok"
        parts = [
            f"{label} {len(items)}"
            for label, items in (
                ("lost", self.lost),
                ("extra", self.extra),
                ("changed", self.changed),
                ("dup", self.duplicated),
                ("order", self.order),
            )
            if items
        ]
        return ",".join(parts)

    def details(self, limit: int = 4) -> list[str]:
        """Lines naming the first points of each kind of difference."""
        lines = []
        for label, items in (
            ("lost", self.lost),
            ("extra", self.extra),
            ("changed", self.changed),
            ("duplicated", self.duplicated),
        ):
            if items:
                by_tag: dict[str, list[int]] = defaultdict(list)
                for tag, step in items:
                    by_tag[tag].append(step)
                shown = "; ".join(
                    f"{tag} @ {', '.join(map(str, steps))}"
                    for tag, steps in list(by_tag.items())[:limit]
                )
                more = f"; +{len(by_tag) - limit} more tags" if len(by_tag) > limit else ""
                lines.append(f"curves {label}: {shown}{more}")
        if self.order:
            lines.append(f"curves out of step order: {', '.join(self.order)}")
        return lines


def duplicated_steps(curves: Curves) -> list[tuple[str, int]]:
    """``(tag, step)`` of every step that holds more than one point of its tag."""
    return [
        (tag, step)
        for tag, points in curves.items()
        for step, count in sorted(Counter(s for s, _ in points).items())
        if count > 1
    ]


def compare_curves(ours: Curves, reference: Curves) -> CurveDiff:
    """Compare two runs' curves tag by tag, step by step.

    ``duplicated`` lists the steps with several points in ``ours`` but not in the reference (the
    reference's own duplicates are a fault of the logging, reported once, not of resuming).
    """
    in_reference = set(duplicated_steps(reference))
    diff = CurveDiff(duplicated=[d for d in duplicated_steps(ours) if d not in in_reference])
    for tag in sorted(set(ours) | set(reference)):
        mine: dict[int, list[float]] = defaultdict(list)
        theirs: dict[int, list[float]] = defaultdict(list)
        for step, value in ours.get(tag, []):
            mine[step].append(value)
        for step, value in reference.get(tag, []):
            theirs[step].append(value)
        for step in sorted(set(mine) | set(theirs)):
            a, b = mine.get(step, []), theirs.get(step, [])
            if len(a) < len(b):
                diff.lost.append((tag, step))
            elif len(a) > len(b):
                diff.extra.append((tag, step))
            elif a != b:
                diff.changed.append((tag, step))
        steps = [s for s, _ in ours.get(tag, [])]
        if steps != sorted(steps):
            diff.order.append(tag)
    return diff
