"""The report's tables: ``results.md`` for people, ``results.json`` and ``results.csv`` for tools.

Errors are fractions in JSON and CSV and percentages in the markdown table. Every epoch number
is a number of epochs completed (1 after the first epoch; ``epochs``, ``best_epoch``, the curves'
epochs and the epochs to a target). Per group: the number of seeds, epochs completed (of the
planned ``trainer.max_epochs``), the final and the best test error (mean ± sample std over
seeds), the final training loss, and after how many epochs the seed-mean test error first reached
each target: the ``--target-err`` values and, per panel, the best error of the worst group (a
level every group reaches, so it compares speed fairly). The numbers are computed once, into
``results.json``'s structure; ``results.md`` and ``.csv`` are written from it.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from padam_lightning.experiments.report_groups import VAL_ERR, Layout, RunGroup
from padam_lightning.experiments.run_logs import AxisValue, RunRecord

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
#: The run numbers each group gives as statistics over its seeds.
GROUP_STATS = ("final_val_err", "best_val_err", "final_train_loss")


def _stat(values: Sequence[float]) -> dict[str, float] | None:
    """Mean and sample standard deviation (0 for one value) over seeds; ``None`` when empty."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _axes_json(axes: dict[str, AxisValue]) -> dict[str, dict[str, str]]:
    return {axis: {"label": value.label, "title": value.title} for axis, value in axes.items()}


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


def run_numbers(record: RunRecord, train_loss: str) -> dict[str, Any]:
    """Progress, final and best test error and final training loss (of tag ``train_loss``)."""
    err, loss = record.curves.get(VAL_ERR), record.curves.get(train_loss)
    best_err = best_epoch = None
    if err is not None:
        best_index = min(range(len(err.values)), key=lambda i: (err.values[i], err.epochs[i]))
        best_err, best_epoch = err.values[best_index], err.epochs[best_index]
    return {
        "epochs": record.epochs_completed,
        "max_epochs": record.max_epochs,
        "final_val_err": err.values[-1] if err is not None else None,
        "best_val_err": best_err,
        "best_epoch": best_epoch,
        "final_train_loss": loss.values[-1] if loss is not None else None,
    }


def results_json(
    groups: Sequence[RunGroup], layout: Layout, targets: Sequence[float], logdir: Path
) -> dict[str, Any]:
    """``results.json``: layout, groups with statistics over seeds, every run with its curves."""
    common = common_targets(groups)
    group_entries = []
    run_entries = []
    for group in groups:
        where = {"group": group.label, "figure": group.figure_title, "panel": group.panel_title}
        runs = [
            {
                "name": record.name,
                "path": str(record.path),
                **where,
                "seed": record.seed,
                "finished": record.finished is not None,
                "axes": _axes_json(record.axes),
                **run_numbers(record, layout.train_loss),
                "curves": {
                    tag: [[e, v] for e, v in zip(curve.epochs, curve.values, strict=True)]
                    for tag, curve in sorted(record.curves.items())
                },
            }
            for record in group.runs
        ]
        run_entries += runs
        common_target = common.get((group.figure_key, group.panel_key))
        configured = [run["max_epochs"] for run in runs if run["max_epochs"] is not None]
        group_entries.append(
            {
                "label": group.label,
                "figure": group.figure_title,
                "panel": group.panel_title,
                "axes": _axes_json(group.axes),
                "runs": [run["name"] for run in runs],
                "seeds": [run["seed"] for run in runs],
                "epochs": min(run["epochs"] for run in runs),  # every run has completed
                "max_epochs": max(configured) if configured else None,
                **{
                    key: _stat([run[key] for run in runs if run[key] is not None])
                    for key in GROUP_STATS
                },
                "epoch_to_target": {f"{t:g}": group.epoch_to_reach(t) for t in targets},
                "common_target": common_target,
                "epoch_to_common_target": (
                    None if common_target is None else group.epoch_to_reach(common_target)
                ),
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


def _format(stat: dict[str, float] | None, scale: float = 1.0, digits: int = 4) -> str:
    """``mean`` (or ``mean ± std`` over several seeds) times ``scale``; ``-`` when missing."""
    if stat is None:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    return f"{text} ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def markdown_table(results: dict[str, Any], title: str) -> str:
    """``results.md`` from ``results.json``: one table per figure and panel, errors in %."""
    layout, groups = results["layout"], results["groups"]
    lines = [
        f"# {title}",
        "",
        f"{_count(len(results['runs']), 'run')} in {_count(len(groups), 'group')}. Test error is "
        "`val/err` (the test split, evaluated after every epoch) in %; mean ± std over seeds "
        "where a group has several. Epochs are epochs completed: *epochs* is those done of "
        "those planned; *epochs to x%* is after how many epochs the seed-mean test error was "
        "first at most x% (`-`: not reached); *common* is the best error of the group that did "
        "worst, a level every group reached.",
    ]
    sections: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for group in groups:
        key = tuple(
            group["axes"].get(a, {}).get("label") for a in layout["figures"] + layout["panels"]
        )
        sections.setdefault(key, []).append(group)
    for members in sections.values():
        heading = " · ".join(t for t in (members[0]["figure"], members[0]["panel"]) if t)
        lines += ["", f"## {heading or 'All runs'}", ""]
        common_target = members[0]["common_target"]
        header = [
            *(layout["lines"] or ["group"]),
            "seeds",
            "epochs",
            "final test err %",
            "best test err %",
            "final train loss" + (" (pass)" if "pass" in layout["train_loss"] else ""),
            *(f"epochs to {100 * t:.2f}%" for t in results["targets"]),
        ]
        if common_target is not None:
            header.append(f"epochs to {100 * common_target:.2f}% (common)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for group in members:
            axes = group["axes"]
            cells = [axes[k]["title"] if k in axes else "-" for k in layout["lines"]]
            cells = cells or [group["label"]]
            reached = [group["epoch_to_target"][f"{t:g}"] for t in results["targets"]]
            if common_target is not None:
                reached.append(group["epoch_to_common_target"])
            cells += [
                str(len(group["runs"])),
                f"{group['epochs']}" + (f"/{group['max_epochs']}" if group["max_epochs"] else ""),
                _format(group["final_val_err"], scale=100.0, digits=2),
                _format(group["best_val_err"], scale=100.0, digits=2),
                _format(group["final_train_loss"]),
                *("-" if r is None else str(r) for r in reached),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
