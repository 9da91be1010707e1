"""Running ``padam-fit`` runs: a :class:`FitJob` per run, on local slots or as SLURM jobs."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import functools
import json
import os
import queue
import re
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
from typing import Any, BinaryIO, NamedTuple

import submitit

from padam_lightning.cli.run_layout import FINISHED_FILE, LAST_CHECKPOINT_PATH, without_ckpt_path
from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import RUN_FILE, read_json_object

LOG_FILE = "fit.log"
#: Start of the line ``fit.log`` gets before each attempt: ``### padam-sweep <time>: <command>``.
LOG_HEADER = "### padam-sweep"
#: Signals that stop a run without anything being wrong with it: it is interrupted and resumes.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
#: A closed terminal's SIGHUP would kill padam-fit without a checkpoint; SIGTERM saves first.
_PASSED_ON_AS = {signal.SIGHUP: signal.SIGTERM}
#: How often a running run's output is copied and signals passed on, in seconds.
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Loaded here, not in the forked child, where only async-signal-safe work is safe.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None

#: How a run can end.
STATUSES = ("finished", "FAILED", "interrupted")
# The exception line of a traceback: ``package.module.SomeError: message``.
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt|Exit)): (.*)$", re.M)

Announce = Callable[[str], None]


def _stop_with_parent(parent: int) -> None:
    """``preexec_fn`` (one loaded C call: fork-safe): SIGTERM the run when ``parent`` dies."""
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
    """A run whose ``padam-fit`` exited with an error or stopped before its last epoch."""


class RunInterruptedError(RunFailedError):
    """A run stopped by a signal (:data:`STOP_SIGNALS`); running the job again resumes it."""


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells one write of ``path`` from another: inode, modification time, size."""
    with contextlib.suppress(OSError):
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size
    return None


@dataclass
class FitJob(submitit.helpers.Checkpointable):
    """One run: a picklable callable that runs ``padam-fit`` for it, new or resumed.

    ``command`` lacks ``--ckpt_path``; ``identity`` (``run.json``) holds its ``arguments``.
    """

    name: str
    command: list[str]
    run_dir: str
    cwd: str
    identity: dict[str, Any]
    echo: bool = False
    env: dict[str, str] = field(default_factory=dict)
    signals: list[int] = field(default_factory=list, repr=False, compare=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)  # a signal was passed on

    @property
    def log_path(self) -> Path:
        """``fit.log``: the output of every attempt."""
        return Path(self.run_dir) / LOG_FILE

    def _recorded_arguments(self) -> list[str] | None:
        """The ``padam-fit`` arguments of the run's last attempt, from its ``run.json``."""
        arguments = (read_json_object(Path(self.run_dir) / RUN_FILE)[0] or {}).get("arguments")
        return [str(a) for a in arguments] if isinstance(arguments, list) else None

    def state(self) -> RunState:
        """DONE (a finished.json of these arguments), RESUME (a last.ckpt) or NEW."""
        finished = read_json_object(Path(self.run_dir) / FINISHED_FILE)[0] is not None
        if finished and self._recorded_arguments() in (None, self.identity["arguments"]):
            return RunState.DONE
        if (Path(self.run_dir) / LAST_CHECKPOINT_PATH).is_file():
            return RunState.RESUME
        return RunState.NEW

    def changed_since_last_attempt(self) -> bool:
        """Whether this run resumes with other arguments than it ran with (epochs aside)."""
        epochs = "--trainer.max_epochs"  # training on for more epochs is resuming, not a change
        previous, current = self._recorded_arguments(), self.identity["arguments"]
        return previous is not None and (
            without_ckpt_path(previous, epochs) != without_ckpt_path(current, epochs)
        )

    def argv(self, state: RunState | None = None) -> list[str]:
        """The command to run now (``--ckpt_path last`` when ``state``, else read, is RESUME)."""
        resume = (state or self.state()) is RunState.RESUME
        return [*self.command, *(["--ckpt_path", "last"] if resume else [])]

    def __call__(self) -> str:
        """Run the fit; the run's name once this attempt wrote ``finished.json``, else raise.

        Raises:
            RunInterruptedError: A signal stopped it. RunFailedError: It failed or stopped early.
        """
        run_dir, state = Path(self.run_dir), self.state()
        if state is RunState.DONE:
            return self.name
        argv = self.argv(state)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(json.dumps(self.identity, indent=2) + "\n")
        finished = run_dir / FINISHED_FILE
        before = _stamp(finished)
        with open(self.log_path, "ab") as log:
            now = datetime.datetime.now().isoformat(timespec="seconds")
            log.write(f"{LOG_HEADER} {now}: {shlex.join(argv)}\n".encode())
            code = self._run_logged(argv, log)
        # Finished, whatever the status: a Ctrl-C may come after finished.json was written.
        if _stamp(finished) not in (None, before) and read_json_object(finished)[0] is not None:
            return self.name
        # Status -N: killed by signal N; 128 + N: exited after it (as shells and padam-fit do).
        number = -code if code < 0 else code - 128
        stopped_by = next((s for s in signal.Signals if s == number), None)
        status = f"status {code}"
        if self._stopped or stopped_by in STOP_SIGNALS:
            name = stopped_by.name if stopped_by else "padam-sweep"  # it passed a signal on
            how = "Ctrl-C (SIGINT, " if stopped_by is signal.SIGINT else f"{name} ("
            again = "rerun the same padam-sweep command to"
            hint = f"it saved no checkpoint; {again} start it again"
            if (run_dir / LAST_CHECKPOINT_PATH).is_file():
                hint = f"{again} resume it from its last checkpoint"
            raise RunInterruptedError(f"padam-fit was stopped by {how}exit {status}); {hint}")
        if code != 0:
            killed = f", killed by {stopped_by.name}" if code < 0 and stopped_by else ""
            raise RunFailedError(f"padam-fit exited with {status}{killed} (see {self.log_path})")
        raise RunFailedError(
            f"padam-fit stopped before the last epoch (no {FINISHED_FILE}; see {self.log_path}); "
            "rerun the sweep to resume it"
        )

    def _run_logged(self, argv: list[str], log: BinaryIO) -> int:
        """Run ``argv``, output appended to ``log``; return its status.

        In its own session: a terminal's Ctrl-C reaches ``padam-sweep`` alone, to pass on once.
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
            self._process, passed_on = process, 0
            try:
                while True:
                    for signum in self.signals[passed_on:]:
                        self._pass_on(signum)
                        passed_on += 1
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=_POLL_S)
                    if self.echo:
                        try:
                            sys.stdout.buffer.write(output.read())
                            sys.stdout.flush()
                        except OSError:  # a closed terminal: the output is in the log anyway
                            self.echo = False
                    if process.returncode is not None:
                        return process.returncode
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
        """Before a SLURM time limit: stop ``padam-fit`` (SIGTERM: it saves), requeue the job."""
        if self._process is not None:
            self._pass_on(signal.SIGTERM)
            try:
                self._process.wait(timeout=120)
            except subprocess.TimeoutExpired:  # it must not train on beside the requeued job
                self._process.kill()
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None, "signals": []}


class Outcome(NamedTuple):
    """How a run ended: ``status`` is one of :data:`STATUSES`; ``reason`` says why if not ok."""

    name: str
    log_path: Path
    status: str = "finished"
    reason: str = ""


def _failure(error: BaseException) -> tuple[str, str]:
    """The status (``FAILED`` or ``interrupted``) and the informative line of an error."""
    if isinstance(error, RunFailedError):
        kind, message = type(error).__name__, str(error)
    else:  # submitit gives a job's error as its traceback's text: use the last exception line
        found = _EXCEPTION_LINE.findall(str(error))
        kind, message = found[-1] if found else ("", str(error).strip().split("\n")[0])
    if kind == RunInterruptedError.__name__:
        return "interrupted", message
    return "FAILED", message if kind in ("", RunFailedError.__name__) else f"{kind}: {message}"


def _ended(
    job: FitJob, error: BaseException | None, start: float, place: str, announce: Announce
) -> Outcome:
    """The outcome of ``job``, announced as ``[i/n] name: finished in 1m05s`` or ``FAILED``."""
    status, reason = ("finished", "") if error is None else _failure(error)
    minutes, secs = divmod(round(time.monotonic() - start), 60)
    hours, minutes = divmod(minutes, 60)
    took = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
    ending = f"in {took}" if error is None else f"after {took}: {reason}"
    announce(f"{place} {job.name}: {status} {ending}")
    return Outcome(job.name, job.log_path, status, reason)


def run_on_slot(
    job: FitJob, slot: int | None, *, echo: bool = False, signals: list[int] | None = None
) -> str:
    """Run ``job`` (blocking, from any thread) on GPU ``slot`` alone, or as it is with ``None``.

    ``echo`` copies its output to stdout; ``signals`` is :func:`stop_signals_passed_on`'s list.
    Returns and raises as ``job()`` does, or OSError if it cannot start.
    """
    env = job.env if slot is None else {**job.env, "CUDA_VISIBLE_DEVICES": str(slot)}
    signals = [] if signals is None else signals
    return dataclasses.replace(job, env=env, echo=echo, signals=signals)()


@contextlib.contextmanager
def stop_signals_passed_on(announce: Announce) -> Iterator[list[int]]:
    """Within it (main thread only), :data:`STOP_SIGNALS` are appended to the list yielded.

    Runs given the list (:func:`run_on_slot`) get each signal; start no run once it is not empty.
    """
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        announce(f"got {name}: the running runs get it (they save and stop); no further run starts")

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_local(
    jobs: Sequence[FitJob], announce: Announce, slots: Sequence[int | None], received: list[int]
) -> list[Outcome]:
    """Run the jobs in order, one per slot at a time; the outcomes of those that started.

    ``received`` is the list of :func:`stop_signals_passed_on`: once it is not empty, no job
    starts. With one slot the output is live; ``announce`` is called from worker threads.
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
    """A submitit SLURM executor with these job parameters; UserError without ``srun``."""
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:
        raise UserError(f"--executor slurm: {err} Use --executor local off a cluster.") from err
    executor.update_parameters(**parameters)
    return executor


def run_slurm(
    jobs: Sequence[FitJob], announce: Announce, executor: submitit.AutoExecutor, wait: bool = True
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
    for handle in submitit.helpers.as_completed(submitted, poll_frequency=60):
        error: BaseException | None
        try:
            error = handle.exception()
        except Exception as err:  # submitit raises when a job died without writing a result
            error = err
        place = f"[{len(outcomes) + 1}/{len(jobs)}]"
        outcomes.append(_ended(by_id[handle.job_id], error, start, place, announce))
    return outcomes
