"""Grouping runs for a report: seeds pool into groups; the sweep's axes make figures, panels, lines.

Runs that agree on every axis label (see :class:`~.run_logs.RunRecord`: from ``run.json``, or one
label per run folder) form a *group*, drawn as its seed-mean curve with a ±1 std band. The layout
follows the axes the sweep file declares, in its order, keeping those with more than one value:

- an axis named ``data`` or ``dataset``: one figure per value;
- an axis named ``arch``: one panel (column) per network;
- the first other axis labels the lines (the optimizer, p, ...);
- any further axis adds panels (``lr`` in a ``p x lr`` grid gives a grid of panels).

``--panels`` / ``--lines`` on the command line name the axes instead.

A plain ``padam-fit`` run (no ``run.json``) has one axis, its run name; runs of one name that were
trained with different settings (another lr, p, ...) are told apart by those settings, added to
the name (:func:`label_plain_runs`), so they are drawn as lines of their own and their versions
pool as seeds only when nothing but the seed differs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import FOLDER_AXIS, AxisValue, Curve, RunRecord

VAL_ERR = "val/err"
#: ``--train-curve``: the tag of the training loss each definition reads.
TRAIN_CURVES = {
    # The running mean over the epoch's batches, as Lightning logs it (the reproduction study's).
    "running": "train/loss",
    # A second pass over the training split after each epoch (the released code's, the paper's).
    "pass": "train_pass/loss",
}
FIGURE_AXES = ("data", "dataset")
PANEL_AXES = ("arch",)
_MISSING = AxisValue("", "-", -1)
#: Config keys (and key prefixes) that are not what a run is: its seed, where and how it logs
#: and saves, and how it was resumed. A run that differs from another only in these is a repeat.
_NOT_SETTINGS = (
    "seed_everything",
    "ckpt_path",
    "weights_only",
    "checkpoint",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "data.download",
)
#: Short names of settings in labels (the last part of the key otherwise).
_SHORT_NAMES = {"partial": "p"}


@dataclass(frozen=True)
class Layout:
    """Which axes make figures, panels and lines, and which training curve is shown."""

    axes: tuple[str, ...]
    figures: tuple[str, ...]
    panels: tuple[str, ...]
    lines: tuple[str, ...]
    train_loss: str = TRAIN_CURVES["running"]


@dataclass
class RunGroup:
    """Runs that differ only in their seed, with their seed-mean and standard-deviation curves."""

    axes: dict[str, AxisValue]
    runs: list[RunRecord]
    figure_key: tuple[str, ...]
    panel_key: tuple[str, ...]
    label: str
    panel_title: str
    figure_title: str
    mean_curves: dict[str, Curve] = field(default_factory=dict)
    std_curves: dict[str, Curve] = field(default_factory=dict)

    def epoch_to_reach(self, target: float) -> int | None:
        """First epoch at which the seed-mean test error is at most ``target``."""
        curve = self.mean_curves.get(VAL_ERR)
        if curve is None:
            return None
        for epoch, value in zip(curve.epochs, curve.values, strict=True):
            if value <= target:
                return epoch
        return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 0.1}}`` -> ``{"model.lr": 0.1}``; lists by index."""
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat or {prefix: value}


def _is_setting(key: str) -> bool:
    return not any(key == skip or key.startswith(skip + ".") for skip in _NOT_SETTINGS)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``model.optimizer.init_args.lr`` -> ``lr``; longer where two keys would share a name."""
    parts = {k: [p for p in k.split(".") if p != "init_args" and not p.isdigit()] for k in keys}
    names = {key: _SHORT_NAMES.get(p[-1], p[-1]) if p else key for key, p in parts.items()}
    for key, name in names.items():
        if list(names.values()).count(name) > 1:
            names[key] = ".".join(parts[key][-2:])
    return names


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def label_plain_runs(records: Sequence[RunRecord]) -> None:
    """Add to each plain run's name the settings in which runs of that name differ.

    Two ``padam-fit`` runs under one name (``version_0``, ``version_1``) trained with another
    ``lr`` become ``<name> lr=0.1`` and ``<name> lr=0.05``; versions that differ only in their
    seed (or in where they logged, see :data:`_NOT_SETTINGS`) keep the name and pool as seeds.
    """
    by_name: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.plain and FOLDER_AXIS in record.axes:
            by_name.setdefault(record.axes[FOLDER_AXIS].label, []).append(record)
    for name, runs in by_name.items():
        flat = [_flatten(run.config) for run in runs]
        keys = [k for k in dict.fromkeys(k for f in flat for k in f) if _is_setting(k)]
        differing = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
        short = _short_names(differing)
        for run, settings in zip(runs, flat, strict=True):
            shown = " ".join(f"{short[k]}={_shown(settings.get(k))}" for k in differing)
            label = f"{name} {shown}" if shown else name
            run.axes[FOLDER_AXIS] = AxisValue(label, label, run.axes[FOLDER_AXIS].index)


def choose_layout(
    records: Sequence[RunRecord],
    *,
    panels: Sequence[str] | None = None,
    lines: Sequence[str] | None = None,
    train_loss: str = TRAIN_CURVES["running"],
) -> Layout:
    """Figures, panels and lines from the runs' axes (see the module docstring).

    Raises:
        UserError: If ``panels`` or ``lines`` names an axis that no run has.
    """
    axes = list(dict.fromkeys(axis for record in records for axis in record.axes))
    varying = [
        axis for axis in axes if len({r.axes.get(axis, _MISSING).label for r in records}) > 1
    ]
    for option, requested in (("--panels", panels), ("--lines", lines)):
        unknown = [axis for axis in requested or () if axis not in axes]
        if unknown:
            raise UserError(
                f"{option} {','.join(unknown)}: not an axis of these runs; their axes: "
                f"{', '.join(axes)}."
            )
    figures = [axis for axis in varying if axis in FIGURE_AXES]
    rest = [axis for axis in varying if axis not in figures]
    if lines is None:
        others = [axis for axis in rest if axis not in (panels or PANEL_AXES)]
        lines = others[:1]
    if panels is None:
        panels = [axis for axis in rest if axis not in lines]
    return Layout(tuple(axes), tuple(figures), tuple(panels), tuple(lines), train_loss)


def _title(axes: Sequence[str], values: dict[str, AxisValue]) -> str:
    return ", ".join(values.get(axis, _MISSING).title for axis in axes)


def _mean_curves(runs: Sequence[RunRecord]) -> tuple[dict[str, Curve], dict[str, Curve]]:
    """Per-epoch mean and std over the runs, on the epochs every run has logged."""
    means, stds = {}, {}
    tags = set.intersection(*(set(r.curves) for r in runs)) if runs else set()
    for tag in sorted(tags):
        curves = [dict(zip(c.epochs, c.values, strict=True)) for c in (r.curves[tag] for r in runs)]
        epochs = tuple(sorted(set.intersection(*(set(c) for c in curves))))
        if not epochs:
            continue
        values = [[c[e] for c in curves] for e in epochs]
        means[tag] = Curve(epochs, tuple(statistics.fmean(v) for v in values))
        stds[tag] = Curve(epochs, tuple(statistics.stdev(v) if len(v) > 1 else 0.0 for v in values))
    return means, stds


def group_runs(records: Sequence[RunRecord], layout: Layout) -> list[RunGroup]:
    """Runs grouped by every axis label (so seeds pool), in the sweep file's order."""
    grouped: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        key = tuple(record.axes.get(axis, _MISSING).label for axis in layout.axes)
        grouped.setdefault(key, []).append(record)
    groups = []
    for runs in grouped.values():
        axes = runs[0].axes
        means, stds = _mean_curves(runs)
        groups.append(
            RunGroup(
                axes=axes,
                runs=sorted(runs, key=lambda r: (r.seed or 0, r.name)),
                figure_key=tuple(axes.get(a, _MISSING).label for a in layout.figures),
                panel_key=tuple(axes.get(a, _MISSING).label for a in layout.panels),
                label=_title(layout.lines or layout.axes, axes),
                panel_title=_title(layout.panels, axes),
                figure_title=_title(layout.figures, axes),
                mean_curves=means,
                std_curves=stds,
            )
        )

    def order(group: RunGroup) -> tuple[Any, ...]:
        axes = (*layout.figures, *layout.panels, *layout.lines, *layout.axes)
        return tuple(
            (group.axes.get(a, _MISSING).index, group.axes.get(a, _MISSING).label) for a in axes
        )

    return sorted(groups, key=order)
