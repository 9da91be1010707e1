"""Figures like the paper's: training loss and test error per epoch, one panel per network.

One figure per dataset; columns are the panels of the layout (networks, or e.g. the lr of a
``p x lr`` grid); the top row is the training loss (log scale, plain tick labels), the bottom row
the test error in percent; one line per group (the seed mean, with a ±1 std band when there are
several seeds), each with its own colour, line style and marker, so lines that coincide (Adam and
AMSGrad often do) stay visible. The x axis is *epochs completed* (1 is the value after the first
epoch), in whole numbers. The title says which networks, dataset, optimizer, epochs (done of
planned) and seeds are shown. A run with a ``p`` schedule adds a figure of ``p`` and the learning
rate against epochs completed.
"""

from __future__ import annotations

import itertools
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, FuncFormatter, MaxNLocator, NullFormatter

from padam_lightning.experiments.report_groups import VAL_ERR, Layout, RunGroup
from padam_lightning.experiments.run_logs import RunRecord
from padam_lightning.experiments.sweep_spec import default_title

PARTIAL = "optim/partial"
LR = "optim/lr"
#: The x axis of every panel: epoch ``n`` is the value logged after ``n`` epochs of training.
EPOCH_AXIS_LABEL = "epochs completed"
#: A row of panels: the tag, its axis label, log scale, and the factor values are shown times.
Row = tuple[str, str, bool, float]
SCHEDULE_ROWS: tuple[Row, ...] = (
    (PARTIAL, "p (partial exponent)", False, 1.0),
    (LR, "learning rate", True, 1.0),
)
#: Eight dash patterns and eight markers, so that the optimizer comparison with the final
#: version's baselines (eight optimizers) gives every line its own pair.
LINE_STYLES: tuple[object, ...] = (
    "-",
    "--",
    "-.",
    ":",
    (0, (6, 2, 1, 2, 1, 2)),
    (0, (1, 3)),
    (0, (8, 3)),
    (0, (3, 2, 3, 2, 1, 2)),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def _plain(value: float, _position: object = None) -> str:
    """A tick label without powers of ten: ``2.35``, ``0.8``, ``0.001``."""
    return f"{value:.3g}"


class _PlainDistinct(Formatter):
    """Plain tick labels (no powers of ten) with as many digits as it takes to tell them apart.

    A loss that moves little over a run gets ticks such as 2.2875 and 2.29, which three
    significant digits would both show as ``2.29``.
    """

    def __call__(self, x: float, pos: int | None = None) -> str:
        return _plain(x)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        for digits in range(3, 10):
            labels = [f"{v:.{digits}g}" for v in values]
            if len(set(labels)) == len(labels):
                return labels
        return [f"{v:.10g}" for v in values]


def _plain_minor(value: float, _position: object = None) -> str:
    """A minor log tick's label at 2, 3 and 5 times a power of ten (the others stay unlabelled)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return _plain(value) if any(abs(mantissa - m) < 1e-6 for m in (2, 3, 5)) else ""


def _style_axes(ax: Axes, log_scale: bool) -> None:
    lines = ax.get_lines()
    if log_scale and lines and all(np.min(np.asarray(line.get_ydata())) > 0 for line in lines):
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(_PlainDistinct())
        # Training losses span a decade or two, so few powers of ten fall in range: within a
        # decade, evenly spaced round values; over a few, the minor ticks at 2, 3 and 5 as well.
        if high / low < 10:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            minor = _plain_minor if high / low < 300 else None
            ax.yaxis.set_minor_formatter(FuncFormatter(minor) if minor else NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    # A run of one or two epochs gives a span matplotlib would tick in fractions of an epoch.
    low, high = ax.get_xlim()
    if lines and high - low < 2:
        epochs = np.concatenate([np.asarray(line.get_xdata(), dtype=float) for line in lines])
        ax.set_xlim(math.floor(epochs.min()) - 0.5, math.ceil(epochs.max()) + 0.5)
    ax.set_xlabel(EPOCH_AXIS_LABEL)
    ax.grid(True, alpha=0.3)


def _plot_grid(
    groups: Sequence[RunGroup],
    rows: Sequence[Row],
    title: str,
    notes: dict[str, str] | None = None,
) -> Figure:
    """One column per panel, one row per curve; ``notes`` adds text to lines' legend labels."""
    panels = list(dict.fromkeys(g.panel_key for g in groups))
    titles = {g.panel_key: g.panel_title for g in groups}
    labels = list(dict.fromkeys(g.label for g in groups))
    # Lines that coincide (Adam and AMSGrad often do) must stay visible: each line has its own
    # colour, dash pattern and hollow marker shape, and earlier lines are drawn wider with larger
    # markers, so a later line on top of an earlier one leaves it showing around its edges.
    last = max(len(labels) - 1, 1)
    styles = {
        label: {
            "color": f"C{i % 10}",
            "linestyle": style,
            "marker": marker,
            "linewidth": 2.4 - 1.2 * i / last,
            "markersize": 8.0 - 4.0 * i / last,
        }
        for i, (label, style, marker) in enumerate(
            zip(labels, itertools.cycle(LINE_STYLES), itertools.cycle(MARKERS), strict=False)
        )
    }
    fig, axes = plt.subplots(
        len(rows),
        len(panels),
        figsize=(4.4 * len(panels), 3.3 * len(rows) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for column, panel in enumerate(panels):
        for row, (tag, ylabel, log_scale, scale) in enumerate(rows):
            ax = axes[row][column]
            for group in (g for g in groups if g.panel_key == panel):
                mean = group.mean_curves.get(tag)
                if mean is None:
                    continue
                style = styles[group.label]
                values = [scale * v for v in mean.values]
                ax.plot(
                    mean.epochs,
                    values,
                    label=group.label + (notes or {}).get(group.label, ""),
                    markerfacecolor="none",
                    markevery=max(1, len(values) // 12),
                    **style,
                )
                std = group.std_curves.get(tag)
                if std is not None and len(group.runs) > 1:
                    spread = [scale * s for s in std.values]
                    low = [m - s for m, s in zip(values, spread, strict=True)]
                    high = [m + s for m, s in zip(values, spread, strict=True)]
                    ax.fill_between(
                        mean.epochs, low, high, color=style["color"], alpha=0.15, linewidth=0
                    )
            _style_axes(ax, log_scale)
            ax.set_ylabel(ylabel)
            if row == 0 and titles[panel]:
                ax.set_title(titles[panel])
            if ax.get_lines():
                ax.legend(fontsize="small")
    # Wrapped to the figure's width (a one-panel figure is narrow).
    fig.suptitle(textwrap.fill(title, width=58 * len(panels)), fontsize="medium")
    return fig


def _progress(records: Sequence[RunRecord]) -> tuple[int, int | None]:
    """Epochs completed by all of ``records`` and the most any of them planned (None: unknown)."""
    planned = [r.max_epochs for r in records if r.max_epochs is not None]
    return min(r.epochs_completed for r in records), max(planned) if planned else None


def _epochs(done: int, planned: int | None) -> str:
    """``10 epochs`` (all that were planned, or the plan is unknown), ``1 of 10 epochs``."""
    noun = "epoch" if (planned or done) == 1 else "epochs"
    return f"{done} {noun}" if planned in (None, done) else f"{done} of {planned} {noun}"


def stopped_short(groups: Sequence[RunGroup]) -> dict[str, str]:
    """Legend notes for the lines that stopped short, where the runs' epochs differ.

    When every run completed the same epochs of the same plan the title says so; otherwise the
    title gives the range of epochs completed and each line that did not complete its planned
    epochs says how far it got: ``Adam (1 of 10 epochs)``.
    """
    if len({_progress([r]) for g in groups for r in g.runs}) <= 1:
        return {}
    notes = {}
    for group in groups:
        done, planned = _progress(group.runs)
        if planned is not None and done < planned:
            notes[group.label] = f" ({_epochs(done, planned)})"
    return notes


def describe_runs(groups: Sequence[RunGroup]) -> str:
    """What the figure shows, in one line: networks, dataset, optimizer, epochs and seeds.

    The optimizer is named when every run has the same one (several are the figure's lines).
    Epochs are those completed, of those planned (``trainer.max_epochs``) when the runs stopped
    short: ``1 of 10 epochs``; runs that got to different epochs give the range, ``1–3 epochs``
    (with :func:`stopped_short`'s notes on the lines).
    """
    records = [record for group in groups for record in group.runs]

    def values(key: str) -> list[str]:
        found = []
        for record in records:
            value = record.setting(key)
            if key == "data.dataset" and value == "imagefolder":
                value = Path(str(record.setting("data.data_dir") or "images")).name
            if value is not None:
                found.append(default_title(str(value)))
        return list(dict.fromkeys(found))

    progress = {_progress([r]) for r in records}
    seeds = sorted({r.seed for r in records if r.seed is not None})
    optimizers = list(dict.fromkeys(r.optimizer for r in records if r.optimizer))
    parts = [", ".join(values("model.arch")), ", ".join(values("data.dataset"))]
    if len(optimizers) == 1:
        parts.append(optimizers[0])
    if len(progress) == 1:
        parts.append(_epochs(*progress.pop()))
    elif records:
        done = sorted({done for done, _ in progress})
        low, high = done[0], done[-1]
        parts.append(_epochs(low, None) if low == high else f"{low}–{high} epochs")
    if seeds:
        shown = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        parts.append(shown + (" (mean ± 1 std)" if len(seeds) > 1 else ""))
    return " · ".join(part for part in parts if part)


def build_figures(groups: Sequence[RunGroup], layout: Layout) -> dict[str, Figure]:
    """The report's figures by file stem.

    ``curves`` (``curves_<dataset>`` with several datasets), and ``schedule`` when some run
    changes ``p`` during training.
    """
    which = "end-of-epoch pass" if layout.train_loss.startswith("train_pass") else "running mean"
    curve_rows: tuple[Row, ...] = (
        (layout.train_loss, f"train loss ({which})", True, 1.0),
        (VAL_ERR, "test error (%)", False, 100.0),
    )
    figures: dict[str, Figure] = {}
    by_figure: dict[tuple[str, ...], list[RunGroup]] = {}
    for group in groups:
        by_figure.setdefault(group.figure_key, []).append(group)
    several = len(by_figure) > 1
    for members in by_figure.values():
        title, notes = describe_runs(members), stopped_short(members)
        name = members[0].figure_title
        stem = f"curves_{_slug(name)}" if several else "curves"
        figures[stem] = _plot_grid(members, curve_rows, title, notes)
        scheduled = [
            g
            for g in members
            if PARTIAL in g.mean_curves and len(set(g.mean_curves[PARTIAL].values)) > 1
        ]
        if scheduled:
            stem = f"schedule_{_slug(name)}" if several else "schedule"
            figures[stem] = _plot_grid(members, SCHEDULE_ROWS, title, notes)
    return figures


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Write each figure as PNG and SVG; return the paths written."""
    written = []
    for stem, fig in figures.items():
        for suffix in (".png", ".svg"):
            path = out_dir / f"{stem}{suffix}"
            fig.savefig(path, dpi=150)
            written.append(path)
        plt.close(fig)
    return written
