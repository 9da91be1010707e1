"""The report's figures: loss and test error per epoch completed, p schedules, p x lr heat map."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.patheffects import withStroke
from matplotlib.ticker import FixedLocator, Formatter, LogLocator, MaxNLocator, NullFormatter

from padam_lightning.experiments.report_groups import VAL_ERR, Layout, RunGroup
from padam_lightning.experiments.report_tables import LR_KEY, P_KEY
from padam_lightning.experiments.run_logs import RunRecord
from padam_lightning.experiments.sweep_spec import default_title

PARTIAL, LR = "optim/partial", "optim/lr"
#: A row of panels: the tag, its axis label, log scale, and the factor values are shown times.
Row = tuple[str, str, bool, float]
SCHEDULE_ROWS: tuple[Row, ...] = (
    (PARTIAL, "p (partial exponent)", False, 1.0),
    (LR, "learning rate", True, 1.0),
)
#: Eight dash patterns and markers: the final version's eight optimizers each get their own.
LINE_STYLES = ("-", "--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)), (0, (1, 3)), (0, (8, 3)), (0, (3, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MAX_CELLS = 6  # an axis of the heat map with more distinct values has even bins, not a cell each


class _Plain(Formatter):
    """Plain tick labels (no powers of ten) with the digits that tell them apart (2.2875, 2.29)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.3g}"

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        for digits in range(3, 10):
            labels = [f"{v:.{digits}g}" for v in values]
            if len(set(labels)) == len(labels):
                break
        return labels


def _log_axis(axis: Axis, ticks: Sequence[float] | None = None) -> None:
    """Plain labels on a log axis: at ``ticks``, else round values within a decade, else 1-2-5."""
    low, high = axis.get_view_interval()
    if ticks is not None:
        axis.set_major_locator(FixedLocator(list(ticks)))
    elif high / low < 10:
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    else:
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(_Plain())
    axis.set_minor_formatter(NullFormatter())


def _style_axes(ax: Axes, log_scale: bool) -> None:
    lines = ax.get_lines()
    if log_scale and lines and all(np.min(np.asarray(line.get_ydata())) > 0 for line in lines):
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    low, high = ax.get_xlim()
    if lines and high - low < 2:  # one or two epochs: no ticks at fractions of an epoch
        epochs = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in lines])
        ax.set_xlim(math.floor(epochs.min()) - 0.5, math.ceil(epochs.max()) + 0.5)
    ax.set_xlabel("epochs completed")
    ax.grid(True, alpha=0.3)


def _plot_grid(
    groups: Sequence[RunGroup], rows: Sequence[Row], title: str, notes: dict[str, str]
) -> Figure:
    """One column per panel, one row per curve; ``notes`` adds text to lines' legend labels."""
    panels = {g.panel_key: g.panel_title for g in groups}
    labels = list(dict.fromkeys(g.label for g in groups))
    # Earlier lines are wider with larger markers, so a line drawn on one shows its edges.
    last = max(len(labels) - 1, 1)
    styles = {
        label: {
            "color": f"C{i % 10}",
            "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
            "marker": MARKERS[i % len(MARKERS)],
            "linewidth": 2.4 - 1.2 * i / last,
            "markersize": 8.0 - 4.0 * i / last,
        }
        for i, label in enumerate(labels)
    }
    size = (4.4 * len(panels), 3.3 * len(rows) + 0.4)
    fig, axes = plt.subplots(len(rows), len(panels), figsize=size, squeeze=False)
    for column, (panel, panel_title) in enumerate(panels.items()):
        for row, (tag, ylabel, log_scale, scale) in enumerate(rows):
            ax = axes[row][column]
            for group in (g for g in groups if g.panel_key == panel and tag in g.mean_curves):
                epochs, values = group.mean_curves[tag].epochs, group.mean_curves[tag].values
                mean, style = scale * np.asarray(values), styles[group.label]
                label, every = group.label + notes.get(group.label, ""), max(1, len(mean) // 12)
                ax.plot(epochs, mean, label=label, markerfacecolor="none", markevery=every, **style)
                if len(group.runs) > 1:
                    std = scale * np.asarray(group.std_curves[tag].values)
                    look = {"color": style["color"], "alpha": 0.15, "linewidth": 0}
                    ax.fill_between(epochs, mean - std, mean + std, **look)
            _style_axes(ax, log_scale)
            ax.set(ylabel=ylabel, title=panel_title if row == 0 else "")
            if ax.get_lines():
                ax.legend(fontsize="small")
    fig.suptitle(textwrap.fill(title, width=58 * len(panels)), fontsize="medium")
    fig.set_layout_engine("constrained")
    return fig


def _progress(records: Sequence[RunRecord]) -> tuple[int, int | None]:
    planned = [r.max_epochs for r in records if r.max_epochs is not None]
    return min(r.epochs_completed for r in records), max(planned, default=None)


def _epochs(done: int, planned: int | None) -> str:
    noun = "epoch" if (planned or done) == 1 else "epochs"
    return f"{done} {noun}" if planned in (None, done) else f"{done} of {planned} {noun}"


def stopped_short(groups: Sequence[RunGroup]) -> dict[str, str]:
    """Legend notes, ``Adam (1 of 10 epochs)``, for lines that stopped short of the others."""
    if len({_progress([r]) for g in groups for r in g.runs}) <= 1:
        return {}
    progress = {g.label: _progress(g.runs) for g in groups}
    return {k: f" ({_epochs(*p)})" for k, p in progress.items() if p[1] is not None and p[0] < p[1]}


def describe_runs(groups: Sequence[RunGroup]) -> str:
    """The title: networks, dataset, the optimizer if one, epochs (done of planned), seeds."""
    records = [record for group in groups for record in group.runs]
    data = [
        Path(str(r.setting("data.data_dir") or "images")).name  # the folder of an imagefolder
        if r.setting("data.dataset") == "imagefolder"
        else r.setting("data.dataset")
        for r in records
    ]
    parts = [
        ", ".join(dict.fromkeys(default_title(str(v)) for v in values if v is not None))
        for values in ([r.setting("model.arch") for r in records], data)
    ]
    optimizers = set(r.optimizer for r in records if r.optimizer)
    parts += list(optimizers) if len(optimizers) == 1 else []
    progress = {_progress([r]) for r in records}
    done = sorted({done for done, _ in progress})
    if len(progress) == 1:
        parts.append(_epochs(*progress.pop()))
    elif records:
        parts.append(_epochs(done[0], None) if len(done) == 1 else f"{done[0]}–{done[-1]} epochs")
    seeds = sorted({r.seed for r in records if r.seed is not None})
    if seeds:
        many = len(seeds) > 1
        parts.append(f"seed{'s' * many} {', '.join(map(str, seeds))}" + " (mean ± 1 std)" * many)
    return " · ".join(part for part in parts if part)


def _edges(logs: np.ndarray) -> np.ndarray:
    # Around each distinct value (a grid), else sqrt(runs) even bins (a search).
    distinct = np.unique(logs)
    if len(distinct) <= MAX_CELLS:
        mids = (distinct[1:] + distinct[:-1]) / 2
        return np.concatenate([[2 * distinct[0] - mids[0]], mids, [2 * distinct[-1] - mids[-1]]])
    margin = 0.05 * (distinct[-1] - distinct[0])  # no point on the plot's edge
    bins = min(MAX_CELLS, round(math.sqrt(len(logs))))
    return np.linspace(distinct[0] - margin, distinct[-1] + margin, bins + 1)


def heat_map_figure(search: dict[str, Any], title: str, train_loss: str) -> Figure:
    """Final test error and train loss over log lr x log p: cell means, every run a point."""
    points, best, names = search["points"], search["best"], search["names"]
    logs = np.log10([[p["values"][LR_KEY], p["values"][P_KEY]] for p in points])
    edges = [_edges(logs[:, 0]), _edges(logs[:, 1])]
    centres = [10 ** ((e[1:] + e[:-1]) / 2) for e in edges]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    panels = (("test_err", "final test error (%)", 100.0), ("train_loss", f"final {train_loss}", 1))
    for ax, (metric, label, scale) in zip(axes, panels, strict=True):
        done = [i for i, p in enumerate(points) if not p["pruned"] and p[metric] is not None]
        weights = [scale * points[i][metric] for i in done]
        x, y = logs[done, 0], logs[done, 1]
        sums = np.histogram2d(x, y, bins=edges, weights=weights)[0]
        with np.errstate(invalid="ignore"):  # 0 / 0: an empty cell
            means = (sums / np.histogram2d(x, y, bins=edges)[0]).T  # rows: p
        mesh = ax.pcolormesh(10 ** edges[0], 10 ** edges[1], np.ma.masked_invalid(means))
        fig.colorbar(mesh, ax=ax, label=label)
        text: dict[str, Any] = {
            "ha": "center",
            "color": "w",
            "fontsize": "small",
            "textcoords": "offset points",
        }
        text["path_effects"] = [withStroke(linewidth=2, foreground="k")]  # legible on any colour
        for (row, column), value in np.ndenumerate(means):
            if not np.isnan(value):  # below the cell's centre, where a grid's point is
                ax.annotate(f"{value:.3g}", (centres[0][column], centres[1][row]), (0, -14), **text)
        for pruned, look in ((False, {"marker": "o", "edgecolors": "w"}), (True, {"marker": "x"})):
            xy = [10 ** logs[i] for i, p in enumerate(points) if p["pruned"] == pruned]
            what = "pruned (stopped early)" if pruned else "run"
            if xy:
                ax.scatter(*np.transpose(xy), c="k", label=what, **look)
        if best:
            star, name = (best["values"][LR_KEY], best["values"][P_KEY]), f"best: {best['name']}"
            ax.scatter(*star, marker="*", s=220, c="gold", edgecolors="k", label=name)
        ax.set(xscale="log", yscale="log", xlabel=names[LR_KEY], ylabel=names[P_KEY], title=label)
        for axis, values in ((ax.xaxis, logs[:, 0]), (ax.yaxis, logs[:, 1])):
            distinct = list(10 ** np.unique(values))
            _log_axis(axis, distinct if len(distinct) <= MAX_CELLS else None)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    fig.suptitle(textwrap.fill(title, width=110), fontsize="medium")
    return fig


def build_figures(
    groups: Sequence[RunGroup], layout: Layout, search: dict[str, Any] | None = None
) -> dict[str, Figure]:
    """The figures by file stem: ``curves`` (``curves_<dataset>``), ``schedule``, ``p_lr``."""
    which = "end-of-epoch pass" if layout.train_loss.startswith("train_pass") else "running mean"
    curve_rows: tuple[Row, ...] = (
        (layout.train_loss, f"train loss ({which})", True, 1.0),
        (VAL_ERR, "test error (%)", False, 100.0),
    )
    figures: dict[str, Figure] = {}
    by_figure: dict[tuple[str, ...], list[RunGroup]] = {}
    for group in groups:
        by_figure.setdefault(group.figure_key, []).append(group)
    for members in by_figure.values():
        title, notes = describe_runs(members), stopped_short(members)
        suffix = "_" + re.sub(r"[^a-z0-9.]+", "-", members[0].figure_title.lower()).strip("-")
        suffix = suffix if len(by_figure) > 1 else ""
        figures[f"curves{suffix}"] = _plot_grid(members, curve_rows, title, notes)
        partials = [set(g.mean_curves[PARTIAL].values) for g in members if PARTIAL in g.mean_curves]
        if any(len(values) > 1 for values in partials):  # p changes during training
            figures[f"schedule{suffix}"] = _plot_grid(members, SCHEDULE_ROWS, title, notes)
    points = search["points"] if search else []
    heat = [p["values"].get(k, 0) for p in points for k in (P_KEY, LR_KEY)]
    if search and min(heat) > 0:  # p and lr searched, positive for the log axes (not p = 0)
        figures["p_lr"] = heat_map_figure(search, describe_runs(groups), f"train loss ({which})")
    return figures


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Write each figure as PNG and SVG; return the paths written."""
    written = [out_dir / f"{stem}{suffix}" for stem in figures for suffix in (".png", ".svg")]
    for path in written:
        figures[path.stem].savefig(path, dpi=150)
    for fig in figures.values():
        plt.close(fig)
    return written
