"""Running the ``padam-fit`` commands of a sweep: one job per run, on this machine or on SLURM.

A :class:`FitJob` is the unit of work every executor runs: it decides at start time whether the
run is new or resumes (so a job requeued by SLURM after a timeout continues from its last
checkpoint), writes the run's ``run.json``, runs ``padam-fit`` in a subprocess with its output
appended to ``fit.log`` in the run folder, and raises :class:`RunFailedError` when the fit fails or
stops before its last epoch.

Each ``padam-fit`` runs in its own session (process group), so a terminal's Ctrl-C reaches
``padam-sweep`` alone, which passes it on once (padam-fit stops at once on a second Ctrl-C). On
Linux the run also gets SIGTERM, to save and stop, when ``padam-sweep`` dies, even by SIGKILL.

Executors:

- :func:`run_local`: subprocesses of this process, as many at once as there are slots (each GPU
  ``K`` times with ``--runs-per-gpu K``, or ``K`` CPU slots); one slot shows the output live.
- :func:`run_slurm`: submitit's SLURM executor, one job per run in a job array.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import submitit

from padam_lightning.cli.run_layout import FINISHED_FILE, LAST_CHECKPOINT_PATH, without_ckpt_path
from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import RUN_FILE, read_json_object

LOG_FILE = "fit.log"
#: Start of the line ``fit.log`` gets before each attempt: ``### padam-sweep <time>: <command>``.
LOG_HEADER = "### padam-sweep"
#: Signals that stop a run without anything being wrong with it (Ctrl-C, a scheduler's stop or
#: notice, a closed terminal): the run is interrupted, not failed, and resumes. padam-sweep
#: passes each it gets on to its running runs.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
#: What a run gets for a signal padam-sweep got: a closed terminal's SIGHUP would kill padam-fit
#: without a checkpoint, so it gets SIGTERM, its "save and stop".
_PASSED_ON_AS = {signal.SIGHUP: signal.SIGTERM}
#: How often a running run's output is copied and padam-sweep's signals passed on, in seconds.
_POLL_S = 0.1
#: Linux's prctl() option that signals a process when its parent ends (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child, where only async-signal-safe work is safe.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _stop_with_parent(parent: int) -> None:
    """In a run's process before it execs: SIGTERM it when ``padam-sweep`` ends, even by SIGKILL.

    ``preexec_fn`` is safe in this threaded process because this calls one C function that is
    already loaded and takes no lock. The setting survives exec; ``parent`` (the pid of
    padam-sweep) catches a death before the call.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


class RunState(Enum):
    """Where a run stands, read from its folder."""

    NEW = "new"
    RESUME = "resume"
    DONE = "done"


class RunFailedError(RuntimeError):
    """A sweep run whose ``padam-fit`` exited with an error or stopped before its last epoch."""


class RunInterruptedError(RunFailedError):
    """A sweep run stopped by a signal (:data:`STOP_SIGNALS`); the next sweep resumes it."""


def exit_signal(returncode: int) -> signal.Signals | None:
    """The signal that ended a process, from its exit status; ``None`` for a plain exit.

    A process killed by a signal has status ``-N`` (``subprocess``), one that caught it and
    exited with ``128 + N`` as shells do (``padam-fit``: 130 after Ctrl-C, 143 after SIGTERM).
    """
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one write of ``path`` from another: inode, modification time, size."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


@dataclass
class FitJob(submitit.helpers.Checkpointable):
    """One sweep run: a picklable callable that runs ``padam-fit`` for it.

    When submitit stops the job before its time limit runs out (SLURM preemption or timeout),
    :meth:`checkpoint` stops ``padam-fit`` and submitit requeues the job, which then resumes from
    the run's ``last.ckpt``.

    Attributes:
        name: The run's name.
        command: ``padam-fit`` and its arguments, without ``--ckpt_path`` (added when resuming).
        run_dir: The run's log folder (``save_dir/sweep/run``).
        cwd: Directory to run in (relative config paths are resolved from it).
        identity: What the run is, written to ``run.json`` at each start; its ``arguments`` are
            the ``padam-fit`` arguments of ``command`` (from ``fit`` on).
        echo: Also copy the output to this process's stdout.
        env: Extra environment variables for ``padam-fit``.
        signals: The signals this process got while the run goes on (appended by a handler of
            :func:`run_local`); each is passed on once to the run's process group.
    """

    name: str
    command: list[str]
    run_dir: str
    cwd: str
    identity: dict[str, Any]
    echo: bool = False
    env: dict[str, str] = field(default_factory=dict)
    signals: list[int] = field(default_factory=list, repr=False, compare=False)
    _process: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: Set once a signal was passed on: however ``padam-fit`` then ends, it was interrupted.
    _stopped: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def log_path(self) -> Path:
        """The file that collects the output of every attempt of this run."""
        return Path(self.run_dir) / LOG_FILE

    def _recorded_arguments(self) -> list[str] | None:
        """The ``padam-fit`` arguments of the run's last attempt, from its ``run.json``."""
        identity, _ = read_json_object(Path(self.run_dir) / RUN_FILE)
        arguments = identity.get("arguments") if identity else None
        return [str(a) for a in arguments] if isinstance(arguments, list) else None

    def state(self) -> RunState:
        """Where the run stands now, read from its folder.

        ``DONE`` with a readable ``finished.json`` written by an attempt with the same arguments
        (or by one that recorded none), ``RESUME`` with ``checkpoints/last.ckpt``, else ``NEW``.
        So a run finished by a trial with other arguments (``-- --trainer.max_epochs 2``)
        resumes and trains on to what the sweep now asks, and a damaged ``finished.json`` is
        written again by a resume that costs no training.
        """
        finished, _ = read_json_object(Path(self.run_dir) / FINISHED_FILE)
        if finished is not None:
            previous = self._recorded_arguments()
            if previous is None or previous == self.identity["arguments"]:
                return RunState.DONE
        if (Path(self.run_dir) / LAST_CHECKPOINT_PATH).is_file():
            return RunState.RESUME
        return RunState.NEW

    def changed_since_last_attempt(self) -> bool:
        """Whether this run resumes with other arguments than it ran with (epochs aside)."""
        previous = self._recorded_arguments()
        current = self.identity["arguments"]
        epochs = "--trainer.max_epochs"  # training on for more epochs is resuming, not a change
        return previous is not None and (
            without_ckpt_path(previous, epochs) != without_ckpt_path(current, epochs)
        )

    def argv(self, state: RunState | None = None) -> list[str]:
        """The command to run now: resumes from ``last.ckpt`` when the run was interrupted.

        Args:
            state: The run's state when already read (else it is read from the run's folder).
        """
        if (self.state() if state is None else state) is RunState.RESUME:
            return [*self.command, "--ckpt_path", "last"]
        return list(self.command)

    def __call__(self) -> str:
        """Run the fit; return the run name, or raise :class:`RunFailedError`.

        The run finished when this attempt wrote ``finished.json``, whatever the exit status (a
        Ctrl-C that comes after it ends the process with -2 or 130); not when an earlier attempt
        with other arguments left one. A run stopped by a signal raises
        :class:`RunInterruptedError`.
        """
        run_dir = Path(self.run_dir)
        state = self.state()
        if state is RunState.DONE:
            return self.name
        argv = self.argv(state)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(json.dumps(self.identity, indent=2) + "\n")
        started = datetime.datetime.now().isoformat(timespec="seconds")
        finished_path = run_dir / FINISHED_FILE
        finished_before = _file_stamp(finished_path)
        with open(self.log_path, "ab") as log:
            log.write(f"{LOG_HEADER} {started}: {shlex.join(argv)}\n".encode())
            returncode = self._run_logged(argv, log)
        written = _file_stamp(finished_path) not in (None, finished_before)
        if written and read_json_object(finished_path)[0] is not None:
            return self.name
        stopped_by = exit_signal(returncode)
        if self._stopped or stopped_by in STOP_SIGNALS:
            status = f"exit status {returncode}"
            if stopped_by is signal.SIGINT:
                how = f"Ctrl-C (SIGINT, {status})"
            else:  # SIGTERM, SIGHUP, SIGUSR1, or whatever ended it after a signal passed on
                how = f"{stopped_by.name if stopped_by else 'padam-sweep'} ({status})"
            if (run_dir / LAST_CHECKPOINT_PATH).is_file():
                hint = "rerun the same padam-sweep command to resume it from its last checkpoint"
            else:
                hint = (
                    "it saved no checkpoint; rerun the same padam-sweep command to start it again"
                )
            raise RunInterruptedError(f"padam-fit was stopped by {how}; {hint}")
        if returncode != 0:
            killed = f", killed by {stopped_by.name}" if returncode < 0 and stopped_by else ""
            raise RunFailedError(
                f"padam-fit exited with status {returncode}{killed} (see {self.log_path})"
            )
        raise RunFailedError(
            f"padam-fit stopped before the last epoch (no {FINISHED_FILE}; see "
            f"{self.log_path}); rerun the sweep to resume it"
        )

    def _run_logged(self, argv: list[str], log: BinaryIO) -> int:
        """Run ``argv`` in its own session, its output appended to ``log``; return its status.

        Until it ends, its new output is copied to this stdout (with ``echo``) and the signals
        of :attr:`signals` are passed on to its process group.
        """
        log.flush()
        with (
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=functools.partial(_stop_with_parent, os.getpid()),
            ) as process,
            open(self.log_path, "rb") as output,
        ):
            output.seek(log.tell())
            self._process = process
            passed_on = 0
            try:
                while True:
                    for signum in self.signals[passed_on:]:
                        self._pass_on(signum)
                        passed_on += 1
                    try:
                        returncode: int | None = process.wait(timeout=_POLL_S)
                    except subprocess.TimeoutExpired:
                        returncode = None
                    if self.echo:
                        try:
                            sys.stdout.buffer.write(output.read())
                            sys.stdout.flush()
                        except OSError:  # a closed terminal: the output is in the log anyway
                            self.echo = False
                    if returncode is not None:
                        return returncode
            finally:
                self._process = None

    def _pass_on(self, signum: int) -> None:
        """Send the run's process group the signal this process got (SIGHUP as SIGTERM)."""
        process = self._process
        if process is not None and process.poll() is None:
            self._stopped = True
            with contextlib.suppress(ProcessLookupError):  # it has just ended
                os.killpg(process.pid, _PASSED_ON_AS.get(signal.Signals(signum), signum))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stop ``padam-fit`` and requeue this job (submitit calls this before a time limit).

        ``padam-fit`` gets SIGTERM, saves and stops; the requeued job resumes from ``last.ckpt``.
        """
        process = self._process
        if process is not None:
            self._pass_on(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None, "signals": []}


@dataclass(frozen=True)
class Outcome:
    """How a run ended.

    Attributes:
        reason: Why it failed or was interrupted; empty when it finished.
        interrupted: Whether a signal stopped it (it resumes when the sweep is run again).
    """

    name: str
    log_path: Path
    seconds: float
    reason: str = ""
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Whether the run finished."""
        return not self.reason


def _failure_reason(error: BaseException) -> tuple[str, bool]:
    """The informative line of an error, and whether it is an interruption.

    Submitit wraps job errors in a traceback and notes, so the line is searched for.
    """
    if isinstance(error, RunFailedError):  # raised here, not through submitit
        return str(error), isinstance(error, RunInterruptedError)
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for kind in (RunInterruptedError, RunFailedError):
        marker = f"{kind.__name__}: "
        for line in reversed(lines):
            if marker in line:
                return line.split(marker, 1)[1], kind is RunInterruptedError
    return _other_reason(lines, error), False


def _other_reason(lines: list[str], error: BaseException) -> str:
    """The exception line of a traceback (``module.SomeError: message``), else the first."""
    for line in reversed(lines):
        head = line.split(": ", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            return line
    return lines[0] if lines else type(error).__name__


Announce = Callable[[str], None]


def _ended(
    job: FitJob, error: BaseException | None, start: float, place: str, announce: Announce
) -> Outcome:
    """The outcome of ``job``, announced as ``[i/n] name: finished in 1m05s`` or ``FAILED``."""
    reason, interrupted = ("", False) if error is None else _failure_reason(error)
    outcome = Outcome(job.name, job.log_path, time.monotonic() - start, reason, interrupted)
    minutes, secs = divmod(round(outcome.seconds), 60)
    hours, minutes = divmod(minutes, 60)
    took = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
    if outcome.ok:
        ending = f"finished in {took}"
    else:
        ending = f"{'interrupted' if interrupted else 'FAILED'} after {took}: {reason}"
    announce(f"{place} {job.name}: {ending}")
    return outcome


def run_on_slot(
    job: FitJob, slot: int | None, *, echo: bool = False, signals: list[int] | None = None
) -> str:
    """Run ``job`` here and now (blocking; safe from a worker thread) on one local slot.

    Args:
        job: The run.
        slot: A GPU id, given to the run as its ``CUDA_VISIBLE_DEVICES`` (nvidia-smi's
            numbering), or ``None`` for this process's environment (a CPU slot).
        echo: Also copy the run's output to this stdout.
        signals: The list :func:`stop_signals_passed_on` fills; each signal in it is passed on
            once to the run.

    Returns:
        The run's name, once it finished.

    Raises:
        RunInterruptedError: A signal stopped it. RunFailedError: It failed or stopped early.
        OSError: Its command cannot be started.
    """
    env = job.env if slot is None else {**job.env, "CUDA_VISIBLE_DEVICES": str(slot)}
    signals = [] if signals is None else signals
    return dataclasses.replace(job, env=env, echo=echo, signals=signals)()


@contextlib.contextmanager
def stop_signals_passed_on(announce: Announce) -> Iterator[list[int]]:
    """Within it, each of :data:`STOP_SIGNALS` this process gets is appended to the list yielded.

    Give that list to :func:`run_on_slot`: the running runs get each signal (they save and stop)
    and the caller starts no further run while it is not empty. Call from the main thread.
    """
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        announce(
            f"got {signal.Signals(signum).name}: passing it on to the running runs, which save "
            "and stop; no further run starts"
        )

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_local(
    jobs: Sequence[FitJob], announce: Announce, slots: Sequence[int | None], received: list[int]
) -> list[Outcome]:
    """Run the jobs here, at most one per slot at a time; failures do not stop the others.

    Args:
        jobs: The runs, started in this order.
        announce: Prints a progress line (called from worker threads).
        slots: One per run at once (see :func:`run_on_slot`); with one slot the output is live.
        received: The signals of :func:`stop_signals_passed_on`; once one came, no run starts.

    Returns:
        One outcome per job that started, in the order they ended.
    """
    free: queue.Queue[int | None] = queue.Queue()
    for slot in slots:
        free.put(slot)

    def work(index: int, job: FitJob) -> Outcome | None:
        slot = free.get()
        try:
            if received:
                return None
            place = f"[{index}/{len(jobs)}]"
            where = "" if len(slots) == 1 else (" on CPU" if slot is None else f" on GPU {slot}")
            announce(f"{place} {job.name}{where}: {shlex.join(job.argv())}")
            start, error = time.monotonic(), None
            try:
                run_on_slot(job, slot, echo=len(slots) == 1, signals=received)
            except (RunFailedError, OSError) as err:
                error = err
            return _ended(job, error, start, place, announce)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(work, i, job) for i, job in enumerate(jobs, start=1)]
        outcomes = [future.result() for future in as_completed(futures)]
    return [outcome for outcome in outcomes if outcome is not None]


def slurm_executor(folder: Path, parameters: dict[str, Any]) -> submitit.AutoExecutor:
    """A submitit executor for SLURM with the given job parameters (no submission happens here).

    Raises:
        UserError: If this machine is not a SLURM login node (no ``srun``).
    """
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:
        raise UserError(f"--executor slurm: {err} Use --executor local off a cluster.") from err
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
    by_id = {handle.job_id: job for job, handle in zip(jobs, submitted, strict=True)}
    outcomes: list[Outcome] = []
    for handle in submitit.helpers.as_completed(submitted, poll_frequency=poll_s):
        error: BaseException | None
        try:
            error = handle.exception()
        except Exception as err:  # submitit raises when a job died without writing a result
            error = err
        place = f"[{len(outcomes) + 1}/{len(jobs)}]"
        outcomes.append(_ended(by_id[handle.job_id], error, start, place, announce))
    return outcomes
