"""``padam-report``: figures and tables from the TensorBoard logs of ``padam-fit`` runs.

    padam-report lightning_logs/optimizers --out reports/optimizers
    padam-report lightning_logs/p_grid --out reports/p_grid --panels arch --lines p

Writes ``curves.*`` (``schedule.*`` for p schedules), ``results.md``/``.json``/``.csv`` and, for
a search or grid over p and lr, the heat map ``p_lr.*``; docs/sweeps.md describes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from padam_lightning.errors import UserError
from padam_lightning.experiments import report_groups as grouping
from padam_lightning.experiments import report_tables as tables
from padam_lightning.experiments import run_logs

PROG = "padam-report"
_HELP = {
    "err": "test error fractions: after how many epochs each group first reached them "
    "(default 0.10); the best error of the worst group per panel is always added",
    "panels": "comma-separated sweep axes to make panels of (default: arch and any axis after "
    "the lines')",
    "lines": "comma-separated sweep axes to label lines with (default: the first axis other than "
    "data and arch, e.g. optimizer or p)",
    "train-curve": "training loss to draw: running (default), the mean over each epoch's batches "
    "(train/loss, the reproduction study's); pass, the released code's second pass over the "
    "training split after each epoch (train_pass/loss, the paper's; logged by runs that stack "
    "configs/experiments/released_metrics.yaml)",
}


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-report``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read the TensorBoard logs of padam-fit runs under LOGDIR and write figures "
        "(PNG, SVG) and tables (results.md, .json, .csv) comparing them; for a search or grid "
        "over p and lr, also a heat map, the best run's command and each key's importance.",
    )
    parser.add_argument("logdir", type=Path, help="folder of runs, e.g. lightning_logs/optimizers")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report (created)")
    add = parser.add_argument
    add("--target-err", type=float, nargs="+", default=[0.1], metavar="ERR", help=_HELP["err"])
    add("--panels", type=_axes, metavar="AXES", help=_HELP["panels"])
    add("--lines", type=_axes, metavar="AXES", help=_HELP["lines"])
    curves = tuple(grouping.TRAIN_CURVES)
    add("--train-curve", choices=curves, default="running", help=_HELP["train-curve"])
    add("--title", help="heading of results.md (default: the log folder)")
    return parser


def _axes(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_report(
    logdir: Path,
    *,
    panels: Sequence[str] | None = None,
    lines: Sequence[str] | None = None,
    train_curve: str = "running",
) -> tuple[list[grouping.RunGroup], grouping.Layout, list[str]]:
    """The runs under ``logdir`` grouped and laid out, and notes on what was left out."""
    if not logdir.is_dir():
        raise UserError(f"{logdir} is not a folder; pass the log folder of a sweep or run.")
    notes, records = [], []
    for run_dir in run_logs.find_run_dirs(logdir):
        try:
            record = run_logs.read_run(run_dir, logdir)
        except run_logs.UnreadableRunError as err:
            notes.append(f"{run_dir}: {err}; left out")
            continue
        if record is None:
            notes.append(f"{run_dir}: no config.yaml, not a padam-fit run; left out")
        elif "val/err" not in record.curves:
            notes.append(f"{run_dir}: no test error logged yet; left out")
        else:
            records.append(record)
        notes.extend(f"{run_dir}: {note}" for note in (record.notes if record else []))
    if not records:
        raise UserError(
            f"no runs with a logged test error (val/err) under {logdir}; point at the folder "
            "that holds the runs, e.g. lightning_logs/optimizers."
        )
    train_loss = grouping.TRAIN_CURVES[train_curve]
    lacking = [record.name for record in records if train_loss not in record.curves]
    if train_curve == "pass" and lacking:
        raise UserError(
            f"--train-curve pass: {len(lacking)} of {len(records)} runs (e.g. {lacking[0]}) did "
            f"not log {train_loss}, the end-of-epoch pass over the training split; train them "
            "with --config configs/experiments/released_metrics.yaml, or use --train-curve running."
        )
    grouping.label_plain_runs(records)
    layout = grouping.choose_layout(records, panels=panels, lines=lines, train_loss=train_loss)
    return grouping.group_runs(records, layout), layout, notes


def run_report(argv: Sequence[str]) -> int:
    """Parse ``argv``, write the report, print what was written; return the exit status."""
    args = build_parser().parse_args(list(argv))
    if any(not 0 < t < 1 for t in args.target_err):
        raise UserError("--target-err values are error fractions between 0 and 1, e.g. 0.1.")
    run_logs.check_output_folder(args.out, "--out")  # before reading the runs, which takes a while
    groups, layout, notes = build_report(
        args.logdir, panels=args.panels, lines=args.lines, train_curve=args.train_curve
    )
    results = tables.results_json(groups, layout, args.target_err, args.logdir)
    search = results["search"]
    for note in [*notes, *filter(None, [(search or {}).get("note")])]:
        print(f"{PROG}: {note}", file=sys.stderr)
    paths = [args.out / name for name in ("results.md", "results.json", "results.csv")]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        # matplotlib loads here, inside main's Ctrl-C handling (about a second of imports).
        from padam_lightning.experiments.report_figures import build_figures, save_figures

        paths[:0] = save_figures(build_figures(groups, layout, search), args.out)
        paths[-3].write_text(
            tables.markdown_table(results, args.title or f"Results: {args.logdir}")
        )
        tables.write_json(paths[-2], results)
        tables.write_csv(paths[-1], results)
    except OSError as err:  # a full disk, a folder named like an output file
        raise UserError(f"cannot write {err.filename or args.out}: {err.strerror or err}") from err
    runs = sum(len(g.runs) for g in groups)
    print(f"{PROG}: {runs} run(s) in {len(groups)} group(s); wrote {', '.join(map(str, paths))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``padam-report``; user mistakes print one line and exit with status 2."""
    try:
        return run_report(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        message = "stopped by Ctrl-C; its outputs may be incomplete: run it again."
        print(f"{PROG}: {message}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
