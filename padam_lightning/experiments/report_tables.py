"""The report's tables: ``results.md`` for people, ``results.json`` and ``results.csv`` for tools.

Errors are fractions in JSON and CSV and percentages in the markdown table. Per group: the
number of seeds, epochs completed (of the configured epochs), the final and the best test error
(mean ± sample std over seeds), the final training loss, and the first epoch at which the
seed-mean test error reached each target: the ``--target-err`` values and, per panel, the best
error of the worst group (a level every group reaches, so it compares speed fairly).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from padam_lightning.experiments.report_groups import (
    Layout,
    RunGroup,
    Stat,
    common_targets,
)
from padam_lightning.experiments.run_logs import AxisValue


def _format(stat: Stat | None, scale: float = 1.0, digits: int = 4) -> str:
    """``mean`` (or ``mean ± std`` over several seeds) times ``scale``; ``-`` when missing."""
    if stat is None:
        return "-"
    text = f"{scale * stat.mean:.{digits}f}"
    return f"{text} ± {scale * stat.std:.{digits}f}" if stat.n > 1 else text


def _pct(stat: Stat | None) -> str:
    """A fraction as a percentage with two decimals."""
    return _format(stat, scale=100.0, digits=2)


def _stat_json(stat: Stat | None) -> dict[str, float] | None:
    return None if stat is None else {"mean": stat.mean, "std": stat.std, "n": stat.n}


def _axes_json(axes: dict[str, AxisValue]) -> dict[str, dict[str, str]]:
    return {axis: {"label": value.label, "title": value.title} for axis, value in axes.items()}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _target_name(target: float) -> str:
    return f"{target:g}"


def markdown_table(
    groups: Sequence[RunGroup], layout: Layout, targets: Sequence[float], title: str
) -> str:
    """``results.md``: one table per figure and panel."""
    common = common_targets(groups)
    lines = [
        f"# {title}",
        "",
        f"{_count(sum(len(g.runs) for g in groups), 'run')} in "
        f"{_count(len(groups), 'group')}. Test error is "
        "`val/err` (the CIFAR test split) in %; mean ± std over seeds where a group has "
        "several. *Epochs to x%*: the first epoch at which the seed-mean test error was at most "
        "x% (`-`: not reached); *common* is the best error of the group that did worst, a "
        "level every group reached.",
    ]
    sections: dict[tuple[Any, ...], list[RunGroup]] = {}
    for group in groups:
        sections.setdefault((group.figure_key, group.panel_key), []).append(group)
    for key, members in sections.items():
        heading = " · ".join(t for t in (members[0].figure_title, members[0].panel_title) if t)
        lines += ["", f"## {heading or 'All runs'}", ""]
        line_names = list(layout.lines) or ["group"]
        common_target = common.get(key)
        target_headers = [f"epochs to {100 * t:.2f}%" for t in targets]
        if common_target is not None:
            target_headers.append(f"epochs to {100 * common_target:.2f}% (common)")
        header = [
            *line_names,
            "seeds",
            "epochs",
            "final test err %",
            "best test err %",
            "final train loss" + (" (pass)" if "pass" in layout.train_loss else ""),
            *target_headers,
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for group in members:
            cells = [group.axes[k].title if k in group.axes else "-" for k in layout.lines]
            cells = cells or [group.label]
            epochs = f"{group.epochs}" + (f"/{group.max_epochs}" if group.max_epochs else "")
            reached = [group.epoch_to_reach(t) for t in targets]
            if common_target is not None:
                reached.append(group.epoch_to_reach(common_target))
            cells += [
                str(len(group.runs)),
                epochs,
                _pct(group.final_err),
                _pct(group.best_err),
                _format(group.final_train_loss),
                *("-" if r is None else str(r) for r in reached),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_json(
    groups: Sequence[RunGroup], layout: Layout, targets: Sequence[float], logdir: Path
) -> dict[str, Any]:
    """``results.json``: layout, groups with statistics, and every run with its curves."""
    common = common_targets(groups)
    group_entries = []
    run_entries = []
    for group in groups:
        common_target = common.get((group.figure_key, group.panel_key))
        reach = {_target_name(t): group.epoch_to_reach(t) for t in targets}
        group_entries.append(
            {
                "label": group.label,
                "figure": group.figure_title,
                "panel": group.panel_title,
                "axes": _axes_json(group.axes),
                "runs": [r.record.name for r in group.runs],
                "seeds": [r.record.seed for r in group.runs],
                "epochs": group.epochs,
                "max_epochs": group.max_epochs,
                "final_val_err": _stat_json(group.final_err),
                "best_val_err": _stat_json(group.best_err),
                "final_train_loss": _stat_json(group.final_train_loss),
                "epoch_to_target": reach,
                "common_target": common_target,
                "epoch_to_common_target": (
                    None if common_target is None else group.epoch_to_reach(common_target)
                ),
            }
        )
        for run in group.runs:
            run_entries.append(
                {
                    "name": run.record.name,
                    "path": str(run.record.path),
                    "group": group.label,
                    "figure": group.figure_title,
                    "panel": group.panel_title,
                    "seed": run.record.seed,
                    "finished": run.record.finished is not None,
                    "axes": _axes_json(run.record.axes),
                    "epochs": run.epochs,
                    "max_epochs": run.max_epochs,
                    "final_val_err": run.final_err,
                    "best_val_err": run.best_err,
                    "best_epoch": run.best_epoch,
                    "final_train_loss": run.final_train_loss,
                    "curves": {
                        tag: curve.as_pairs() for tag, curve in sorted(run.record.curves.items())
                    },
                }
            )
    return {
        "logdir": str(logdir),
        "layout": {
            "axes": list(layout.axes),
            "figures": list(layout.figures),
            "panels": list(layout.panels),
            "lines": list(layout.lines),
            "train_loss": layout.train_loss,
        },
        "targets": list(targets),
        "groups": group_entries,
        "runs": run_entries,
    }


#: The columns of ``results.csv`` (keys of ``results.json``'s runs), then one per axis.
CSV_COLUMNS = (
    "name",
    "group",
    "figure",
    "panel",
    "seed",
    "finished",
    "epochs",
    "max_epochs",
    "final_val_err",
    "best_val_err",
    "best_epoch",
    "final_train_loss",
)


def write_csv(path: Path, results: dict[str, Any]) -> None:
    """``results.csv``: one row per run of ``results.json``, with each of its axes' titles."""
    axes = results["layout"]["axes"]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", *CSV_COLUMNS[1:], *axes])
        for run in results["runs"]:
            titles = [run["axes"].get(axis, {}).get("title", "") for axis in axes]
            writer.writerow([*(run[column] for column in CSV_COLUMNS), *titles])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
