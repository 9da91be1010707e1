"""Chaos: stop ``padam-fit fit`` runs at chosen and random moments, resume, compare bit for bit.

The promise under test: a run stopped at any moment and resumed with ``--ckpt_path last``
(repeatedly if needed) until it finishes equals the uninterrupted run bit for bit: the weights,
the optimizer state and the lr-scheduler state of the final ``last.ckpt``, and every TensorBoard
curve point (none lost, none duplicated, none changed).

Each trial trains the tiny CPU run (``configs/wrn.yaml`` + ``configs/tiny.yaml``, 3 epochs of 4
training batches and 2 validation batches, seed 0) into its own folder, stops it, and resumes it
with the plain command plus ``--ckpt_path last`` until ``finished.json`` appears (at most
:data:`MAX_ATTEMPTS` runs; a run folder without ``last.ckpt`` is started afresh, as the
``--ckpt_path last`` refusal advises). The result is compared with one uninterrupted reference
run of the same arguments:

- every entry of ``state_dict``, ``optimizer_states`` and ``lr_schedulers`` in the final
  ``last.ckpt`` (tensors with ``torch.equal``; the first differing key is reported);
- every scalar tag's list of (step, value) from the run folder's event files, read as TensorBoard
  reads them (``EventAccumulator(..., purge_orphaned_data=True)``, which honours a writer's
  ``purge_step``): points lost, extra, changed, and steps that occur twice in a tag.

Also tallied: exit statuses, ``Traceback`` on stderr, a ``finished.json`` that claims the end of
a run that stopped before it (its step or epoch short of the reference's), the number of attempts,
and the resume command padam-fit prints: its arguments, less the executable and ``--ckpt_path``,
must be those of the run that printed it, and its checkpoint the run's ``last.ckpt``.

Stops (kinds: SIGKILL, SIGTERM, SIGINT, SIGUSR1, max_time):

- chosen (``--moments``): the end of a training batch, the first and the last validation batch,
  the sanity check (of the first run, and of a resumed one), right after the first ``last.ckpt``
  save, half-way through writing the second, before the first checkpoint, late in the last
  epoch, right after the final save (before ``finished.json``), two stops in one run, and
  ``--trainer.max_time``; each with every signal kind (max_time: once);
- random (``--trials N``): a random training or validation batch, or a random delay (from the
  start of the process, or from the moment the run folder's ``config.yaml`` appears, as a fraction
  of the reference run's times), or a random short ``--trainer.max_time``.

A batch or checkpoint moment is hit exactly by running the run to be stopped through
``benchmarks/_chaos_child.py``, which signals its own process from inside Lightning; delays are
signals sent from here. Resumes run the plain ``padam-fit``; a max_time stop's resumes run with a
larger limit (:data:`LONG_MAX_TIME`). Every run gets ``OMP_NUM_THREADS=1``: results are
bit-identical only at equal thread counts. SLURM variables are removed from the runs' environment
(under SLURM, SIGUSR1 requeues the job).

Usage::

    python benchmarks/chaos.py                               # 30 random trials + every moment
    python benchmarks/chaos.py --trials 0 --moments val-first after-save --kinds SIGKILL SIGTERM
    python benchmarks/chaos.py --trials 10 --seed 3 --moments none --keep
    make chaos

Prints one line per trial, details under each failed one, then a tally and a table of the chosen
moments by kind. Exits 1 if any trial failed. Each trial takes about 10-15 s on 2 CPU cores (two
or three padam-fit start-ups of about 5 s each).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from _chaos_compare import (
    COMPARED,
    FINISHED_FILE,
    LAST_CHECKPOINT,
    CurveDiff,
    RunResult,
    compare_curves,
    duplicated_steps,
    finished_folder,
    first_difference,
    has_checkpoint,
    read_run,
    run_folders,
)

from padam_lightning.cli.run_layout import without_ckpt_path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_chaos_child.py")
#: The console script beside this interpreter (the venv's ``padam-fit``).
PADAM_FIT = Path(sys.executable).with_name("padam-fit")

EPOCHS, TRAIN_BATCHES, VAL_BATCHES = 3, 4, 2  # VAL_BATCHES: configs/tiny.yaml's limit_val_batches
#: The run every trial trains (its logger's ``save_dir`` is added per trial).
BASE_ARGS: tuple[str, ...] = (
    "fit",
    "--config",
    str(REPO_ROOT / "configs" / "wrn.yaml"),
    "--config",
    str(REPO_ROOT / "configs" / "tiny.yaml"),
    "--trainer.max_epochs",
    str(EPOCHS),
    "--trainer.limit_train_batches",
    str(TRAIN_BATCHES),
    "--seed_everything",
    "0",
)
SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGUSR1")
KINDS = (*SIGNALS, "max_time")
#: Runs of one trial, the first (stopped) one included, before it is reported as not finished.
MAX_ATTEMPTS = 6
#: Seconds one padam-fit run may take before it is killed and reported.
ATTEMPT_TIMEOUT = 300.0
#: The limit a max_time trial's resumes run with ("larger" than any stop's).
LONG_MAX_TIME = "00:01:00:00"
#: Chosen-moment max_time stop: this limit, with the first run slowed by this per training batch.
MAX_TIME_SECONDS, MAX_TIME_SLEEP = 3, 0.3
#: What the stopped command prints to say how to resume (PadamCLI._tell_how_to_resume).
RESUME_HINT = re.compile(r"To continue(?: it)?: (\S*padam-fit .*)$", re.MULTILINE)
#: Printed by the child just before it signals itself (benchmarks/_chaos_child.py).
REACHED_MARK = "chaos: "
CONFIG_FILE = "config.yaml"


# -- stops and trials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """One way to stop one padam-fit run.

    Attributes:
        kind: A signal name (:data:`SIGNALS`) or ``max_time``.
        at: ``train_batch``, ``val_batch``, ``sanity``, ``after_save``, ``during_save`` (sent
            from inside the run by the child), ``delay`` (sent from here after ``fraction`` of
            the reference's training time, counted from the run folder's ``config.yaml``),
            ``delay_start`` (``fraction`` of the reference's start-up, counted from the start),
            or ``max_time``.
        epoch: The epoch of a batch or checkpoint moment.
        batch: The batch index of a batch moment (-1: the last validation batch).
        fraction: A delay as a fraction of the reference's time (``delay``, ``delay_start``).
        seconds: The ``--trainer.max_time`` limit of a ``max_time`` stop.
        sleep_per_batch: Seconds the child sleeps after each training batch (``max_time``).
        save: Which write of ``last.ckpt`` in the stopped run (0: its first) for ``after_save``
            and ``during_save``: counted, so the moment keeps its meaning whenever in an epoch
            the package saves.
    """

    kind: str
    at: str
    epoch: int = 0
    batch: int = 0
    fraction: float = 0.0
    seconds: int = 0
    sleep_per_batch: float = 0.0
    save: int = 0

    @property
    def through_child(self) -> bool:
        """Whether the run goes through ``_chaos_child.py`` (which stops it from inside)."""
        return self.at not in ("delay", "delay_start")

    def child_spec(self) -> str:
        """The JSON the child reads."""
        at = "none" if self.at == "max_time" else self.at
        signal_name = self.kind if self.kind in SIGNALS else "SIGTERM"
        spec = {"at": at, "signal": signal_name, "epoch": self.epoch, "batch": self.batch}
        return json.dumps({**spec, "save": self.save, "sleep_per_batch": self.sleep_per_batch})

    def describe(self) -> str:
        """The moment in a few words."""
        if self.at == "train_batch":
            return f"train batch e{self.epoch} b{self.batch}"
        if self.at == "val_batch":
            which = {0: " (first)", -1: " (last)", VAL_BATCHES - 1: " (last)"}.get(self.batch, "")
            batch = VAL_BATCHES - 1 if self.batch == -1 else self.batch
            return f"val batch e{self.epoch} b{batch}{which}"
        if self.at == "sanity":
            return f"sanity check b{self.batch}"
        if self.at == "after_save":
            return f"after last.ckpt save #{self.save + 1}"
        if self.at == "during_save":
            return f"half-way in last.ckpt save #{self.save + 1}"
        if self.at == "delay":
            return f"delay {self.fraction:.0%} of training"
        if self.at == "delay_start":
            return f"delay {self.fraction:.0%} of start-up"
        return f"max_time {self.seconds}s (+{self.sleep_per_batch:g}s/batch)"


@dataclass(frozen=True)
class Trial:
    """A run stopped by ``stops`` (one per attempt, in order), then resumed until it finishes.

    Attributes:
        moment: The chosen moment's name (:data:`MOMENTS`), or ``random``.
        stops: The stop of the first attempt, the second, ...
        extra_args: Settings of the run that its reference shares (``padam-fit`` arguments).
    """

    moment: str
    stops: tuple[Stop, ...]
    extra_args: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """The kind of the trial's last stop (the one the moment is about)."""
        return self.stops[-1].kind

    def describe(self) -> str:
        """The stops in a few words."""
        return " + ".join(
            stop.describe() + (f" ({stop.kind})" if stop.kind != self.kind else "")
            for stop in self.stops
        )


def _signal_moments(kind: str) -> dict[str, tuple[tuple[Stop, ...], tuple[str, ...]]]:
    sanity = ("--trainer.num_sanity_val_steps", "2")
    return {
        "train-batch": ((Stop(kind, "train_batch", epoch=1, batch=1),), ()),
        "val-first": ((Stop(kind, "val_batch", epoch=1, batch=0),), ()),
        "val-last": ((Stop(kind, "val_batch", epoch=1, batch=-1),), ()),
        "sanity": ((Stop(kind, "sanity"),), sanity),
        # A resumed run checks again (unless it resumes mid-epoch): killed in epoch 1, then
        # stopped in the resumed run's sanity check.
        "sanity-resumed": (
            (Stop("SIGKILL", "train_batch", epoch=1, batch=1), Stop(kind, "sanity")),
            sanity,
        ),
        # The first last.ckpt: epoch 0's (at its end, or at the start of epoch 1).
        "after-save": ((Stop(kind, "after_save", save=0),), ()),
        "during-save": ((Stop(kind, "during_save", save=1),), ()),
        "before-first-ckpt": ((Stop(kind, "train_batch", epoch=0, batch=2),), ()),
        # A stop asked for in the last epoch's last batches, which may wait for its end.
        "final-epoch": (
            (Stop(kind, "train_batch", epoch=EPOCHS - 1, batch=TRAIN_BATCHES - 2),),
            (),
        ),
        # One save per epoch: the last one is the run's end, before finished.json.
        "final-save": ((Stop(kind, "after_save", save=EPOCHS - 1),), ()),
        "twice": (
            (Stop(kind, "train_batch", epoch=0, batch=1), Stop(kind, "val_batch", epoch=1)),
            (),
        ),
    }


#: The chosen moments, in the order they run and print.
MOMENTS = (*_signal_moments("SIGKILL"), "max-time")


def chosen_trial(moment: str, kind: str) -> Trial:
    """The trial of a chosen moment and kind (``max-time`` goes with kind ``max_time`` only).

    Raises:
        ValueError: For an unknown moment or a kind the moment does not take.
    """
    if moment == "max-time":
        if kind != "max_time":
            raise ValueError("the max-time moment is stopped by max_time only")
        stop = Stop(
            "max_time", "max_time", seconds=MAX_TIME_SECONDS, sleep_per_batch=MAX_TIME_SLEEP
        )
        return Trial(moment, (stop,))
    if kind not in SIGNALS:
        raise ValueError(f"moment {moment} is stopped by a signal ({', '.join(SIGNALS)})")
    stops, extra = _signal_moments(kind)[moment]
    return Trial(moment, stops, extra)


def chosen_trials(moments: Iterable[str], kinds: Sequence[str]) -> list[Trial]:
    """Every chosen moment with every kind it takes, moment by moment."""
    trials = []
    for moment in moments:
        for kind in kinds:
            if (moment == "max-time") == (kind == "max_time"):
                trials.append(chosen_trial(moment, kind))
    return trials


def random_trials(count: int, seed: int, kinds: Sequence[str]) -> list[Trial]:
    """``count`` trials with a random kind and moment each (the same for the same seed)."""
    rng = random.Random(seed)
    trials = []
    for _ in range(count):
        kind = rng.choice(list(kinds))
        if kind == "max_time":
            sleep = round(rng.uniform(0.25, 0.5), 2)  # 3-6 s of training: the limit falls inside
            stop = Stop(kind, "max_time", seconds=rng.randint(1, 3), sleep_per_batch=sleep)
        else:
            at = rng.choice(["train_batch", "val_batch", "delay", "delay_start"])
            if at == "train_batch":
                stop = Stop(kind, at, rng.randrange(EPOCHS), rng.randrange(TRAIN_BATCHES))
            elif at == "val_batch":
                stop = Stop(kind, at, rng.randrange(EPOCHS), rng.randrange(VAL_BATCHES))
            else:
                # Up to 90%: a run slower than the reference's still ends after the signal.
                stop = Stop(kind, at, fraction=round(rng.uniform(0.0, 0.9), 2))
        trials.append(Trial("random", (stop,)))
    return trials


# -- running padam-fit ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of every run: one thread (bit-identical results), no SLURM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_args(save_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """The padam-fit arguments of a run logging under ``save_dir``."""
    return [*BASE_ARGS, *extra, "--trainer.logger.init_args.save_dir", str(save_dir)]


@dataclass
class Attempt:
    """One padam-fit run of a trial and what it left.

    Attributes:
        args: padam-fit's arguments.
        stop: The stop it was given (None: run to the end).
        returncode: Its exit status (negative: killed by that signal; None: timed out).
        seconds: Its wall time.
        stderr: Its standard error.
        reached: Whether its stop happened (None: no stop).
        started_afresh: Whether it ran without ``--ckpt_path`` because there was no checkpoint.
        hint_command: The resume command it printed, split (None: it printed none).
    """

    args: list[str]
    stop: Stop | None
    returncode: int | None
    seconds: float
    stderr: str
    reached: bool | None
    started_afresh: bool = False
    hint_command: list[str] | None = None
    config_seconds: float | None = None  # when config.yaml appeared, from the start

    @property
    def tracebacks(self) -> int:
        """``Traceback`` lines on stderr."""
        return self.stderr.count("Traceback")

    def exit_label(self) -> str:
        """The exit status in words: a number, a signal name, or ``timeout``."""
        if self.returncode is None:
            return "timeout"
        if self.returncode < 0:
            return signal.Signals(-self.returncode).name
        return str(self.returncode)


def _config_files(save_dir: Path) -> list[Path]:
    return list(save_dir.glob(f"*/version_*/{CONFIG_FILE}"))


def _new_config(save_dir: Path, before: set[Path]) -> bool:
    """Whether a run folder's ``config.yaml`` appeared under ``save_dir`` (the run is set up)."""
    return bool(set(_config_files(save_dir)) - before)


def _watch(
    process: subprocess.Popen[bytes],
    stop: Stop | None,
    save_dir: Path,
    times: Mapping[str, float],
) -> tuple[bool | None, float | None]:
    """Send a delay stop's signal when it is due; note when the run folder's config appeared.

    Returns:
        Whether the signal was sent before the process ended (None: not a delay stop), and the
        seconds from the start until ``config.yaml`` appeared (None: not seen).
    """
    start = time.monotonic()
    before = set(_config_files(save_dir))
    delayed = stop is not None and stop.at in ("delay", "delay_start")
    due = start + stop.fraction * times["startup"] if stop and stop.at == "delay_start" else None
    config_seconds: float | None = None
    while process.poll() is None:
        now = time.monotonic()
        if config_seconds is None and _new_config(save_dir, before):
            config_seconds = now - start
            if stop is not None and stop.at == "delay":
                due = now + stop.fraction * times["training"]
        if delayed and due is not None and now >= due:
            assert stop is not None
            process.send_signal(signal.Signals[stop.kind])
            return True, config_seconds
        if config_seconds is not None and not delayed:
            return None, config_seconds
        time.sleep(0.005)
    return (False if delayed else None), config_seconds


def run_attempt(
    args: list[str],
    stop: Stop | None,
    save_dir: Path,
    log_stem: Path,
    times: Mapping[str, float] | None = None,
) -> Attempt:
    """Run padam-fit once with ``args``, stopped by ``stop``.

    Args:
        args: padam-fit's arguments.
        stop: How to stop it (None: let it run).
        save_dir: The logger's ``save_dir`` (watched for ``config.yaml``: delays count from it).
        log_stem: Its stdout and stderr go to ``<log_stem>.out`` / ``.err``.
        times: The reference's ``startup`` and ``training`` seconds (for delays).
    """
    if stop is not None and stop.at == "max_time":
        args = [*args, "--trainer.max_time", f"00:00:00:{stop.seconds:02d}"]
    if stop is not None and stop.through_child:
        command = [sys.executable, str(CHILD), stop.child_spec(), "--", *args]
    else:
        command = [str(PADAM_FIT), *args]
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    start = time.monotonic()
    returncode: int | None
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env(), stdout=out, stderr=err)
        try:
            times = times or {"startup": 5.0, "training": 1.0}
            reached, config_seconds = _watch(process, stop, save_dir, times)
            returncode = process.wait(timeout=ATTEMPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            if process.poll() is None:  # timed out, or the harness itself is being stopped
                process.kill()
                process.wait()
    seconds = time.monotonic() - start
    stderr = err_path.read_text(errors="replace")
    if stop is not None and stop.through_child:
        output = stderr + out_path.read_text(errors="replace")
        reached = REACHED_MARK in output  # max_time: run_trial decides
    hints = RESUME_HINT.findall(stderr)
    return Attempt(
        args=args,
        stop=stop,
        returncode=returncode,
        seconds=seconds,
        stderr=stderr,
        reached=reached,
        hint_command=shlex.split(hints[-1]) if hints else None,
        config_seconds=config_seconds,
    )


# -- trials --------------------------------------------------------------------------------------


@dataclass
class Reference:
    """The uninterrupted run trials are compared with, and its times."""

    result: RunResult
    seconds: float
    startup: float  # from the start until config.yaml appeared
    training: float  # from config.yaml until the run ended

    @property
    def times(self) -> dict[str, float]:
        """The times delays are fractions of."""
        return {"startup": self.startup, "training": self.training}


def run_reference(workdir: Path, extra: Sequence[str] = ()) -> Reference:
    """Train the uninterrupted reference run into ``workdir`` and read it.

    Raises:
        RuntimeError: If it does not finish normally.
    """
    save_dir = workdir / "logs"
    attempt = run_attempt(run_args(save_dir, extra), None, save_dir, workdir / "run")
    folder = finished_folder(save_dir)
    if attempt.returncode != 0 or folder is None:
        raise RuntimeError(
            f"the reference run failed (exit {attempt.exit_label()}):\n{attempt.stderr[-3000:]}"
        )
    startup = attempt.config_seconds or attempt.seconds
    result = read_run(folder)
    if result.checkpoint is None:
        raise RuntimeError(f"the reference run left no {LAST_CHECKPOINT} in {folder}")
    return Reference(result, attempt.seconds, startup, attempt.seconds - startup)


@dataclass
class TrialResult:
    """A trial's attempts, comparisons and verdict."""

    number: int
    trial: Trial
    attempts: list[Attempt]
    seconds: float
    folder: Path | None = None  # the run folder compared: the finished one, else the newest
    finished: bool = False  # whether the trial ended with a finished.json
    entries: dict[str, str | None] = field(default_factory=dict)  # compared name -> difference
    curves: CurveDiff | None = None
    early: str | None = None  # what a finished.json of a stopped run claimed
    hint_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def reached(self) -> bool:
        """Whether every stop of the trial happened."""
        stopped = [a.reached for a in self.attempts if a.stop is not None]
        return len(stopped) == len(self.trial.stops) and all(stopped)

    @property
    def tracebacks(self) -> int:
        """``Traceback`` lines on stderr over all attempts."""
        return sum(a.tracebacks for a in self.attempts)

    def failures(self) -> list[str]:
        """Why the trial failed (empty: it passed)."""
        reasons = []
        if not self.reached:
            reasons.append("stop not reached")
        if not self.finished:
            reasons.append(f"not finished after {len(self.attempts)} runs")
        if self.early:
            reasons.append("finished early")
        for name, difference in self.entries.items():
            if difference is not None:
                reasons.append(f"{name} differ")
        if self.curves is not None and not self.curves.ok:
            reasons.append("curves differ")
        if self.tracebacks:
            reasons.append("traceback")
        if self.hint_problems:
            reasons.append("resume command")
        return reasons

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or VOID (a random stop that never happened: nothing was tested)."""
        if not self.reached and self.trial.moment == "random":
            return "VOID"
        return "FAIL" if self.failures() else "PASS"

    def details(self) -> list[str]:
        """Lines under a failed trial's row: what differed, and where."""
        lines = list(self.notes)
        if self.early:
            lines.append(self.early)
        for name, difference in self.entries.items():
            if difference is not None:
                lines.append(f"{name}: first difference at {difference}")
        if self.curves is not None:
            lines.extend(self.curves.details())
        lines.extend(self.hint_problems)
        for i, attempt in enumerate(self.attempts, 1):
            if attempt.tracebacks:
                last = attempt.stderr.strip().splitlines()[-1:] or [""]
                lines.append(f"run {i}: {attempt.tracebacks} traceback(s), ending: {last[0][:160]}")
            if attempt.returncode not in (0, None) and attempt.returncode > 0:
                message = [ln for ln in attempt.stderr.splitlines() if "padam-fit: error" in ln]
                if message:
                    lines.append(f"run {i}: {message[-1][:200]}")
        return lines


def _check_hint(attempt: Attempt, number: int) -> list[str]:
    """Problems with the resume command an attempt printed (none printed: none)."""
    if not attempt.hint_command:
        return []
    executable, *hint_args = attempt.hint_command
    problems = []
    if without_ckpt_path(hint_args) != without_ckpt_path(attempt.args):
        problems.append(
            f"run {number} printed a resume command with other arguments: "
            f"{shlex.join(attempt.hint_command)}"
        )
    if "/" in executable and not Path(executable).is_file():
        problems.append(f"run {number}'s resume command names a missing program: {executable}")
    if "--ckpt_path" in hint_args:
        i = hint_args.index("--ckpt_path")
        target = Path(hint_args[i + 1]) if i + 1 < len(hint_args) else None
        if target is None or target.name != LAST_CHECKPOINT or not target.is_file():
            problems.append(f"run {number}'s resume command names no existing last.ckpt: {target}")
    return problems


def run_trial(
    trial: Trial, workdir: Path, references: Mapping[tuple[str, ...], Reference], number: int = 0
) -> TrialResult:
    """Stop, resume until finished, and compare with the reference of ``trial.extra_args``."""
    reference = references[trial.extra_args]
    save_dir = workdir / "logs"
    args = run_args(save_dir, trial.extra_args)
    attempts: list[Attempt] = []
    result = TrialResult(number, trial, attempts, 0.0)
    start = time.monotonic()
    max_time_trial = any(stop.at == "max_time" for stop in trial.stops)
    reference_end = reference.result.finished or {}
    while len(attempts) < MAX_ATTEMPTS and finished_folder(save_dir) is None:
        i = len(attempts)
        stop = trial.stops[i] if i < len(trial.stops) else None
        attempt_args = list(args)
        if max_time_trial and stop is None:
            attempt_args += ["--trainer.max_time", LONG_MAX_TIME]
        afresh = False
        if i > 0:
            if has_checkpoint(save_dir):
                attempt_args += ["--ckpt_path", "last"]
            else:
                afresh = True
        attempt = run_attempt(
            attempt_args, stop, save_dir, workdir / f"run{i + 1}", reference.times
        )
        attempt.started_afresh = afresh
        attempts.append(attempt)
        result.hint_problems += _check_hint(attempt, i + 1)
        if afresh:
            result.notes.append(f"run {i + 1} started afresh: no last.ckpt to resume")
        folder = finished_folder(save_dir)
        claimed = json.loads((folder / FINISHED_FILE).read_text()) if folder else {}
        short = [
            f"{key} {claimed.get(key)} of {reference_end.get(key)}"
            for key in ("epoch", "global_step")
            if folder is not None and claimed.get(key) != reference_end.get(key)
        ]
        if short and result.early is None:
            result.early = (
                f"finished.json after run {i + 1} (exit {attempt.exit_label()}) claims the end "
                f"at {', '.join(short)}"
            )
        if stop is not None and stop.at == "max_time":
            # Stopped by the limit: the run ended short of its end (with or without the file).
            attempt.reached = folder is None or bool(short)
        if folder is None and stop is None and attempt.returncode == 0:
            # Nothing stopped it, yet it did not finish: running it again would do the same.
            result.notes.append(f"run {i + 1} exited 0 without finished.json; not run again")
            break
    result.seconds = time.monotonic() - start
    result.folder = finished_folder(save_dir)
    result.finished = result.folder is not None
    folders = run_folders(save_dir)
    if result.folder is None and folders:
        result.folder = folders[-1]
    if result.folder is None:
        return result
    if len(folders) > 1:
        names = ", ".join(p.name for p in folders)
        result.notes.append(f"{len(folders)} run folders ({names}); compared {result.folder.name}")
    run = read_run(result.folder)
    ref_checkpoint = reference.result.checkpoint or {}
    for key, name in COMPARED.items():
        if run.checkpoint is None:
            result.entries[name] = f"(no {LAST_CHECKPOINT})"
        else:
            result.entries[name] = first_difference(run.checkpoint.get(key), ref_checkpoint[key])
    result.curves = compare_curves(run.curves, reference.result.curves)
    return result


# -- output --------------------------------------------------------------------------------------

ROW = "{:>3}  {:<50} {:<8} {:>4}  {:<22} {:<7} {:<7} {:<7} {:<24} {:>2} {:>6}  {}"
HEADER = ROW.format(
    "#", "moment", "kind", "runs", "exits", "weights", "optim", "sched", "curves", "tb", "time",
    "verdict",
)  # fmt: skip


def _cell(difference: str | None, present: bool) -> str:
    if not present:
        return "-"
    return "ok" if difference is None else "DIFF"


def format_row(result: TrialResult) -> str:
    """The trial's line, and under it a failed trial's details."""
    present = result.folder is not None
    name = result.trial.describe()
    if result.trial.moment != "random":
        name = f"{result.trial.moment}: {name}"
    exits = " ".join(a.exit_label() for a in result.attempts)
    verdict = result.verdict
    if verdict == "FAIL":
        verdict += ": " + ", ".join(result.failures())
    row = ROW.format(
        result.number,
        name[:50],
        result.trial.kind,
        len(result.attempts),
        exits[:22],
        _cell(result.entries.get("weights"), present),
        _cell(result.entries.get("optimizer"), present),
        _cell(result.entries.get("scheduler"), present),
        (result.curves.summary() if result.curves else "-")[:24],
        result.tracebacks,
        f"{result.seconds:.1f}s",
        verdict,
    )
    if verdict == "PASS":
        return row
    return "\n".join([row, *(f"{'':5}| {line}" for line in result.details())])


def format_tally(results: Sequence[TrialResult]) -> str:
    """The totals, and the chosen moments by kind."""
    tested = [r for r in results if r.verdict != "VOID"]
    compared = [r for r in tested if r.entries]
    passed = sum(r.verdict == "PASS" for r in tested)
    lines = [
        "",
        f"tally: {len(results)} trials: {passed} passed, {len(tested) - passed} failed, "
        f"{len(results) - len(tested)} void (the random stop came after the run ended)",
    ]

    def exact(name: str) -> str:
        return f"{sum(r.entries.get(name) is None for r in compared)}/{len(compared)}"

    curves_ok = sum(r.curves is not None and r.curves.ok for r in compared)
    lines.append(
        f"  bit-exact (of {len(compared)} compared): weights {exact('weights')}, optimizer "
        f"{exact('optimizer')}, scheduler {exact('scheduler')}, curves {curves_ok}/{len(compared)}"
    )
    lost = sum(len(r.curves.lost) for r in compared if r.curves)
    extra = sum(len(r.curves.extra) for r in compared if r.curves)
    dup = sum(len(r.curves.duplicated) for r in compared if r.curves)
    changed = sum(len(r.curves.changed) for r in compared if r.curves)
    lines.append(
        f"  curve points: {lost} lost, {extra} extra, {changed} changed, {dup} duplicated steps"
    )

    def which(pick: Callable[[TrialResult], bool]) -> str:
        found = [str(r.number) for r in tested if pick(r)]
        return f"{len(found)}" + (f" (#{', #'.join(found)})" if found else "")

    lines.append(
        f"  tracebacks: {which(lambda r: r.tracebacks > 0)} trials; finished early: "
        f"{which(lambda r: r.early is not None)}; not finished: "
        f"{which(lambda r: not r.finished)}; resume command wrong: "
        f"{which(lambda r: bool(r.hint_problems))}; chosen stop not reached: "
        f"{which(lambda r: not r.reached)}"
    )
    runs = Counter(len(r.attempts) for r in tested)
    lines.append(
        "  runs per trial: " + ", ".join(f"{n} runs x{c}" for n, c in sorted(runs.items()))
    )
    exits = Counter(a.exit_label() for r in results for a in r.attempts)
    lines.append("  exit statuses: " + ", ".join(f"{k} x{v}" for k, v in sorted(exits.items())))
    if results:
        mean = sum(r.seconds for r in results) / len(results)
        lines.append(f"  time per trial: {mean:.1f} s on average")
    chosen = [r for r in results if r.trial.moment != "random"]
    if chosen:
        kinds = [k for k in KINDS if any(r.trial.kind == k for r in chosen)]
        lines += ["", "chosen moments by kind (PASS / FAIL):"]
        lines.append(f"  {'moment':<20}" + "".join(f"{k:<10}" for k in kinds))
        cells: dict[tuple[str, str], str] = {
            (r.trial.moment, r.trial.kind): r.verdict for r in chosen
        }
        for moment in dict.fromkeys(r.trial.moment for r in chosen):
            row = "".join(f"{cells.get((moment, k), '-'):<10}" for k in kinds)
            lines.append(f"  {moment:<20}{row}")
    randoms = [r for r in results if r.trial.moment == "random"]
    if randoms:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in randoms:
            groups[(r.trial.stops[0].at, r.trial.kind)].append(r.verdict)
        lines += ["", "random trials by moment and kind (pass/tested, void):"]
        for (at, kind), verdicts in sorted(groups.items()):
            tested_n = sum(v != "VOID" for v in verdicts)
            lines.append(
                f"  {at:<12} {kind:<9} {verdicts.count('PASS')}/{tested_n}"
                + (f", {verdicts.count('VOID')} void" if "VOID" in verdicts else "")
            )
    return "\n".join(lines)


def describe_reference(reference: Reference, extra: Sequence[str]) -> str:
    """The reference's line: its times, its points, and any step it logs twice (a fault)."""
    curves = reference.result.curves
    line = (
        f"reference {' '.join(extra) or '(plain)'}: {reference.seconds:.1f} s (start-up "
        f"{reference.startup:.1f} s, training {reference.training:.1f} s), "
        f"{sum(map(len, curves.values()))} curve points in {len(curves)} tags"
    )
    dups = duplicated_steps(curves)
    if not dups:
        return line
    by_tag: dict[str, list[int]] = defaultdict(list)
    for tag, step in dups:
        by_tag[tag].append(step)
    shown = "; ".join(f"{tag} @ {', '.join(map(str, steps))}" for tag, steps in by_tag.items())
    return (
        f"{line}\n     | note: the uninterrupted run itself writes several points at these steps "
        f"(trials are compared with it point for point, so these are not counted): {shown}"
    )


# -- command line --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="random trials (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random trials")
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="kinds of stop (all)"
    )
    parser.add_argument(
        "--moments",
        nargs="+",
        choices=[*MOMENTS, "all", "none"],
        default=["all"],
        help="chosen moments to run ('all', the default, or 'none')",
    )
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--workdir", type=Path, default=None, help="where to train (a temp dir)")
    args = parser.parse_args(argv)
    moments = [] if "none" in args.moments else MOMENTS if "all" in args.moments else args.moments
    trials = chosen_trials(moments, args.kinds) + random_trials(args.trials, args.seed, args.kinds)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"chaos: {len(trials)} trials ({len(trials) - args.trials} chosen, {args.trials} random, "
        f"seed {args.seed}); each run: {EPOCHS} epochs x {TRAIN_BATCHES} training batches, "
        f"{VAL_BATCHES} validation batches, 1 thread; work dir {workdir}",
        flush=True,
    )
    try:
        references: dict[tuple[str, ...], Reference] = {}
        for extra in dict.fromkeys(t.extra_args for t in trials):
            ref = run_reference(workdir / f"reference{len(references)}", extra)
            references[extra] = ref
            print(describe_reference(ref, extra), flush=True)
        print("\n" + HEADER, flush=True)
        lock = threading.Lock()

        def one(numbered: tuple[int, Trial]) -> TrialResult:
            number, trial = numbered
            result = run_trial(trial, workdir / f"trial{number:02d}", references, number)
            with lock:
                print(format_row(result), flush=True)
            return result

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, enumerate(trials, 1)))
        print(format_tally(results))
    finally:
        if args.keep:
            print(f"\nrun folders kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
