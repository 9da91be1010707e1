"""Running the ``padam-fit`` commands of a sweep: one job per run, through submitit or in turn.

A :class:`FitJob` is the unit of work every executor runs: it decides at start time whether the
run is new or resumes (so a job requeued by SLURM after a timeout continues from its last
checkpoint), runs ``padam-fit`` in a subprocess with its output appended to ``fit.log`` in the run
folder, and raises :class:`RunFailedError` when the fit fails or stops before its last epoch.

Executors:

- :func:`run_in_turn`: one run after another in subprocesses of this process, output shown live.
- :func:`run_submitit_local`: submitit's ``LocalExecutor``, several runs at once, one per slot (a
  GPU id, made visible to its run alone, or a CPU slot).
- :func:`run_slurm`: submitit's SLURM executor, one job per run in a job array.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import submitit

from padam_lightning.errors import UserError
from padam_lightning.run_layout import FINISHED_FILE, LAST_CHECKPOINT_PATH

LOG_FILE = "fit.log"
#: Start of the line ``fit.log`` gets before each attempt: ``### padam-sweep <time>: <command>``.
LOG_HEADER = "### padam-sweep"
#: Flags a resumed attempt may change: resuming itself, and training on for more epochs.
_RESUME_FLAGS = ("--ckpt_path", "--trainer.max_epochs")


def _comparable(arguments: list[str]) -> list[str]:
    """``arguments`` without the flags (and values) that :data:`_RESUME_FLAGS` name."""
    kept: list[str] = []
    skip = False
    for arg in arguments:
        if skip:
            skip = False
        elif arg in _RESUME_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in _RESUME_FLAGS)):
            kept.append(arg)
    return kept


class RunState(Enum):
    """Where a run stands, read from its folder."""

    NEW = "new"
    RESUME = "resume"
    DONE = "done"


def run_state(run_dir: Path, max_epochs: int | None = None) -> RunState:
    """Where the run in ``run_dir`` stands.

    ``DONE`` with ``finished.json``, ``RESUME`` with ``checkpoints/last.ckpt`` only, else ``NEW``.
    A run that finished with fewer epochs than ``max_epochs`` (a quick check with
    ``-- --trainer.max_epochs 3`` before the real sweep) is not done: it resumes and trains on. So
    is a run whose ``finished.json`` cannot be read (damaged or truncated): resuming a finished run
    from its last checkpoint costs no training and writes the file again.
    """
    finished = run_dir / FINISHED_FILE
    checkpoint = run_dir / LAST_CHECKPOINT_PATH
    if finished.is_file():
        summary = _read_finished(finished)
        if summary is not None:
            finished_epochs = summary.get("max_epochs")
            if (
                max_epochs is None
                or not isinstance(finished_epochs, int)
                or finished_epochs >= max_epochs
            ):
                return RunState.DONE
    if checkpoint.is_file():
        return RunState.RESUME
    return RunState.NEW


def _read_finished(path: Path) -> dict[str, Any] | None:
    """The summary in a ``finished.json``; ``None`` when it is unreadable or not a JSON object."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: invalid JSON or UTF-8
        return None
    return summary if isinstance(summary, dict) else None


class RunFailedError(RuntimeError):
    """A sweep run whose ``padam-fit`` exited with an error or stopped before its last epoch."""


@dataclass
class FitJob(submitit.helpers.Checkpointable):
    """One sweep run: a picklable callable that runs ``padam-fit`` for it.

    When submitit stops the job before its time limit runs out (SLURM preemption or timeout,
    the local executor's timeout), :meth:`checkpoint` stops ``padam-fit`` and submitit requeues
    the job, which then resumes from the run's ``last.ckpt``.

    Attributes:
        name: The run's name.
        command: ``padam-fit`` and its arguments, without ``--ckpt_path`` (added when resuming).
        run_dir: The run's log folder (``save_dir/sweep/run``).
        cwd: Directory to run in (relative config paths are resolved from it).
        echo: Also copy the output to this process's stdout (runs in turn).
        env: Extra environment variables for ``padam-fit``.
        max_epochs: The epochs the run is configured for, when known (see :func:`run_state`).
    """

    name: str
    command: list[str]
    run_dir: str
    cwd: str
    echo: bool = False
    env: dict[str, str] = field(default_factory=dict)
    max_epochs: int | None = None
    _process: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def log_path(self) -> Path:
        """The file that collects the output of every attempt of this run."""
        return Path(self.run_dir) / LOG_FILE

    def state(self) -> RunState:
        """The run's state now, read from its folder."""
        return run_state(Path(self.run_dir), self.max_epochs)

    def previous_arguments(self) -> list[str] | None:
        """The ``fit`` arguments of this run's last attempt, from ``fit.log`` (``None``: none)."""
        if not self.log_path.is_file():
            return None
        headers = [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if line.startswith(LOG_HEADER)
        ]
        if not headers:
            return None
        try:
            argv = shlex.split(headers[-1].split(": ", 1)[1])
        except (IndexError, ValueError):
            return None
        return argv[argv.index("fit") :] if "fit" in argv else None

    def changed_since_last_attempt(self) -> bool:
        """Whether this run resumes with other arguments than it ran with (epochs aside)."""
        previous = self.previous_arguments()
        if previous is None or "fit" not in self.command:
            return False
        current = self.command[self.command.index("fit") :]
        return _comparable(previous) != _comparable(current)

    def argv(self) -> list[str]:
        """The command to run now: resumes from ``last.ckpt`` when the run was interrupted."""
        if self.state() is RunState.RESUME:
            return [*self.command, "--ckpt_path", "last"]
        return list(self.command)

    def __call__(self) -> str:
        """Run the fit; return the run name, or raise :class:`RunFailedError`."""
        run_dir = Path(self.run_dir)
        if self.state() is RunState.DONE:
            return self.name
        argv = self.argv()
        run_dir.mkdir(parents=True, exist_ok=True)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        with open(self.log_path, "ab") as log:
            log.write(f"{LOG_HEADER} {started}: {shlex.join(argv)}\n".encode())
            log.flush()
            returncode = self._run_logged(argv, log)
        if returncode != 0:
            raise RunFailedError(f"padam-fit exited with status {returncode} (see {self.log_path})")
        if self.state() is not RunState.DONE:
            raise RunFailedError(
                f"padam-fit stopped before the last epoch (no {FINISHED_FILE}; see "
                f"{self.log_path}); rerun the sweep to resume it"
            )
        return self.name

    def _run_logged(self, argv: list[str], log: BinaryIO) -> int:
        """Run ``argv`` with stdout and stderr into ``log`` (and this stdout when ``echo``)."""
        with subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if self.echo else log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, **self.env},
        ) as process:
            self._process = process
            try:
                if process.stdout is not None:
                    out = sys.stdout.buffer
                    # read1: copy output as it arrives (progress lines), not in 64 KiB blocks.
                    while chunk := process.stdout.read1(65536):  # type: ignore[attr-defined]
                        log.write(chunk)
                        out.write(chunk)
                        out.flush()
                return process.wait()
            finally:
                self._process = None

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stop ``padam-fit`` (it resumes from ``last.ckpt``) and requeue this job."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_process"] = None
        return state


@dataclass
class Outcome:
    """How a submitted run ended."""

    name: str
    ok: bool
    reason: str = ""
    log_path: Path | None = None
    seconds: float = 0.0


def _failure_reason(error: BaseException) -> str:
    """The informative line of an error; submitit wraps job errors in a traceback and notes."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    marker = f"{RunFailedError.__name__}: "
    for line in reversed(lines):
        if marker in line:
            return line.split(marker, 1)[1]
    for line in reversed(lines):
        # The exception line of a traceback: "module.SomeError: message".
        head = line.split(": ", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            return line
    return lines[0] if lines else type(error).__name__


Announce = Callable[[str], None]


def run_in_turn(jobs: Sequence[FitJob], announce: Announce) -> list[Outcome]:
    """Run the jobs one after another in this process's subprocesses; failures do not stop it."""
    outcomes = []
    for index, job in enumerate(jobs, start=1):
        announce(f"[{index}/{len(jobs)}] {job.name}: {shlex.join(job.argv())}")
        start = time.monotonic()
        try:
            job()
            outcome = Outcome(job.name, True, log_path=job.log_path)
        except (RunFailedError, OSError) as err:
            outcome = Outcome(job.name, False, _failure_reason(err), job.log_path)
        outcome.seconds = time.monotonic() - start
        announce(_outcome_line(index, len(jobs), outcome))
        outcomes.append(outcome)
    return outcomes


def _outcome_line(index: int, count: int, outcome: Outcome) -> str:
    took = _duration(outcome.seconds)
    if outcome.ok:
        return f"[{index}/{count}] {outcome.name}: finished in {took}"
    return f"[{index}/{count}] {outcome.name}: FAILED after {took}: {outcome.reason}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _job_outcome(job: FitJob, submitted: submitit.Job[Any], seconds: float) -> Outcome:
    error: BaseException | None
    try:
        error = submitted.exception()
    except Exception as err:  # submitit raises when a job died without writing a result
        error = err
    if error is None:
        return Outcome(job.name, True, log_path=job.log_path, seconds=seconds)
    return Outcome(job.name, False, _failure_reason(error), job.log_path, seconds)


def run_submitit_local(
    jobs: Sequence[FitJob],
    announce: Announce,
    *,
    folder: Path,
    slots: Sequence[int | None],
    timeout_min: int,
    poll_s: float = 1.0,
) -> list[Outcome]:
    """Run the jobs with submitit's ``LocalExecutor``, at most one per slot at a time.

    Args:
        jobs: The runs.
        announce: Prints a progress line.
        folder: submitit's folder for its own logs and pickles.
        slots: One entry per run that may run at once: a GPU id (the run sees only that GPU) or
            ``None`` for a CPU slot.
        timeout_min: Wall-clock limit per run.
        poll_s: Seconds between checks for finished runs.

    Returns:
        One outcome per job, in the order they finished.
    """
    executor = submitit.LocalExecutor(folder=folder)
    pending = deque(enumerate(jobs, start=1))
    free = list(slots)
    running: list[tuple[int, FitJob, submitit.Job[Any], int | None, float]] = []
    outcomes: list[Outcome] = []
    try:
        while pending or running:
            while pending and free:
                index, job = pending.popleft()
                slot = free.pop(0)
                if slot is None:
                    executor.update_parameters(timeout_min=timeout_min, gpus_per_node=0)
                else:
                    executor.update_parameters(
                        timeout_min=timeout_min, gpus_per_node=1, visible_gpus=[slot]
                    )
                submitted = executor.submit(job)
                where = "CPU" if slot is None else f"GPU {slot}"
                announce(
                    f"[{index}/{len(jobs)}] {job.name}: started on {where} "
                    f"(submitit job {submitted.job_id}, log {job.log_path})"
                )
                running.append((index, job, submitted, slot, time.monotonic()))
            still_running = []
            for entry in running:
                index, job, submitted, slot, start = entry
                if submitted.done():
                    outcome = _job_outcome(job, submitted, time.monotonic() - start)
                    announce(_outcome_line(index, len(jobs), outcome))
                    outcomes.append(outcome)
                    free.append(slot)
                else:
                    still_running.append(entry)
            running = still_running
            if running and (not pending or not free):
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for _, job, submitted, _, _ in running:
            announce(f"cancelling {job.name} (submitit job {submitted.job_id})")
            submitted.cancel(check=False)
        raise
    return outcomes


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each run's SLURM job."""

    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_run: int = 1
    cpus_per_run: int = 8
    mem_gb: float | None = None
    array_parallelism: int | None = None
    additional: tuple[tuple[str, str], ...] = ()


def slurm_executor(folder: Path, options: SlurmOptions, job_name: str) -> submitit.AutoExecutor:
    """A submitit executor for SLURM with one GPU run per job (no submission happens here).

    Raises:
        UserError: If this machine is not a SLURM login node (no ``srun``).
    """
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:
        raise UserError(
            f"--executor slurm: {err} Use --executor local or submitit-local off a cluster."
        ) from err
    parameters: dict[str, Any] = {
        "name": job_name,
        "timeout_min": options.timeout_min,
        "gpus_per_node": options.gpus_per_run,
        "tasks_per_node": 1,
        "nodes": 1,
        "cpus_per_task": options.cpus_per_run,
    }
    if options.mem_gb is not None:
        parameters["mem_gb"] = options.mem_gb
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.array_parallelism:
        parameters["slurm_array_parallelism"] = options.array_parallelism
    if options.additional:
        parameters["slurm_additional_parameters"] = dict(options.additional)
    executor.update_parameters(**parameters)
    return executor


def run_slurm(
    jobs: Sequence[FitJob],
    announce: Announce,
    *,
    executor: submitit.AutoExecutor,
    wait: bool = True,
    poll_s: float = 60.0,
) -> list[Outcome]:
    """Submit every job as one SLURM job array; with ``wait``, follow them to the end."""
    with executor.batch():
        submitted = [executor.submit(job) for job in jobs]
    for job, handle in zip(jobs, submitted, strict=True):
        announce(f"{job.name}: submitted as SLURM job {handle.job_id} (log {job.log_path})")
    if not wait:
        return []
    start = time.monotonic()
    outcomes: list[Outcome] = []
    remaining = list(zip(jobs, submitted, strict=True))
    while remaining:
        still = []
        for job, handle in remaining:
            if handle.done():
                outcome = _job_outcome(job, handle, time.monotonic() - start)
                announce(_outcome_line(len(outcomes) + 1, len(jobs), outcome))
                outcomes.append(outcome)
            else:
                still.append((job, handle))
        remaining = still
        if remaining:
            time.sleep(poll_s)
    return outcomes
