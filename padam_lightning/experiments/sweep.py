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
failures are listed at the end and the exit status is 1. A run stopped by a signal (Ctrl-C,
SIGTERM, SIGHUP, SIGUSR1) is listed as interrupted, to be resumed by the same command; one that
wrote ``finished.json`` before the signal came counts as finished. Such a signal to a local
``padam-sweep`` is passed on once to its running runs (SIGHUP as SIGTERM), which save and stop
(a second Ctrl-C stops them at once); no further run starts, and it exits with 128 + the
signal's number once they have ended. On Linux a ``padam-sweep`` killed outright (SIGKILL)
leaves no run training: each gets SIGTERM. A run that resumes with other arguments
than its last attempt (epochs aside) gets a warning; run trials with other settings under their
own ``--save-dir``. Before any run starts (and in ``--dry-run``), ``padam-fit`` parses the
arguments of the first run to do with ``--print_config``: an option it refuses after ``--``
would fail every run.
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
#: The last line after a signal stopped the sweep.
INTERRUPTED = f"{PROG}: interrupted; run the same command again to resume the sweep."
#: Lines of a failed run's log shown in the final summary.
LOG_TAIL_LINES = 15
#: The SLURM resource flags: flag, the submitit parameter it sets (its ``dest``), type, default,
#: metavar and help. One table makes both the parser's options and the job's parameters.
SLURM_FLAGS: tuple[tuple[str, str, type, Any, str, str], ...] = (
    (
        "--timeout-min",
        "timeout_min",
        int,
        72 * 60,
        "MIN",
        "time limit per run in minutes (default 4320; a run stopped by it is requeued and resumes)",
    ),
    ("--slurm-partition", "slurm_partition", str, None, "NAME", "SLURM partition"),
    ("--slurm-gpus-per-run", "gpus_per_node", int, 1, "N", "GPUs per run (default 1)"),
    ("--slurm-cpus-per-run", "cpus_per_task", int, 8, "N", "CPUs per run (default 8)"),
    ("--slurm-mem-gb", "mem_gb", float, None, "GB", "memory per run"),
    (
        "--slurm-array-parallelism",
        "slurm_array_parallelism",
        int,
        None,
        "N",
        "at most N of the sweep's jobs running at once",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-sweep``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Expand a sweep file (a grid of configs and overrides, times seeds) into padam-fit "
            "runs and run them: finished runs are skipped, interrupted ones resume, so the same "
            "command restarts a sweep after a crash. Arguments after `--` go to every run; "
            "padam-fit parses the first run's arguments (--print_config) before any starts."
        ),
        epilog=(
            "executors: local (the default) runs on this "
            "machine: one run per GPU at once, each seeing only its GPU, or one run after "
            "another in this terminal without GPUs; --runs-per-gpu K runs K at once per GPU (K "
            "at once without GPUs). slurm submits one job per run (one GPU each) through "
            "submitit. Each run's output is appended to fit.log in its folder. Ctrl-C, SIGTERM, "
            "SIGHUP or SIGUSR1 stops the local runs (they save a checkpoint; Ctrl-C again: at "
            "once) and starts no more; the same command resumes them."
        ),
    )
    add = parser.add_argument
    add("sweep", help="sweep YAML file, e.g. configs/sweeps/optimizers.yaml")
    add("--dry-run", action="store_true", help="print each run's state and command; run nothing")
    add(
        "--save-dir",
        default=DEFAULT_LOG_DIR,
        help=f"root log folder; runs go to SAVE_DIR/<sweep>/<run> (default {DEFAULT_LOG_DIR})",
    )
    add(
        "--only",
        action="append",
        metavar="GLOB",
        help="run only runs whose name matches (fnmatch, repeatable), e.g. 'resnet18-*'",
    )
    add(
        "--fit-command",
        metavar="CMD",
        help="training command to call instead of padam-fit (split like a shell would)",
    )
    add_executor_arguments(parser)
    return parser


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that say where runs go: ``--executor``, local slots, SLURM resources.

    Check the parsed values with :func:`check_executor_arguments`.
    """
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where to run: local (this machine, the default) or slurm (a job per run)",
    )
    add = parser.add_argument_group("local").add_argument
    add(
        "--gpus",
        metavar="IDS",
        help="comma-separated GPU ids to use (default: all visible, from CUDA_VISIBLE_DEVICES "
        "or torch)",
    )
    add(
        "--runs-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="K runs share each GPU at once (small CIFAR networks leave a large GPU mostly "
        "idle); without GPUs, K runs at once on the CPUs (default 1)",
    )
    add(
        "--max-parallel",
        type=int,
        metavar="N",
        help="at most N runs at once (default: GPUs x K, or K without GPUs)",
    )
    add = parser.add_argument_group("slurm").add_argument
    for flag, dest, kind, default, metavar, text in SLURM_FLAGS:
        add(flag, dest=dest, type=kind, default=default, metavar=metavar, help=text)
    add(
        "--slurm-additional",
        action="append",
        metavar="KEY=VALUE",
        help="extra #SBATCH option, e.g. account=myproj (repeatable)",
    )
    add(
        "--no-wait",
        action="store_true",
        help="submit and exit (do not restart the sweep until its jobs have ended)",
    )


def check_executor_arguments(args: argparse.Namespace) -> None:
    """Refuse executor options that cannot work, before anything is read or run.

    Raises:
        UserError: One line naming the option.
    """
    if args.no_wait and args.executor != "slurm":
        raise UserError("--no-wait is for --executor slurm only.")
    for flag, value in (
        ("--max-parallel", args.max_parallel),
        ("--runs-per-gpu", args.runs_per_gpu),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1.")
    if args.executor == "slurm":
        if args.runs_per_gpu != 1:
            raise UserError(
                "--runs-per-gpu is for the local executor; SLURM gives each run its GPU."
            )
        slurm_parameters(args, job_name="check")
    elif args.gpus is not None:
        gpu_ids(args.gpus)


def slurm_parameters(args: argparse.Namespace, job_name: str) -> dict[str, Any]:
    """The submitit parameters of each run's SLURM job: one node, one task, the flags' resources.

    Raises:
        UserError: If a ``--slurm-additional`` item is not ``KEY=VALUE``.
    """
    parameters = {"name": job_name, "nodes": 1, "tasks_per_node": 1}
    parameters.update({dest: getattr(args, dest) for _, dest, *_ in SLURM_FLAGS})
    additional = {}
    for item in args.slurm_additional or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-additional {item}: expected KEY=VALUE, e.g. account=proj")
        additional[key] = value
    parameters["slurm_additional_parameters"] = additional
    return {key: value for key, value in parameters.items() if value not in (None, "", {})}


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


def plan_jobs(
    spec: SweepSpec,
    *,
    save_dir: str,
    cwd: Path,
    fit_command: Sequence[str],
    extra_args: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[FitJob]:
    """The sweep's runs (filtered by ``only`` globs) as jobs, in grid order.

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
    configs = dict.fromkeys(c for run in runs for c in run.configs)
    missing = [c for c in configs if not (cwd / c).is_file()]  # an absolute c replaces cwd
    if missing:
        raise UserError(
            f"config file(s) not found: {', '.join(missing)} (relative paths are read from "
            f"{cwd}; run padam-sweep from the project root)."
        )
    jobs = []
    for run in runs:
        arguments = run.fit_arguments(
            sweep_name=spec.name, save_dir=save_dir, extra_args=extra_args
        )
        jobs.append(
            FitJob(
                name=run.name,
                command=[*fit_command, *arguments],
                run_dir=str(cwd / save_dir / spec.name / run.name),
                cwd=str(cwd),
                identity=run.identity(spec.name, arguments),
            )
        )
    return jobs


def describe(spec: SweepSpec, states: Sequence[RunState], save_dir: str) -> str:
    """One header line: the sweep, its shape and what is left to do."""
    shape = " x ".join(
        [f"{axis} {len(choices)}" for axis, choices in spec.axes.items()]
        + [f"seeds {len(spec.seeds)}"]
    )
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


def check_fit_arguments(job: FitJob, timeout_s: float = 600.0) -> None:
    """Let ``padam-fit`` parse one run's arguments (``--print_config``) before any run starts.

    The arguments after ``--`` go to every run, so an option ``padam-fit`` refuses (a typo)
    would make each of them fail after its start-up; one parse (a few seconds: ``padam-fit``
    imports Lightning) finds it first. It also checks this run's configs and sweep overrides.

    Args:
        job: The run to check (its command, without ``--ckpt_path``, runs in its ``cwd``).
        timeout_s: How long the parse may take.

    Raises:
        UserError: If the command cannot be started, or refuses the arguments (the message
            is the last line ``padam-fit`` printed, e.g. its ``unknown option ...`` line).
    """
    command = [*job.command, "--print_config"]
    try:
        result = subprocess.run(
            command, cwd=job.cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except OSError as err:
        raise UserError(
            f"cannot run the training command {shlex.join(job.command[:1])}: "
            f"{err.strerror or err}; check --fit-command or the installation."
        ) from err
    except subprocess.TimeoutExpired as err:
        raise UserError(
            f"checking the arguments of {job.name} with --print_config took over {timeout_s:.0f} "
            f"s: {shlex.join(command)}"
        ) from err
    if result.returncode == 0:
        return
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {result.returncode}"
    raise UserError(
        f"padam-fit refuses the arguments of run {job.name} (parsed with --print_config before "
        f"any run starts): {last.removeprefix('padam-fit: error: ')}"
    )


def _index_list(text: str) -> list[int] | None:
    """``"0, 1"`` -> ``[0, 1]``; ``None`` unless every entry is an index and none repeats."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if all(e.isdigit() for e in entries) and len(set(map(int, entries))) == len(entries):
        return [int(entry) for entry in entries]
    return None


def _cuda_device_count() -> int:
    """How many GPUs CUDA shows this process (0 without CUDA or a CUDA build of torch)."""
    import torch  # imported here: a dry run or a CPU sweep does not pay for it

    return torch.cuda.device_count()


def visible_gpus() -> tuple[list[int], str]:
    """The GPU ids (as nvidia-smi numbers them) this process may use, and where that comes from.

    ``CUDA_VISIBLE_DEVICES`` when set (CUDA stops at the first index the machine lacks, so only
    the ids before it are usable), else every GPU torch sees.

    Raises:
        UserError: If ``CUDA_VISIBLE_DEVICES`` names GPUs other than by index (UUIDs, MIG).
    """
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        count = _cuda_device_count()
        return list(range(count)), f"torch sees {count} GPU(s)"
    listed = [] if text.strip() in ("", "-1") else _index_list(text)  # "" and -1 hide them all
    if listed is None:
        raise UserError(
            f"CUDA_VISIBLE_DEVICES={text} does not list GPUs by index; pass "
            "--gpus 0,1,... (indices as nvidia-smi numbers them) with CUDA_VISIBLE_DEVICES unset."
        )
    count = _cuda_device_count() if listed else 0
    return listed[:count], f"CUDA_VISIBLE_DEVICES={text}, of which torch sees {count} GPU(s)"


def gpu_ids(gpus: str | None) -> list[int]:
    """GPU ids to run on: ``--gpus`` (``"0,1"``), else every visible one (:func:`visible_gpus`).

    Each run gets one id as its ``CUDA_VISIBLE_DEVICES``: an id that does not exist here would
    leave the run without a GPU, training on the CPU, so such ids are refused.

    Raises:
        UserError: If ``--gpus`` is not a list of distinct indices, or names a GPU that is not
            visible; if ``CUDA_VISIBLE_DEVICES`` lists a GPU this machine lacks.
    """
    visible, source = visible_gpus()
    if gpus is None:
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        if listed is not None and len(visible) < len(_index_list(listed) or []):
            raise UserError(
                f"CUDA_VISIBLE_DEVICES={listed} lists GPUs this machine does not have ({source}); "
                "list only GPUs that nvidia-smi shows, or unset it."
            )
        return visible
    wanted = _index_list(gpus)
    if not wanted:
        raise UserError(f"--gpus {gpus}: expected distinct non-negative GPU indices like 0,1")
    missing = [g for g in wanted if g not in visible]
    if missing:
        shown = ", ".join(map(str, visible)) if visible else "none"
        raise UserError(
            f"--gpus {gpus}: no GPU {', '.join(map(str, missing))} here ({source}; usable ids: "
            f"{shown}); runs on it would train on the CPU. Without GPUs, leave out --gpus."
        )
    return wanted


def summary_text(outcomes: Sequence[Outcome], skipped: int, unstarted: int = 0) -> str:
    """What happened: counts, each interrupted run, each failed run with the end of its log."""
    failed = [o for o in outcomes if not o.ok and not o.interrupted]
    interrupted = [o for o in outcomes if o.interrupted]
    finished = len(outcomes) - len(failed) - len(interrupted)
    counts = (
        f"{finished} run(s) finished, {skipped} skipped (already finished), {len(failed)} failed"
    )
    counts += f", {len(interrupted)} interrupted" if interrupted else ""
    lines = [counts + (f", {unstarted} not started" if unstarted else "")]
    lines += [f"INTERRUPTED {outcome.name}: {outcome.reason}" for outcome in interrupted]
    for outcome in failed:
        lines.append(f"FAILED {outcome.name}: {outcome.reason}")
        if outcome.log_path.is_file():
            tail = outcome.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            lines.append(f"  last lines of {outcome.log_path}:")
            lines.extend(f"    {line}" for line in tail)
    return "\n".join(lines)


def check_options(args: argparse.Namespace) -> None:
    """Refuse option combinations that cannot work, before anything is read or run."""
    check_executor_arguments(args)
    if args.fit_command and not shlex.split(args.fit_command):
        raise UserError("--fit-command is empty; give the training command, e.g. padam-fit.")


def check_place(args: argparse.Namespace, spec: SweepSpec) -> None:
    """Check where the runs would go, in dry runs too: one line now, not a failure of each run.

    Raises:
        UserError: If a file is in the way of the run folders, ``--gpus`` names a GPU that is
            not here (the run would train on the CPU), or a SLURM flag is malformed.
    """
    check_output_folder(Path(args.save_dir), "--save-dir")
    check_output_folder(Path(args.save_dir) / spec.name, "the sweep's folder")


def local_slots(args: argparse.Namespace) -> list[int | None]:
    """The local executor's slots: each GPU ``--runs-per-gpu`` times, or CPU slots without."""
    # Round-robin over the GPUs, so the first runs spread over all of them.
    slots: list[int | None] = [g for _ in range(args.runs_per_gpu) for g in gpu_ids(args.gpus)]
    slots = slots or [None] * (args.max_parallel or args.runs_per_gpu)
    return slots[: args.max_parallel or len(slots)]


def warn_of_changed_settings(jobs: Sequence[FitJob], states: Sequence[RunState]) -> None:
    """Warn of each run that resumes with other settings than its last attempt had."""
    for job, state in zip(jobs, states, strict=True):
        if state is RunState.RESUME and job.changed_since_last_attempt():
            print(
                f"{PROG}: warning: {job.name} resumes with other settings than it started "
                f"with (its last attempt's are in {Path(job.run_dir) / RUN_FILE}); delete its "
                "folder to start it over with the new ones.",
                file=sys.stderr,
            )


def run_sweep(argv: Sequence[str]) -> int:
    """Parse ``argv``, plan the sweep, run it (or print it); return the exit status."""
    own_args, extra_args = split_passthrough(argv)
    args = build_parser().parse_args(own_args)
    check_options(args)
    spec = load_sweep(args.sweep)
    check_place(args, spec)
    jobs = plan_jobs(
        spec,
        save_dir=args.save_dir,
        cwd=Path.cwd(),
        fit_command=shlex.split(args.fit_command or "") or default_fit_command(),
        extra_args=extra_args,
        only=args.only,
    )
    states = [job.state() for job in jobs]
    print(f"{PROG}: {describe(spec, states, args.save_dir)}", flush=True)
    warn_of_changed_settings(jobs, states)
    todo = [job for job, state in zip(jobs, states, strict=True) if state is not RunState.DONE]
    if todo:
        check_fit_arguments(todo[0])  # a bad option after `--` would fail every run
    if args.dry_run:
        print(dry_run_text(jobs, states))
        return 0
    if not todo:
        print(f"{PROG}: nothing to do; delete a run's folder to run it again.")
        return 0
    received: list[int] = []  # the signals that stopped a local sweep (none on SLURM)
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
    _announce(summary_text(outcomes, len(jobs) - len(todo), len(todo) - len(outcomes)))
    if received:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + received[0]
    return 1 if any(not o.ok for o in outcomes) else 0


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
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
