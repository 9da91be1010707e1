"""``padam-sweep``: run a grid of ``padam-fit`` trainings described by one sweep file.

Examples::

    padam-sweep configs/sweeps/optimizers.yaml --dry-run        # print the runs' commands
    padam-sweep configs/sweeps/optimizers.yaml                  # run them (restartable)
    padam-sweep configs/sweeps/p_grid.yaml --only 'resnet18-*' -- --trainer.max_epochs 3
    padam-sweep configs/sweeps/optimizers.yaml --runs-per-gpu 2     # two runs share each GPU
    padam-sweep configs/sweeps/optimizers.yaml --executor slurm --slurm-partition gpu

The sweep file format is described in :mod:`padam_lightning.experiments.sweep_spec`. Every run logs
to ``<save dir>/<sweep name>/<run name>`` and gets a ``run.json`` there saying what it is (its
axis labels, seed and ``padam-fit`` arguments). Restarting the same command continues the sweep:
a run with ``finished.json`` from the same arguments is skipped, a run with
``checkpoints/last.ckpt`` resumes with ``--ckpt_path last``, the others start. So a run finished by
a trial with other arguments (``-- --trainer.max_epochs 2``) is continued rather than skipped, and
one whose ``finished.json`` is damaged is resumed. A failed run does not stop the others; the
failures are listed at the end and the exit status is 1. A run that resumes with other arguments
than its last attempt (epochs aside) gets a warning; run trials with other settings under their
own ``--save-dir``.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from padam_lightning.cli.run_layout import DEFAULT_LOG_DIR
from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import RUN_FILE
from padam_lightning.experiments.sweep_jobs import (
    FitJob,
    Outcome,
    RunState,
    SlurmOptions,
    run_local,
    run_slurm,
    slurm_executor,
)
from padam_lightning.experiments.sweep_spec import (
    PlannedRun,
    SweepSpec,
    expand,
    load_sweep,
    missing_config_files,
)

PROG = "padam-sweep"
#: ``auto`` and ``submitit-local`` (the name of an earlier version's local executor) mean ``local``.
EXECUTORS = ("auto", "local", "submitit-local", "slurm")
#: Lines of a failed run's log shown in the final summary.
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class SweepRun:
    """A planned run with where it logs, what state its folder is in, and its job."""

    run: PlannedRun
    run_dir: Path
    state: RunState
    job: FitJob


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-sweep``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Expand a sweep file (a grid of configs and overrides, times seeds) into padam-fit "
            "runs and run them: finished runs are skipped, interrupted ones resume, so the same "
            "command restarts a sweep after a crash. Arguments after `--` go to every run."
        ),
        epilog=(
            "executors: local (the default; auto and submitit-local mean the same) runs on this "
            "machine: one run per GPU at once, each seeing only its GPU, or one run after "
            "another in this terminal without GPUs; --runs-per-gpu K runs K at once per GPU (K "
            "at once without GPUs). slurm submits one job per run (one GPU each) through "
            "submitit. Each run's output is appended to fit.log in its folder."
        ),
    )
    parser.add_argument("sweep", help="sweep YAML file, e.g. configs/sweeps/optimizers.yaml")
    parser.add_argument(
        "--dry-run", action="store_true", help="print each run's state and command; run nothing"
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="where to run (default: local, this machine)",
    )
    parser.add_argument(
        "--save-dir",
        default=DEFAULT_LOG_DIR,
        help=f"root log folder; runs go to SAVE_DIR/<sweep>/<run> (default {DEFAULT_LOG_DIR})",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="GLOB",
        help="run only runs whose name matches (fnmatch, repeatable), e.g. 'resnet18-*'",
    )
    parser.add_argument(
        "--fit-command",
        metavar="CMD",
        help="training command to call instead of padam-fit (split like a shell would)",
    )
    local = parser.add_argument_group("local")
    local.add_argument(
        "--gpus",
        metavar="IDS",
        help="comma-separated GPU ids to use (default: all visible, from CUDA_VISIBLE_DEVICES "
        "or torch)",
    )
    local.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="K runs share each GPU at once (small CIFAR networks leave a large GPU mostly "
        "idle); without GPUs, K runs at once on the CPUs (default 1)",
    )
    local.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="at most N runs at once (default: GPUs x K, or K without GPUs)",
    )
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument(
        "--timeout-min",
        type=int,
        default=72 * 60,
        metavar="MIN",
        help="time limit per run in minutes (default 4320; a run stopped by it is requeued "
        "and resumes)",
    )
    slurm.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    slurm.add_argument(
        "--slurm-gpus-per-run", type=int, default=1, metavar="N", help="GPUs per run (default 1)"
    )
    slurm.add_argument(
        "--slurm-cpus-per-run", type=int, default=8, metavar="N", help="CPUs per run (default 8)"
    )
    slurm.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per run")
    slurm.add_argument(
        "--slurm-array-parallelism",
        type=int,
        metavar="N",
        help="at most N of the sweep's jobs running at once",
    )
    slurm.add_argument(
        "--slurm-additional",
        action="append",
        metavar="KEY=VALUE",
        help="extra #SBATCH option, e.g. account=myproj (repeatable)",
    )
    slurm.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and exit (do not restart the sweep until its jobs have ended)",
    )
    return parser


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` at the first ``--``: the sweep's own arguments, and those for every run."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


def default_fit_command() -> list[str]:
    """``padam-fit`` by name when that is this installation's, else by its full path."""
    installed = Path(sys.executable).parent / "padam-fit"
    if not installed.is_file():
        return ["padam-fit"]
    on_path = shutil.which("padam-fit")
    if on_path is not None and Path(on_path).resolve() == installed.resolve():
        return ["padam-fit"]
    return [str(installed)]


def plan_runs(
    spec: SweepSpec,
    *,
    save_dir: str,
    cwd: Path,
    fit_command: Sequence[str],
    extra_args: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[SweepRun]:
    """The sweep's runs (filtered by ``only`` globs) with their folders, states and jobs.

    Raises:
        UserError: If no run matches ``only`` or a config file is missing.
    """
    runs = expand(spec)
    if only:
        runs = [run for run in runs if any(fnmatch.fnmatchcase(run.name, p) for p in only)]
        if not runs:
            raise UserError(
                f"--only {' '.join(only)} matches none of the sweep's runs; run with --dry-run "
                "to list their names."
            )
    missing = missing_config_files(runs, cwd)
    if missing:
        raise UserError(
            f"config file(s) not found: {', '.join(missing)} (relative paths are read from "
            f"{cwd}; run padam-sweep from the project root)."
        )
    planned = []
    for run in runs:
        run_dir = cwd / save_dir / spec.name / run.name
        command = [
            *fit_command,
            *run.fit_arguments(sweep_name=spec.name, save_dir=save_dir, extra_args=extra_args),
        ]
        job = FitJob(
            name=run.name,
            command=command,
            run_dir=str(run_dir),
            cwd=str(cwd),
            identity=run.identity(spec.name, command[len(fit_command) :]),
        )
        planned.append(SweepRun(run, run_dir, job.state(), job))
    return planned


def describe(spec: SweepSpec, runs: Sequence[SweepRun], save_dir: str) -> str:
    """One header line: the sweep, its shape and what is left to do."""
    shape = " x ".join(
        [f"{axis.name} {len(axis.choices)}" for axis in spec.axes] + [f"seeds {len(spec.seeds)}"]
    )
    counts = {state: sum(1 for r in runs if r.state is state) for state in RunState}
    return (
        f"sweep {spec.name} ({spec.source}): {len(runs)} runs ({shape}) in "
        f"{Path(save_dir) / spec.name}: {counts[RunState.NEW]} to start, "
        f"{counts[RunState.RESUME]} to resume, {counts[RunState.DONE]} finished"
    )


def dry_run_text(runs: Sequence[SweepRun]) -> str:
    """Each run's name and state as a comment, then its command (a runnable shell script)."""
    lines = []
    for sweep_run in runs:
        if sweep_run.state is RunState.DONE:
            lines.append(f"# {sweep_run.run.name}: finished (skipped)")
            continue
        lines.append(f"# {sweep_run.run.name}: {sweep_run.state.value}")
        lines.append(shlex.join(sweep_run.job.argv()))
    return "\n".join(lines)


def visible_gpus() -> list[int]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else torch's count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
        if not entries or entries == ["-1"]:
            return []
        if not all(entry.isdigit() for entry in entries):
            raise UserError(
                f"CUDA_VISIBLE_DEVICES={visible} does not list GPUs by index; pass "
                "--gpus 0,1,... (indices as nvidia-smi numbers them)."
            )
        return [int(entry) for entry in entries]
    import torch  # imported here: a dry run or a CPU sweep does not pay for it

    return list(range(torch.cuda.device_count()))


def parse_gpus(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``."""
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus {text}: expected comma-separated GPU indices like 0,1") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus {text}: expected distinct non-negative GPU indices like 0,1")
    return gpus


def _slurm_options(args: argparse.Namespace) -> SlurmOptions:
    additional = []
    for item in args.slurm_additional or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-additional {item}: expected KEY=VALUE, e.g. account=proj")
        additional.append((key, value))
    return SlurmOptions(
        partition=args.slurm_partition,
        timeout_min=args.timeout_min,
        gpus_per_run=args.slurm_gpus_per_run,
        cpus_per_run=args.slurm_cpus_per_run,
        mem_gb=args.slurm_mem_gb,
        array_parallelism=args.slurm_array_parallelism,
        additional=tuple(additional),
    )


def summary_text(outcomes: Sequence[Outcome], skipped: int) -> str:
    """What happened: counts, then each failed run with its reason and the end of its log."""
    failed = [o for o in outcomes if not o.ok]
    lines = [
        f"{len(outcomes) - len(failed)} run(s) finished, {skipped} skipped (already finished), "
        f"{len(failed)} failed"
    ]
    for outcome in failed:
        lines.append(f"FAILED {outcome.name}: {outcome.reason}")
        if outcome.log_path is not None and outcome.log_path.is_file():
            tail = outcome.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            lines.append(f"  last lines of {outcome.log_path}:")
            lines.extend(f"    {line}" for line in tail)
    return "\n".join(lines)


def run_sweep(argv: Sequence[str]) -> int:
    """Parse ``argv``, plan the sweep, run it (or print it); return the exit status."""
    own_args, extra_args = split_passthrough(argv)
    args = build_parser().parse_args(own_args)
    if args.no_wait and args.executor != "slurm":
        raise UserError("--no-wait is for --executor slurm only.")
    for flag, value in (
        ("--max-parallel", args.max_parallel),
        ("--runs-per-gpu", args.runs_per_gpu),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1.")
    if args.executor == "slurm" and args.runs_per_gpu != 1:
        raise UserError("--runs-per-gpu is for the local executor; SLURM gives each run its GPU.")
    spec = load_sweep(args.sweep)
    fit_command = shlex.split(args.fit_command) if args.fit_command else default_fit_command()
    if not fit_command:
        raise UserError("--fit-command is empty; give the training command, e.g. padam-fit.")
    cwd = Path.cwd()
    runs = plan_runs(
        spec,
        save_dir=args.save_dir,
        cwd=cwd,
        fit_command=fit_command,
        extra_args=extra_args,
        only=args.only,
    )
    print(f"{PROG}: {describe(spec, runs, args.save_dir)}", flush=True)
    for changed in (
        r for r in runs if r.state is RunState.RESUME and r.job.changed_since_last_attempt()
    ):
        print(
            f"{PROG}: warning: {changed.run.name} resumes with other settings than it started "
            f"with (its last attempt's are in {changed.run_dir / RUN_FILE}); delete its folder "
            "to start it over with the new ones.",
            file=sys.stderr,
        )
    if args.dry_run:
        print(dry_run_text(runs))
        return 0
    todo = [r.job for r in runs if r.state is not RunState.DONE]
    skipped = len(runs) - len(todo)
    if not todo:
        print(f"{PROG}: nothing to do; delete a run's folder to run it again.")
        return 0

    def announce(line: str) -> None:
        print(f"{PROG}: {line}", flush=True)

    if args.executor != "slurm":
        gpus = parse_gpus(args.gpus) if args.gpus else visible_gpus()
        # Round-robin over the GPUs, so the first runs spread over all of them.
        slots: list[int | None] = [g for _ in range(args.runs_per_gpu) for g in gpus]
        slots = slots or [None] * (args.max_parallel or args.runs_per_gpu)
        outcomes = run_local(todo, announce, slots[: args.max_parallel or len(slots)])
    else:
        submitit_folder = cwd / args.save_dir / spec.name / ".submitit" / "%j"
        slurm = slurm_executor(submitit_folder, _slurm_options(args), job_name=spec.name)
        outcomes = run_slurm(todo, announce, executor=slurm, wait=not args.no_wait)
        if args.no_wait:
            announce(f"submitted {len(todo)} job(s); rerun this command after they end.")
            return 0
    print(f"{PROG}: {summary_text(outcomes, skipped)}", flush=True)
    return 1 if any(not o.ok for o in outcomes) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``padam-sweep``; user mistakes print one line and exit with status 2."""
    try:
        return run_sweep(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; run the same command again to resume the sweep.",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
