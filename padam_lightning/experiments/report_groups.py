"""Grouping runs for a report: which fields vary, which become figures, panels and lines.

Runs that differ only in their seed form one *group* (statistics are mean ± std over it). The
layout is inferred from the fields that vary (see :mod:`run_fields`), so one report serves every
sweep:

- ``dataset`` varies: one figure per dataset.
- ``arch`` varies: one panel (column) per network.
- The remaining fields label the lines: ``optimizer``, then ``p``, ``lr`` and any other varying
  config value. When the optimizer varies, fields fixed per optimizer (its lr, betas, Padam's p
  when there is one) are left out of the labels: each optimizer comes with its own tuned settings.
- A further field that forms a full cross product with the line fields (``lr`` in a ``p x lr``
  grid) becomes a panel axis instead, giving a grid of panels.

``--panels`` / ``--lines`` on the command line override the inference.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from padam_lightning.errors import UserError
from padam_lightning.experiments.run_fields import (
    SEMANTIC_FIELDS,
    FieldValue,
    format_value,
    run_fields,
    short_names,
    sort_key,
)
from padam_lightning.experiments.run_logs import Curve, RunRecord

_MISSING = "<missing>"
VAL_ERR = "val/err"
TRAIN_LOSS = "train/loss"


@dataclass(frozen=True)
class Layout:
    """How fields map onto the report."""

    varying: tuple[str, ...]
    figures: tuple[str, ...]
    panels: tuple[str, ...]
    lines: tuple[str, ...]
    names: dict[str, str]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (0 for one value) of one number over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        """The statistic of ``values`` (``None`` when empty)."""
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class RunSummary:
    """The numbers of one run."""

    record: RunRecord
    fields: dict[str, FieldValue]
    final_err: float | None
    best_err: float | None
    best_epoch: int | None
    final_train_loss: float | None
    epochs: int
    max_epochs: int | None


@dataclass
class RunGroup:
    """Runs that differ only in their seed, with their statistics and mean curves."""

    fields: dict[str, FieldValue]
    runs: list[RunSummary]
    figure_key: tuple[FieldValue, ...]
    panel_key: tuple[FieldValue, ...]
    line_key: tuple[FieldValue, ...]
    label: str
    panel_title: str
    figure_title: str
    mean_curves: dict[str, Curve] = field(default_factory=dict)
    std_curves: dict[str, Curve] = field(default_factory=dict)

    @property
    def final_err(self) -> Stat | None:
        """Test error at each run's last epoch, over seeds."""
        return Stat.of([r.final_err for r in self.runs if r.final_err is not None])

    @property
    def best_err(self) -> Stat | None:
        """Each run's lowest test error, over seeds."""
        return Stat.of([r.best_err for r in self.runs if r.best_err is not None])

    @property
    def final_train_loss(self) -> Stat | None:
        """Training loss at each run's last epoch, over seeds."""
        return Stat.of([r.final_train_loss for r in self.runs if r.final_train_loss is not None])

    @property
    def epochs(self) -> int:
        """Epochs every run of the group has completed."""
        return min(r.epochs for r in self.runs)

    @property
    def max_epochs(self) -> int | None:
        """The configured number of epochs (the largest in the group)."""
        configured = [r.max_epochs for r in self.runs if r.max_epochs is not None]
        return max(configured) if configured else None

    def epoch_to_reach(self, target: float) -> int | None:
        """First epoch at which the seed-mean test error is at most ``target``."""
        curve = self.mean_curves.get(VAL_ERR)
        if curve is None:
            return None
        for epoch, value in zip(curve.epochs, curve.values, strict=True):
            if value <= target:
                return epoch
        return None


def summarize_run(record: RunRecord) -> RunSummary:
    """Final and best test error, final training loss and progress of one run."""
    err = record.curves.get(VAL_ERR)
    loss = record.curves.get(TRAIN_LOSS)
    best_err = best_epoch = None
    if err is not None:
        best_index = min(range(len(err.values)), key=lambda i: (err.values[i], err.epochs[i]))
        best_err, best_epoch = err.values[best_index], err.epochs[best_index]
    trainer = record.config.get("trainer") or {}
    max_epochs = trainer.get("max_epochs") if isinstance(trainer, dict) else None
    return RunSummary(
        record=record,
        fields=run_fields(record.config),
        final_err=err.last() if err is not None else None,
        best_err=best_err,
        best_epoch=best_epoch,
        final_train_loss=loss.last() if loss is not None else None,
        epochs=record.epochs_completed,
        max_epochs=max_epochs if isinstance(max_epochs, int) else None,
    )


def _value(row: dict[str, FieldValue], key: str) -> FieldValue:
    return row.get(key, _MISSING)


def varying_fields(rows: Sequence[dict[str, FieldValue]]) -> list[str]:
    """Fields whose value differs between runs: semantic ones first, then config keys."""
    keys = {key for row in rows for key in row}
    varying = [k for k in keys if len({_value(row, k) for row in rows}) > 1]
    semantic = [k for k in SEMANTIC_FIELDS if k in varying]
    return semantic + sorted(k for k in varying if k not in SEMANTIC_FIELDS)


def is_determined(key: str, by: Sequence[str], rows: Sequence[dict[str, FieldValue]]) -> bool:
    """Whether runs that agree on the ``by`` fields always agree on ``key`` too."""
    seen: dict[tuple[FieldValue, ...], FieldValue] = {}
    for row in rows:
        group = tuple(_value(row, b) for b in by)
        value = _value(row, key)
        if seen.setdefault(group, value) != value:
            return False
    return True


def is_cross(key: str, by: Sequence[str], rows: Sequence[dict[str, FieldValue]]) -> bool:
    """Whether ``key`` and the ``by`` fields form a full grid (each with at least 2 values)."""
    pairs = {(tuple(_value(row, b) for b in by), _value(row, key)) for row in rows}
    groups = {group for group, _ in pairs}
    values = {value for _, value in pairs}
    return len(groups) > 1 and len(values) > 1 and len(pairs) == len(groups) * len(values)


def choose_layout(
    rows: Sequence[dict[str, FieldValue]],
    *,
    panels: Sequence[str] | None = None,
    lines: Sequence[str] | None = None,
) -> Layout:
    """Infer figures, panels and line labels from the varying fields (see the module docstring).

    Args:
        rows: The fields of every run.
        panels: Field names (as reports show them) to use as panels instead of the inferred ones.
        lines: Field names to label lines with instead of the inferred ones.

    Raises:
        UserError: If ``panels`` or ``lines`` names a field that does not vary.
    """
    varying = varying_fields(rows)
    names = short_names(varying)
    by_name = {name: key for key, name in names.items()}

    def resolve(requested: Sequence[str], option: str) -> list[str]:
        unknown = [name for name in requested if name not in by_name]
        if unknown:
            raise UserError(
                f"{option} {','.join(unknown)}: not a field that varies between the runs; "
                f"varying fields: {', '.join(names.values()) or '(none)'}."
            )
        return [by_name[name] for name in requested]

    figures = [k for k in varying if k == "dataset"]
    rest = [k for k in varying if k not in figures]
    panel_keys = resolve(panels, "--panels") if panels is not None else []
    if panels is None:
        panel_keys = [k for k in rest if k == "arch"]
    if lines is not None:
        line_keys = resolve(lines, "--lines")
    else:
        candidates = [k for k in rest if k not in panel_keys]
        if "optimizer" in candidates:
            candidates = ["optimizer"] + [
                k
                for k in candidates
                if k != "optimizer" and not is_determined(k, ["optimizer"], rows)
            ]
        line_keys = []
        for key in candidates:
            if line_keys and panels is None and is_cross(key, line_keys, rows):
                panel_keys.append(key)
            else:
                line_keys.append(key)
    return Layout(
        varying=tuple(varying),
        figures=tuple(figures),
        panels=tuple(panel_keys),
        lines=tuple(line_keys),
        names=names,
    )


def _label(keys: Sequence[str], values: Sequence[FieldValue], names: dict[str, str]) -> str:
    parts = []
    for key, value in zip(keys, values, strict=True):
        if value is None or value == _MISSING:
            continue
        text = format_value(key, value)
        if key in ("optimizer", "arch", "dataset"):
            parts.append(text)
        elif key == "p" and not isinstance(value, float):
            parts.append(f"p {text}")
        else:
            parts.append(f"{names.get(key, key)}={text}")
    return ", ".join(parts)


def _mean_curves(runs: Sequence[RunSummary]) -> tuple[dict[str, Curve], dict[str, Curve]]:
    """Per-epoch mean and std over the runs, on the epochs every run has logged."""
    means, stds = {}, {}
    tags = set.intersection(*(set(r.record.curves) for r in runs)) if runs else set()
    for tag in sorted(tags):
        curves = [
            dict(zip(c.epochs, c.values, strict=True)) for c in (r.record.curves[tag] for r in runs)
        ]
        epochs = tuple(sorted(set.intersection(*(set(c) for c in curves))))
        if not epochs:
            continue
        values = [[c[e] for c in curves] for e in epochs]
        means[tag] = Curve(epochs, tuple(statistics.fmean(v) for v in values))
        stds[tag] = Curve(epochs, tuple(statistics.stdev(v) if len(v) > 1 else 0.0 for v in values))
    return means, stds


def group_runs(summaries: Sequence[RunSummary], layout: Layout) -> list[RunGroup]:
    """Runs grouped by every varying field (so seeds pool), sorted for legends and tables."""
    grouped: dict[tuple[FieldValue, ...], list[RunSummary]] = {}
    for summary in summaries:
        key = tuple(_value(summary.fields, k) for k in layout.varying)
        grouped.setdefault(key, []).append(summary)
    groups = []
    for key, runs in grouped.items():
        values = dict(zip(layout.varying, key, strict=True))
        fields = {k: runs[0].fields.get(k) for k in layout.varying}
        figure_key = tuple(values[k] for k in layout.figures)
        panel_key = tuple(values[k] for k in layout.panels)
        line_key = tuple(values[k] for k in layout.lines)
        label = _label(layout.lines, line_key, layout.names) or str(
            format_value("optimizer", runs[0].fields.get("optimizer"))
        )
        means, stds = _mean_curves(runs)
        groups.append(
            RunGroup(
                fields=fields,
                runs=sorted(runs, key=lambda r: (r.record.seed or 0, r.record.name)),
                figure_key=figure_key,
                panel_key=panel_key,
                line_key=line_key,
                label=label,
                panel_title=_label(layout.panels, panel_key, layout.names),
                figure_title=_label(layout.figures, figure_key, layout.names),
                mean_curves=means,
                std_curves=stds,
            )
        )

    def order(group: RunGroup) -> tuple[Any, ...]:
        return tuple(
            sort_key(k, group.fields.get(k))
            for k in (*layout.figures, *layout.panels, *layout.lines, *layout.varying)
        )

    return sorted(groups, key=order)


def common_targets(groups: Sequence[RunGroup]) -> dict[tuple[Any, ...], float]:
    """Per figure and panel with several groups: the best seed-mean test error of the worst.

    Every group of the panel reaches it (its own curve's minimum is at most that), so the epoch
    at which each does is a fair speed comparison.
    """
    bests: dict[tuple[Any, ...], list[float]] = {}
    for group in groups:
        curve = group.mean_curves.get(VAL_ERR)
        if curve is not None and curve.values:
            bests.setdefault((group.figure_key, group.panel_key), []).append(min(curve.values))
    return {key: max(values) for key, values in bests.items() if len(values) > 1}
