"""``padam-sweep``: run a sweep file's grid of ``padam-fit`` runs, restartably (docs/sweeps.md).

The executor options and helpers here are shared with ``padam-search``.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from padam_lightning.cli.run_layout import DEFAULT_LOG_DIR
from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import RUN_FILE, check_output_folder
from padam_lightning.experiments.sweep_jobs import (
    STATUSES,
    FitJob,
    Outcome,
    RunState,
    run_local,
    run_slurm,
    slurm_executor,
    stop_signals_passed_on,
)
from padam_lightning.experiments.sweep_spec import SweepSpec, expand, load_sweep

PROG = "padam-sweep"
EXECUTORS = ("local", "slurm")
INTERRUPTED = f"{PROG}: interrupted; run the same command again to resume the sweep."
#: Lines of a failed run's log shown in the final summary.
LOG_TAIL_LINES = 15
#: Executor options by group: flag, dest, type, default, metavar, help. A SLURM option's dest
#: is the submitit parameter it sets in each run's job.
EXECUTOR_FLAGS: dict[str, tuple[tuple[str, str, type, Any, str, str], ...]] = {
    "local": (
        ("--gpus", "gpus", str, None, "IDS", "GPU ids to use, e.g. 0,1 (default: all visible)"),
        ("--runs-per-gpu", "runs_per_gpu", int, 1, "K", "K runs at once per GPU, or on the CPUs"),
        ("--max-parallel", "max_parallel", int, None, "N", "at most N runs at once"),
    ),
    "slurm": (
        ("--timeout-min", "timeout_min", int, 72 * 60, "MIN", "time limit, minutes (default 4320)"),
        ("--slurm-partition", "slurm_partition", str, None, "NAME", "SLURM partition"),
        ("--slurm-gpus-per-run", "gpus_per_node", int, 1, "N", "GPUs per run (default 1)"),
        ("--slurm-cpus-per-run", "cpus_per_task", int, 8, "N", "CPUs per run (default 8)"),
        ("--slurm-mem-gb", "mem_gb", float, None, "GB", "memory per run"),
        ("--slurm-array-parallelism", "slurm_array_parallelism", int, None, "N", "N jobs at once"),
    ),
}
EPILOG = (
    "local runs one run per GPU (each sees only its GPU; --runs-per-gpu K: K per GPU, or K at "
    "once without GPUs); slurm one job per run, requeued at its time limit. Output goes to each "
    "run's fit.log. Ctrl-C, SIGTERM, SIGHUP or SIGUSR1 stops the local runs (they save; Ctrl-C "
    "again: at once); the same command resumes them."
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-sweep``."""
    description = (
        "Run a sweep file's grid of padam-fit runs: finished runs are skipped, interrupted ones "
        "resume, so the same command restarts a sweep. Arguments after `--` go to every run."
    )
    parser = argparse.ArgumentParser(prog=PROG, description=description, epilog=EPILOG)
    add = parser.add_argument
    add("sweep", help="sweep YAML file, e.g. configs/sweeps/optimizers.yaml")
    add("--dry-run", action="store_true", help="print each run's state and command; run nothing")
    where = "runs go to SAVE_DIR/<sweep>/<run> (default %(default)s)"
    add("--save-dir", default=DEFAULT_LOG_DIR, help=where)
    add("--only", action="append", metavar="GLOB", help="only runs matching it (repeatable)")
    add("--fit-command", metavar="CMD", help="training command instead of padam-fit")
    add_executor_arguments(parser)
    return parser


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that say where runs go; check them with :func:`check_executor_arguments`."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local", help="default: local")
    for name, flags in EXECUTOR_FLAGS.items():
        add = parser.add_argument_group(name).add_argument
        for flag, dest, kind, default, meta, text in flags:
            add(flag, dest=dest, type=kind, default=default, metavar=meta, help=text)
    extra = "extra #SBATCH option (repeatable), e.g. account=proj"
    add("--slurm-additional", action="append", metavar="KEY=VALUE", help=extra)  # slurm group
    add("--no-wait", action="store_true", help="submit the jobs and exit")


def check_executor_arguments(args: argparse.Namespace) -> None:
    """Refuse executor options that cannot work (UserError naming the option)."""
    if args.no_wait and args.executor != "slurm":
        raise UserError("--no-wait is for --executor slurm only.")
    counts = {"--max-parallel": args.max_parallel, "--runs-per-gpu": args.runs_per_gpu}
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1.")
    if args.executor == "slurm" and args.runs_per_gpu != 1:
        raise UserError("--runs-per-gpu is for the local executor; SLURM gives each run its GPU.")
    if args.executor == "slurm":
        slurm_parameters(args, job_name="check")
    elif args.gpus is not None:
        gpu_ids(args.gpus)


def slurm_parameters(args: argparse.Namespace, job_name: str) -> dict[str, Any]:
    """Each SLURM job's submitit parameters; UserError for a ``--slurm-additional`` not K=V."""
    parameters = {dest: getattr(args, dest) for _, dest, *_ in EXECUTOR_FLAGS["slurm"]}
    additional = {}
    for item in args.slurm_additional or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-additional {item}: expected KEY=VALUE, e.g. account=proj")
        additional[key] = value
    parameters |= {"name": job_name, "nodes": 1, "tasks_per_node": 1}
    parameters["slurm_additional_parameters"] = additional
    return {key: value for key, value in parameters.items() if value not in (None, "", {})}


def _indices(text: str) -> list[int] | None:
    """``"0, 1"`` -> ``[0, 1]``; ``None`` unless every entry is an index and none repeats."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    ok = all(e.isdigit() for e in entries) and len(set(map(int, entries))) == len(entries)
    return [int(entry) for entry in entries] if ok else None


def gpu_ids(gpus: str | None) -> list[int]:
    """The GPU ids (nvidia-smi's) to run on: ``--gpus`` (``"0,1"``), else every visible one.

    Raises:
        UserError: For ids that are not distinct indices or not here (a run given one would
            train on the CPU), in ``--gpus`` or ``CUDA_VISIBLE_DEVICES``.
    """
    import torch  # here: a dry run or a CPU sweep does not pay for it

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip() != "-1" and _indices(listed) is None:
        raise UserError(
            f"CUDA_VISIBLE_DEVICES={listed} does not list GPUs by index; pass --gpus 0,1,... "
            "(indices as nvidia-smi numbers them) with CUDA_VISIBLE_DEVICES unset."
        )
    count = torch.cuda.device_count()
    source = f"torch sees {count} GPU(s)"
    ids = list(range(count))
    if listed is not None:  # "" and -1 hide every GPU
        ids, source = _indices(listed) or [], f"CUDA_VISIBLE_DEVICES={listed}, of which {source}"
    visible = ids[:count]  # CUDA stops at the first listed id the machine lacks
    if gpus is None and len(visible) < len(ids):
        raise UserError(
            f"CUDA_VISIBLE_DEVICES={listed} lists GPUs this machine does not have ({source}); "
            "list only GPUs that nvidia-smi shows, or unset it."
        )
    if gpus is None:
        return visible
    wanted = _indices(gpus)
    if not wanted:
        raise UserError(f"--gpus {gpus}: expected distinct non-negative GPU indices like 0,1")
    missing = ", ".join(str(g) for g in wanted if g not in visible)
    if missing:
        raise UserError(
            f"--gpus {gpus}: no GPU {missing} here ({source}; usable ids: "
            f"{', '.join(map(str, visible)) or 'none'}); runs on it would train on the CPU. "
            "Without GPUs, leave out --gpus."
        )
    return wanted


def local_slots(args: argparse.Namespace) -> list[int | None]:
    """The local executor's slots: each GPU ``--runs-per-gpu`` times, or CPU slots (``None``)."""
    # Round-robin over the GPUs, so the first runs spread over all of them.
    slots: list[int | None] = [g for _ in range(args.runs_per_gpu) for g in gpu_ids(args.gpus)]
    slots = slots or [None] * (args.max_parallel or args.runs_per_gpu)
    return slots[: args.max_parallel or len(slots)]


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` at the first ``--``: the command's own arguments, and those for every run."""
    argv = list(argv)
    index = argv.index("--") if "--" in argv else len(argv)
    return argv[:index], argv[index + 1 :]


def default_fit_command() -> list[str]:
    """``padam-fit`` by name when that is this installation's, else by its full path."""
    installed = Path(sys.executable).parent / "padam-fit"
    on_path = shutil.which("padam-fit")
    if not installed.is_file() or (on_path and Path(on_path).resolve() == installed.resolve()):
        return ["padam-fit"]
    return [str(installed)]


def plan_jobs(
    spec: SweepSpec, args: argparse.Namespace, extra_args: Sequence[str], cwd: Path
) -> list[FitJob]:
    """The runs ``--only`` picks as jobs; UserError for no run, a missing config, a bad folder."""
    runs = expand(spec)
    if args.only:
        runs = [run for run in runs if any(fnmatch.fnmatchcase(run.name, p) for p in args.only)]
        if not runs:
            raise UserError(
                f"--only {' '.join(args.only)} matches none of the sweep's runs; run with "
                "--dry-run to list their names."
            )
    check_output_folder(Path(args.save_dir), "--save-dir")
    check_output_folder(Path(args.save_dir) / spec.name, "the sweep's folder")
    configs = dict.fromkeys(c for run in runs for c in run.configs)
    missing = [c for c in configs if not (cwd / c).is_file()]  # an absolute c replaces cwd
    if missing:
        raise UserError(
            f"config file(s) not found: {', '.join(missing)} (relative paths are read from "
            f"{cwd}; run padam-sweep from the project root)."
        )
    fit_command = shlex.split(args.fit_command or "") or default_fit_command()
    jobs = []
    for run in runs:
        arguments = run.fit_arguments(
            sweep_name=spec.name, save_dir=args.save_dir, extra_args=extra_args
        )
        run_dir = str(cwd / args.save_dir / spec.name / run.name)
        identity = run.identity(spec.name, arguments)
        jobs.append(FitJob(run.name, [*fit_command, *arguments], run_dir, str(cwd), identity))
    return jobs


def check_fit_arguments(job: FitJob) -> None:
    """UserError with padam-fit's last line if it refuses a run's arguments (``--print_config``)."""
    command = [*job.command, "--print_config"]
    try:
        result = subprocess.run(command, cwd=job.cwd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise UserError(
            f"cannot run the training command {shlex.join(job.command[:1])}: "
            f"{err.strerror or err}; check --fit-command or the installation."
        ) from err
    if result.returncode != 0:
        lines = (result.stderr + result.stdout).strip().splitlines()
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise UserError(
            f"padam-fit refuses the arguments of run {job.name} (parsed with --print_config "
            f"before any run starts): {last.removeprefix('padam-fit: error: ')}"
        )


def describe(spec: SweepSpec, states: Sequence[RunState], save_dir: str) -> str:
    """One header line: the sweep, its shape and what is left to do."""
    shape = " x ".join(f"{a} {len(c)}" for a, c in [*spec.axes.items(), ("seeds", spec.seeds)])
    return (
        f"sweep {spec.name} ({spec.source}): {len(states)} runs ({shape}) in "
        f"{Path(save_dir) / spec.name}: {states.count(RunState.NEW)} to start, "
        f"{states.count(RunState.RESUME)} to resume, {states.count(RunState.DONE)} finished"
    )


def dry_run_text(jobs: Sequence[FitJob], states: Sequence[RunState]) -> str:
    """Each run's name and state as a comment, then its command (a runnable shell script)."""
    lines = []
    for job, state in zip(jobs, states, strict=True):
        if state is RunState.DONE:
            lines.append(f"# {job.name}: finished (skipped)")
        else:
            lines += [f"# {job.name}: {state.value}", shlex.join(job.argv(state))]
    return "\n".join(lines)


def summary_text(outcomes: Sequence[Outcome], skipped: int, unstarted: int = 0) -> str:
    """What happened: counts, each interrupted run, each failed run with the end of its log."""
    finished, failed, interrupted = ([o for o in outcomes if o.status == s] for s in STATUSES)
    counts = f"{len(finished)} run(s) finished, {skipped} skipped (already finished), "
    counts += f"{len(failed)} failed" + (f", {len(interrupted)} interrupted" if interrupted else "")
    lines = [counts + (f", {unstarted} not started" if unstarted else "")]
    lines += [f"INTERRUPTED {outcome.name}: {outcome.reason}" for outcome in interrupted]
    for outcome in failed:
        lines.append(f"FAILED {outcome.name}: {outcome.reason}")
        if outcome.log_path.is_file():
            tail = outcome.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            lines.append(f"  last lines of {outcome.log_path}:")
            lines.extend(f"    {line}" for line in tail)
    return "\n".join(lines)


def run_sweep(argv: Sequence[str]) -> int:
    """Parse ``argv``, plan the sweep, run it (or print it); return the exit status."""
    own_args, extra_args = split_passthrough(argv)
    args = build_parser().parse_args(own_args)
    check_executor_arguments(args)
    if args.fit_command is not None and not shlex.split(args.fit_command):
        raise UserError("--fit-command is empty; give the training command, e.g. padam-fit.")
    spec = load_sweep(args.sweep)
    jobs = plan_jobs(spec, args, extra_args, Path.cwd())
    states = [job.state() for job in jobs]
    _announce(describe(spec, states, args.save_dir))
    todo = [job for job, state in zip(jobs, states, strict=True) if state is not RunState.DONE]
    for job, state in zip(jobs, states, strict=True):
        if state is RunState.RESUME and job.changed_since_last_attempt():
            print(
                f"{PROG}: warning: {job.name} resumes with other settings than it started with "
                f"(its last attempt's are in {Path(job.run_dir) / RUN_FILE}); delete its folder "
                "to start it over with the new ones.",
                file=sys.stderr,
            )
    if todo:
        check_fit_arguments(todo[0])
    if args.dry_run:
        print(dry_run_text(jobs, states))
    elif not todo:
        _announce("nothing to do; delete a run's folder to run it again.")
    else:
        return _run(args, spec, todo, skipped=len(jobs) - len(todo))
    return 0


def _run(args: argparse.Namespace, spec: SweepSpec, todo: list[FitJob], skipped: int) -> int:
    """Run the jobs on the chosen executor; the exit status (128 + N after signal N)."""
    received: list[int] = []
    if args.executor == "slurm":
        folder = Path.cwd() / args.save_dir / spec.name / ".submitit" / "%j"
        executor = slurm_executor(folder, slurm_parameters(args, job_name=spec.name))
        outcomes = run_slurm(todo, _announce, executor=executor, wait=not args.no_wait)
        if args.no_wait:
            _announce(f"submitted {len(todo)} job(s); rerun this command after they end.")
            return 0
    else:
        with stop_signals_passed_on(_announce) as received:
            outcomes = run_local(todo, _announce, local_slots(args), received)
    _announce(summary_text(outcomes, skipped, len(todo) - len(outcomes)))
    if received:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + received[0]
    return 1 if any(o.status != "finished" for o in outcomes) else 0


def _announce(line: str) -> None:
    print(f"{PROG}: {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``padam-sweep``; user mistakes print one line and exit with status 2."""
    try:
        return run_sweep(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into e.g. `head`: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
