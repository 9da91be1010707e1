"""``padam-report``: figures and tables from the TensorBoard logs of ``padam-fit`` runs.

Examples::

    padam-report lightning_logs/optimizers --out reports/optimizers
    padam-report lightning_logs/p_lr_grid --out reports/p_lr_grid --target-err 0.1 0.08
    padam-report lightning_logs/p_grid --out reports/p_grid --panels arch --lines p
    padam-report lightning_logs/optimizers --out reports/optimizers --train-curve pass

Every folder under LOGDIR with event files and a ``config.yaml`` is a run. What a run is comes
from the ``run.json`` padam-sweep writes into its folder (axis labels and seed); a plain padam-fit
run is named by its run name, with the settings in which runs of that name differ
(:mod:`padam_lightning.experiments.run_logs`). Runs that differ only in their seed form a group;
the sweep's axes make the figures, panels and lines
(:mod:`padam_lightning.experiments.report_groups`).

Epochs are counted as TensorBoard's ``epoch`` scalar + 1: epoch 1 is the value after one epoch of
training, and every epoch number the report shows is a number of epochs completed. Written to
``--out``:

- ``curves.png`` / ``curves.svg`` (``curves_<dataset>.*`` per dataset): training loss and test
  error (%) against epochs completed, one panel per network (or per value of a further axis), one
  line per optimizer / p / setting; the title names the networks, dataset, optimizer and the
  epochs done of those planned; ``schedule.*`` when some run schedules p.
- ``results.md``: final and best test error per group (mean ± std over seeds), final training
  loss and after how many epochs each group first reached the target errors.
- ``results.json`` (groups, and every run with its per-epoch curves) and ``results.csv`` (one row
  per run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from padam_lightning.errors import UserError
from padam_lightning.experiments.report_groups import (
    TRAIN_CURVES,
    Layout,
    RunGroup,
    choose_layout,
    group_runs,
    label_plain_runs,
)
from padam_lightning.experiments.report_tables import (
    markdown_table,
    results_json,
    write_csv,
    write_json,
)
from padam_lightning.experiments.run_logs import (
    UnreadableRunError,
    check_output_folder,
    find_run_dirs,
    read_run,
)

PROG = "padam-report"
DEFAULT_TARGETS = (0.10,)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-report``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Read the TensorBoard logs of padam-fit runs under LOGDIR and write figures (PNG, "
            "SVG) and tables (results.md, results.json, results.csv) comparing them."
        ),
    )
    parser.add_argument("logdir", type=Path, help="folder of runs, e.g. lightning_logs/optimizers")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the figures and tables (created)"
    )
    parser.add_argument(
        "--target-err",
        type=float,
        nargs="+",
        default=list(DEFAULT_TARGETS),
        metavar="ERR",
        help="test error fractions for the epochs-to-target columns, which give the epochs "
        "completed when each group first reached them (default 0.10); the best error of the "
        "worst group per panel is always added",
    )
    parser.add_argument(
        "--panels",
        type=_axis_list,
        metavar="AXES",
        help="comma-separated sweep axes to make panels of (default: arch and any axis after "
        "the line axis)",
    )
    parser.add_argument(
        "--lines",
        type=_axis_list,
        metavar="AXES",
        help="comma-separated sweep axes to label lines with (default: the first axis other "
        "than data and arch, e.g. optimizer or p)",
    )
    parser.add_argument(
        "--train-curve",
        choices=tuple(TRAIN_CURVES),
        default="running",
        help="training loss to draw: running (default) is the mean over each epoch's batches "
        "(train/loss, what the reproduction study plotted); pass is the released code's "
        "second pass over the training split after each epoch (train_pass/loss, what the "
        "paper's figures show; logged by runs that stack configs/experiments/"
        "released_metrics.yaml)",
    )
    parser.add_argument("--title", help="heading of results.md (default: the log folder)")
    return parser


def _axis_list(text: str) -> list[str]:
    """``"arch, p"`` -> ``["arch", "p"]`` (argparse's ``type`` for ``--panels`` and ``--lines``)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def build_report(
    logdir: Path,
    *,
    panels: Sequence[str] | None = None,
    lines: Sequence[str] | None = None,
    train_curve: str = "running",
) -> tuple[list[RunGroup], Layout, list[str]]:
    """Read the runs under ``logdir`` and group them.

    Returns:
        The groups, the layout, and notes about the folders and files that were left out.

    Raises:
        UserError: If ``logdir`` holds no run with a logged test error, if ``panels`` or
            ``lines`` names an axis the runs lack, or if ``train_curve`` is ``pass`` and some
            run lacks the pass's tags.
    """
    if not logdir.is_dir():
        raise UserError(f"{logdir} is not a folder; pass the log folder of a sweep or run.")
    notes = []
    records = []
    for run_dir in find_run_dirs(logdir):
        try:
            record = read_run(run_dir, logdir)
        except UnreadableRunError as err:
            notes.append(f"{run_dir}: {err}; left out")
            continue
        if record is None:
            notes.append(f"{run_dir}: no config.yaml, not a padam-fit run; left out")
            continue
        notes.extend(f"{run_dir}: {note}" for note in record.notes)
        if "val/err" not in record.curves:
            notes.append(f"{run_dir}: no test error logged yet; left out")
            continue
        records.append(record)
    if not records:
        raise UserError(
            f"no runs with a logged test error (val/err) under {logdir}; point at the folder "
            "that holds the runs, e.g. lightning_logs/optimizers."
        )
    train_loss = TRAIN_CURVES[train_curve]
    lacking = [record.name for record in records if train_loss not in record.curves]
    if train_curve == "pass" and lacking:
        raise UserError(
            f"--train-curve pass: {len(lacking)} of {len(records)} runs (e.g. {lacking[0]}) did "
            f"not log {train_loss}, the end-of-epoch pass over the training split; train them "
            "with --config configs/experiments/released_metrics.yaml, or use --train-curve running."
        )
    label_plain_runs(records)
    layout = choose_layout(records, panels=panels, lines=lines, train_loss=train_loss)
    groups = group_runs(records, layout)
    for group in groups:
        seeds = [run.seed for run in group.runs]
        if len(set(seeds)) < len(seeds):
            # Two plain padam-fit runs of one name with the same settings and seed (a run
            # started twice): averaged like seeds, although they are not independent repeats.
            names = ", ".join(run.name for run in group.runs)
            notes.append(
                f"{group.label or 'one group'}: runs {names} have the same settings and seed; "
                "they are averaged as if repeats."
            )
    return groups, layout, notes


def run_report(argv: Sequence[str]) -> int:
    """Parse ``argv``, write the report, print what was written; return the exit status."""
    args = build_parser().parse_args(list(argv))
    targets = args.target_err
    if any(not 0 < t < 1 for t in targets):
        raise UserError("--target-err values are error fractions between 0 and 1, e.g. 0.1.")
    check_output_folder(args.out, "--out")  # before reading the runs, which takes a while
    groups, layout, notes = build_report(
        args.logdir,
        panels=args.panels,
        lines=args.lines,
        train_curve=args.train_curve,
    )
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    title = args.title or f"Results: {args.logdir}"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        # matplotlib loads here, inside main's Ctrl-C handling (about a second of imports).
        from padam_lightning.experiments.report_figures import build_figures, save_figures

        written = save_figures(build_figures(groups, layout), args.out)
        results = results_json(groups, layout, targets, args.logdir)
        markdown = args.out / "results.md"
        markdown.write_text(markdown_table(results, title))
        json_path, csv_path = args.out / "results.json", args.out / "results.csv"
        write_json(json_path, results)
        write_csv(csv_path, results)
    except OSError as err:
        # What the check above cannot foresee: a full disk, a folder named like an output file.
        target = err.filename or args.out
        raise UserError(f"cannot write {target}: {err.strerror or err}") from err
    written += [markdown, json_path, csv_path]
    runs = sum(len(g.runs) for g in groups)
    print(f"{PROG}: {runs} run(s) in {len(groups)} group(s); wrote {', '.join(map(str, written))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``padam-report``; user mistakes print one line and exit with status 2."""
    try:
        return run_report(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            f"{PROG}: stopped by Ctrl-C; its outputs may be incomplete: run it again.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
