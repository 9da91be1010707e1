"""Grouping runs: runs that agree on every axis label pool their seeds into a group.

The sweep's axes, in its order, lay groups out: ``data`` one figure per value, ``arch`` one
panel per network, the first other axis the lines, any further axis more panels.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import FOLDER_AXIS, AxisValue, Curve, RunRecord

VAL_ERR = "val/err"
#: ``--train-curve``: the running mean over each epoch's batches (the reproduction study's), or
#: the released code's second pass over the training split after each epoch (the paper's).
TRAIN_CURVES = {"running": "train/loss", "pass": "train_pass/loss"}
FIGURE_AXES = ("data", "dataset")
PANEL_AXES = ("arch",)
_MISSING = AxisValue("", "-", -1)
#: Config keys (and prefixes) that are not what a run is: seed, logging, saving, resuming.
_TRAINER = ("logger", "default_root_dir", "enable_progress_bar", "enable_model_summary")
_NOT_SETTINGS = ("seed_everything", "ckpt_path", "weights_only", "checkpoint", "data.download")
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
    """Runs that differ only in their seed, with their seed-mean and std curves."""

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
        pairs = zip(curve.epochs, curve.values, strict=True) if curve else iter(())
        return next((epoch for epoch, value in pairs if value <= target), None)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 0.1}}`` -> ``{"model.lr": 0.1}``; lists by index."""
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        flat: dict[str, Any] = {}
        for key, item in items:
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: value}
    return {prefix: value}


def differing_settings(configs: Sequence[Any]) -> dict[str, list[Any]]:
    """The settings (dotted keys) in which ``configs`` differ, with each one's value."""
    flat = [_flatten(config) for config in configs]
    skip = tuple(f"{s}." for s in (*_NOT_SETTINGS, *(f"trainer.{key}" for key in _TRAINER)))
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if not f"{k}.".startswith(skip)]
    values = {key: [f.get(key) for f in flat] for key in keys}
    return {key: v for key, v in values.items() if len({repr(x) for x in v}) > 1}


def short_names(keys: Sequence[str]) -> dict[str, str]:
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

    Versions that differ only in their seed (or where they logged) keep the name: they pool.
    """
    by_name: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.plain and FOLDER_AXIS in record.axes:
            by_name.setdefault(record.axes[FOLDER_AXIS].label, []).append(record)
    for name, runs in by_name.items():
        differing = differing_settings([run.config for run in runs])
        short = short_names(list(differing))
        for i, run in enumerate(runs):
            label = " ".join([name, *(f"{short[k]}={_shown(v[i])}" for k, v in differing.items())])
            run.axes[FOLDER_AXIS] = AxisValue(label, label, run.axes[FOLDER_AXIS].index)


def choose_layout(
    records: Sequence[RunRecord],
    *,
    panels: Sequence[str] | None = None,
    lines: Sequence[str] | None = None,
    train_loss: str = TRAIN_CURVES["running"],
) -> Layout:
    """Figures, panels and lines from the runs' axes; UserError for an axis no run has."""
    axes = list(dict.fromkeys(axis for record in records for axis in record.axes))
    varying = [a for a in axes if len({r.axes.get(a, _MISSING).label for r in records}) > 1]
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
        lines = [axis for axis in rest if axis not in (panels or PANEL_AXES)][:1]
    if panels is None:
        panels = [axis for axis in rest if axis not in lines]
    return Layout(tuple(axes), tuple(figures), tuple(panels), tuple(lines), train_loss)


def _mean_curves(runs: Sequence[RunRecord]) -> tuple[dict[str, Curve], dict[str, Curve]]:
    """Per-epoch mean and std over the runs, on the epochs every run has logged."""
    means, stds = {}, {}
    for tag in sorted(set.intersection(*(set(r.curves) for r in runs))):
        curves = [dict(zip(r.curves[tag].epochs, r.curves[tag].values, strict=True)) for r in runs]
        epochs = tuple(sorted(set.intersection(*(set(c) for c in curves))))
        values = [[c[e] for c in curves] for e in epochs]
        if epochs:
            means[tag] = Curve(epochs, tuple(statistics.fmean(v) for v in values))
            stds[tag] = Curve(epochs, tuple(_std(v) for v in values))
    return means, stds


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def group_runs(records: Sequence[RunRecord], layout: Layout) -> list[RunGroup]:
    """Runs grouped by every axis label (so seeds pool), in the sweep file's order."""
    grouped: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in records:
        key = tuple(record.axes.get(axis, _MISSING).label for axis in layout.axes)
        grouped.setdefault(key, []).append(record)
    groups = []
    for runs in grouped.values():
        figure, panel, line = (
            [runs[0].axes.get(a, _MISSING) for a in axes]
            for axes in (layout.figures, layout.panels, layout.lines or layout.axes)
        )
        groups.append(
            RunGroup(
                axes=runs[0].axes,
                runs=sorted(runs, key=lambda r: (r.seed or 0, r.name)),
                figure_key=tuple(v.label for v in figure),
                panel_key=tuple(v.label for v in panel),
                label=", ".join(v.title for v in line),
                panel_title=", ".join(v.title for v in panel),
                figure_title=", ".join(v.title for v in figure),
            )
        )
        groups[-1].mean_curves, groups[-1].std_curves = _mean_curves(runs)
    order = (*layout.figures, *layout.panels, *layout.lines, *layout.axes)

    def place(group: RunGroup) -> list[tuple[int, str]]:
        return [(v.index, v.label) for v in (group.axes.get(a, _MISSING) for a in order)]

    return sorted(groups, key=place)
