"""The report's numbers, computed once into ``results.json``; ``results.md`` and ``.csv`` from it.

Errors are fractions (% in the markdown). Runs that differ in numbers only (a search or a grid
over p and lr) add ``search``: each run's values and command, the best run, key importances.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from padam_lightning.cli.run_layout import CONFIG_FILE
from padam_lightning.experiments import report_groups
from padam_lightning.experiments.report_groups import VAL_ERR, Layout, RunGroup
from padam_lightning.experiments.run_logs import AxisValue, RunRecord

#: The columns of ``results.csv`` (keys of ``results.json``'s runs), then one per axis.
_RUN = ("name", "group", "figure", "panel", "seed", "finished", "epochs", "max_epochs")
CSV_COLUMNS = (*_RUN, "final_val_err", "best_val_err", "best_epoch", "final_train_loss")
GROUP_STATS = ("final_val_err", "best_val_err", "final_train_loss")
_MD_COLUMNS = ("seeds", "epochs", "final test err %", "best test err %")
#: The heat map's axes: p (rows) and the learning rate (columns).
P_KEY, LR_KEY = "model.optimizer.init_args.partial", "model.optimizer.init_args.lr"


def _stat(values: Sequence[float]) -> dict[str, float] | None:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)} if values else None


def _axes_json(axes: dict[str, AxisValue]) -> dict[str, dict[str, str]]:
    return {axis: {"label": value.label, "title": value.title} for axis, value in axes.items()}


def common_targets(groups: Sequence[RunGroup]) -> dict[tuple[Any, ...], float]:
    """Per figure and panel with several groups: the best seed-mean test error of the worst."""
    bests: dict[tuple[Any, ...], list[float]] = {}
    for group in groups:
        if VAL_ERR in group.mean_curves:
            best = min(group.mean_curves[VAL_ERR].values)
            bests.setdefault((group.figure_key, group.panel_key), []).append(best)
    return {key: max(values) for key, values in bests.items() if len(values) > 1}


def run_numbers(record: RunRecord, train_loss: str) -> dict[str, Any]:
    """Progress, final and best test error and final training loss (of tag ``train_loss``)."""
    err, loss = record.curves.get(VAL_ERR), record.curves.get(train_loss)
    best = min(zip(err.values, err.epochs, strict=True)) if err else (None, None)
    return {
        "epochs": record.epochs_completed,
        "max_epochs": record.max_epochs,
        "final_val_err": err.values[-1] if err else None,
        "best_val_err": best[0],
        "best_epoch": best[1],
        "final_train_loss": loss.values[-1] if loss else None,
    }


def results_json(
    groups: Sequence[RunGroup], layout: Layout, targets: Sequence[float], logdir: Path
) -> dict[str, Any]:
    """``results.json``: layout, groups with statistics over seeds, every run with its curves."""
    common = common_targets(groups)
    group_entries, run_entries = [], []
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
                    tag: [list(point) for point in zip(curve.epochs, curve.values, strict=True)]
                    for tag, curve in sorted(record.curves.items())
                },
            }
            for record in group.runs
        ]
        run_entries += runs
        target = common.get((group.figure_key, group.panel_key))
        planned = [run["max_epochs"] for run in runs if run["max_epochs"] is not None]
        group_entries.append(
            {
                "label": group.label,
                "figure": group.figure_title,
                "panel": group.panel_title,
                "axes": _axes_json(group.axes),
                "runs": [run["name"] for run in runs],
                "seeds": [run["seed"] for run in runs],
                "epochs": min(run["epochs"] for run in runs),
                "max_epochs": max(planned, default=None),
                **{k: _stat([r[k] for r in runs if r[k] is not None]) for k in GROUP_STATS},
                "epoch_to_target": {f"{t:g}": group.epoch_to_reach(t) for t in targets},
                "common_target": target,
                "epoch_to_common_target": None if target is None else group.epoch_to_reach(target),
            }
        )
    records = [record for group in groups for record in group.runs]
    return {
        "logdir": str(logdir),
        "layout": dataclasses.asdict(layout),
        "targets": list(targets),
        "groups": group_entries,
        "runs": run_entries,
        "search": search_results(records, run_entries),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def searched_values(records: Sequence[RunRecord]) -> dict[str, list[float]]:
    """Each searched key's value per run: a search's ``params``, else the settings that differ.

    Empty when the runs differ in a setting that is not a number (an optimizer comparison).
    """
    params = [record.info.get("params") for record in records]
    search = all(isinstance(p, dict) for p in params)
    values = report_groups.differing_settings(params if search else [r.config for r in records])
    numbers = {k: [float(x) for x in v] for k, v in values.items() if all(map(_is_number, v))}
    return numbers if search or len(numbers) == len(values) else {}


def importance(points: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Optuna's importance of each varying key for the final test error (ImportError without)."""
    if len(points) < 2:
        return {}
    ranges = {k: sorted(p["values"][k] for p in points) for k in points[0]["values"]}
    ranges = {k: v for k, v in ranges.items() if v[0] < v[-1]}
    if not ranges:
        return {}
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")  # in memory, from the runs' values
    floats: dict[str, Any] = {
        k: FloatDistribution(v[0], v[-1], log=v[0] > 0) for k, v in ranges.items()
    }
    for point in points:
        params = {k: point["values"][k] for k in ranges}
        trial = optuna.trial.create_trial(
            params=params, distributions=floats, value=point["test_err"]
        )
        study.add_trial(trial)
    # PED-ANOVA: deterministic and needs no scikit-learn (fANOVA does); what it takes to reach
    # the top quarter (its default, a tenth, is one run of a 10-run search).
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25)
    return optuna.importance.get_param_importances(study, evaluator=evaluator)


def search_results(
    records: Sequence[RunRecord], runs: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The runs (``results.json``'s) as points of a search over numbers; ``None`` if none."""
    values = searched_values(records)
    if not values:
        return None
    points = []
    for i, (record, run) in enumerate(zip(records, runs, strict=True)):
        # A search's trial says how to train its settings again outside the study.
        arguments = record.info.get("retrain", record.info.get("arguments"))
        if not isinstance(arguments, list):
            arguments = ["fit", "--config", str(record.path / CONFIG_FILE)]
        points.append(
            {
                "name": run["name"],
                "values": {key: v[i] for key, v in values.items()},
                "test_err": run["final_val_err"],  # val/err is the test split, every epoch
                "train_loss": run["final_train_loss"],
                "pruned": record.pruned,
                "command": shlex.join(["padam-fit", *map(str, arguments)]),
            }
        )
    done = [p for p in points if not p["pruned"]]  # pruned: stopped early, not comparable
    note, ranked = None, None
    try:
        ranked = importance(done)
    except ImportError:
        note = "Optuna is not installed: no importance of the searched keys (pip install optuna)"
    return {
        "names": report_groups.short_names(list(values)),
        "points": points,
        "best": min(done, key=lambda p: (p["test_err"], p["name"]), default=None),
        "importance": ranked,
        "note": note,
    }


def _format(stat: dict[str, float] | None, scale: float = 1.0, digits: int = 4) -> str:
    if stat is None:
        return "-"
    text = f"{scale * stat['mean']:.{digits}f}"
    return f"{text} ± {scale * stat['std']:.{digits}f}" if stat["n"] > 1 else text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def search_markdown(search: dict[str, Any]) -> list[str]:
    """The search section of ``results.md``: best command, importance, each run's values."""
    names = search["names"]
    pruned = sum(p["pruned"] for p in search["points"])
    lines = ["", f"## Search over {', '.join(names.values())}", ""]
    if search["best"]:
        best, err = search["best"], f"{100 * search['best']['test_err']:.2f}%"
        lines += [f"Best: {best['name']}, test error {err}, trained by:", ""]
        lines += [f"    {best['command']}", ""]
    if search["importance"]:
        lines += ["Importance for the final test error (Optuna, PED-ANOVA):", ""]
        lines += [_row(["key", "importance"]), "|---|---|"]
        lines += [_row([names[k], f"{v:.3f}"]) for k, v in search["importance"].items()]
        lines.append("")
    runs = _count(len(search["points"]), "run")
    lines.append(f"{runs}, {pruned} pruned (stopped early: not in the cells, best or importance).")
    return lines


def markdown_table(results: dict[str, Any], title: str) -> str:
    """``results.md`` from ``results.json``: one table per figure and panel, errors in %."""
    layout, groups, targets = results["layout"], results["groups"], results["targets"]
    lines = [
        f"# {title}",
        "",
        f"{_count(len(results['runs']), 'run')} in {_count(len(groups), 'group')}. Test error is "
        "`val/err` (the test split, evaluated after every epoch) in %, mean ± std over seeds. "
        "Epochs are epochs completed (*epochs*: done of planned); *epochs to x%*: when the "
        "seed-mean test error first was at most x% (`-`: never); *common*: the worst group's best.",
    ]
    sections: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for group in groups:
        key = [group["axes"].get(a, {}).get("label") for a in layout["figures"] + layout["panels"]]
        sections.setdefault(tuple(key), []).append(group)
    for members in sections.values():
        heading = " · ".join(t for t in (members[0]["figure"], members[0]["panel"]) if t)
        common = members[0]["common_target"]
        loss = "final train loss" + (" (pass)" if "pass" in layout["train_loss"] else "")
        header = [*(layout["lines"] or ["group"]), *_MD_COLUMNS, loss]
        header += [f"epochs to {100 * t:.2f}%" for t in [*targets, *([common] if common else [])]]
        header[-1] += "" if common is None else " (common)"
        lines += ["", f"## {heading or 'All runs'}", "", _row(header), "|" + "---|" * len(header)]
        for group in members:
            axes = group["axes"]
            cells = [axes[k]["title"] if k in axes else "-" for k in layout["lines"]]
            reached = [group["epoch_to_target"][f"{t:g}"] for t in targets]
            reached += [] if common is None else [group["epoch_to_common_target"]]
            planned = f"/{group['max_epochs']}" if group["max_epochs"] else ""
            cells += [] if cells else [group["label"]]
            cells += [len(group["runs"]), f"{group['epochs']}{planned}"]
            cells += [_format(group[k], 100.0, 2) for k in ("final_val_err", "best_val_err")]
            cells += [
                _format(group["final_train_loss"]),
                *("-" if r is None else r for r in reached),
            ]
            lines.append(_row(cells))
    return (
        "\n".join(lines + (search_markdown(results["search"]) if results["search"] else [])) + "\n"
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
