"""Figures like the paper's: training loss and test error against epoch, one panel per network.

One figure per dataset; columns are the panels of the layout (networks, or e.g. the lr of a
``p x lr`` grid); the top row is the training loss (log scale), the bottom row the test error;
one line per group (the seed mean, with a ±1 std band when there are several seeds). A run with a
``p`` schedule adds a figure of ``p`` and the learning rate against epoch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from padam_lightning.experiments.report_groups import TRAIN_LOSS, VAL_ERR, RunGroup

PARTIAL = "optim/partial"
LR = "optim/lr"
CURVE_ROWS = ((TRAIN_LOSS, "train loss", True), (VAL_ERR, "test error", False))
SCHEDULE_ROWS = ((PARTIAL, "p (partial exponent)", False), (LR, "learning rate", True))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def _plot_grid(
    groups: Sequence[RunGroup], rows: Sequence[tuple[str, str, bool]], title: str
) -> Figure:
    panels = list(dict.fromkeys(g.panel_key for g in groups))
    titles = {g.panel_key: g.panel_title for g in groups}
    labels = list(dict.fromkeys(g.label for g in groups))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(
        len(rows),
        len(panels),
        figsize=(4.2 * len(panels), 3.2 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    for column, panel in enumerate(panels):
        for row, (tag, ylabel, log_scale) in enumerate(rows):
            ax = axes[row][column]
            for group in (g for g in groups if g.panel_key == panel):
                mean = group.mean_curves.get(tag)
                if mean is None:
                    continue
                color = colors[group.label]
                ax.plot(mean.epochs, mean.values, label=group.label, color=color, linewidth=1.4)
                std = group.std_curves.get(tag)
                if std is not None and len(group.runs) > 1:
                    low = [m - s for m, s in zip(mean.values, std.values, strict=True)]
                    high = [m + s for m, s in zip(mean.values, std.values, strict=True)]
                    ax.fill_between(mean.epochs, low, high, color=color, alpha=0.2, linewidth=0)
            if log_scale and any(line.get_ydata().min() > 0 for line in ax.get_lines()):
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if row == 0 and titles[panel]:
                ax.set_title(titles[panel])
            if ax.get_lines():
                ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def build_figures(groups: Sequence[RunGroup]) -> dict[str, Figure]:
    """The report's figures by file stem.

    ``curves`` (``curves_<dataset>`` with several datasets), and ``schedule`` when some run
    changes ``p`` during training.
    """
    figures: dict[str, Figure] = {}
    by_figure: dict[tuple[object, ...], list[RunGroup]] = {}
    for group in groups:
        by_figure.setdefault(group.figure_key, []).append(group)
    several = len(by_figure) > 1
    for members in by_figure.values():
        title = members[0].figure_title
        stem = f"curves_{_slug(title)}" if several else "curves"
        figures[stem] = _plot_grid(members, CURVE_ROWS, title)
        scheduled = [
            g
            for g in members
            if PARTIAL in g.mean_curves and len(set(g.mean_curves[PARTIAL].values)) > 1
        ]
        if scheduled:
            stem = f"schedule_{_slug(title)}" if several else "schedule"
            figures[stem] = _plot_grid(members, SCHEDULE_ROWS, title)
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
