"""``padam-search``: search padam-fit settings with Optuna at a fixed budget; resumable, sharable.

    padam-search configs/searches/cpu_p_lr.yaml --dry-run      # the study so far, a trial's command
    padam-search configs/searches/p_lr.yaml --storage postgresql://me@db/padam   # on each machine

Each trial is a :class:`FitJob` in ``<save dir>/<name>/trial-NNNN`` whose padam-fit reports the
metric per epoch and stops itself when pruned (:mod:`~padam_lightning.training.pruning`); a trial
whose padam-search died is retried from its ``last.ckpt``. docs/search.md gives the file format,
the budget rule and the reasons for the design.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import queue
import re
import shlex
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from padam_lightning.cli.run_layout import DEFAULT_LOG_DIR, FINISHED_FILE
from padam_lightning.errors import UserError
from padam_lightning.experiments import sweep, sweep_jobs
from padam_lightning.experiments.run_logs import check_output_folder, read_json_object
from padam_lightning.experiments.sweep_jobs import FitJob, RunInterruptedError
from padam_lightning.experiments.sweep_spec import config_list, format_override_value
from padam_lightning.training.pruners import PRUNERS, make_pruner

if TYPE_CHECKING:
    import optuna

PROG = "padam-search"
SPEC_KEYS = ("name", "description", "base", "space", "trials", "metric", "pruner", "seed")
#: A search stops after this many trials failed one after another (a broken setup fails all).
MAX_FAILED_IN_A_ROW = 3
INTERRUPTED = f"{PROG}: interrupted; run the same command again to go on."
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: Keys padam-search sets itself: the seed, where a trial logs, resuming, the pruning callback.
_RESERVED = ("seed_everything", "trainer.logger", "ckpt_path", "config", "trainer.callbacks")
#: The class padam-search adds to each trial's callbacks.
PRUNING_CALLBACK = "padam_lightning.training.pruning.OptunaPruning"


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


#: Each top-level key's check, and what it expects.
_CHECKS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "name": (lambda v: isinstance(v, str) and _NAME.match(v), "a folder-safe name (a-z 0-9 ._+=-)"),
    "space": (lambda v: isinstance(v, dict) and v, "a mapping of dotted keys to ranges or choices"),
    "trials": (lambda v: _count(v) and v > 0, "a positive integer"),
    "metric": (lambda v: isinstance(v, str) and v, "a logged metric's name such as val/err"),
    "pruner": (lambda v: v in PRUNERS, f"one of {', '.join(PRUNERS)}"),
    "seed": (_count, "a non-negative integer"),
}


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A parsed, validated search file."""

    name: str
    base: tuple[str, ...]
    space: dict[str, dict[str, Any]]
    trials: int
    metric: str
    pruner: str
    seed: int
    source: Path


def load_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search file; a mistake is one :class:`UserError` naming the key."""
    source, where = Path(path), str(path)
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or str(err).replace("\n", " ")
        raise UserError(f"search file {source} cannot be read as YAML: {why}") from err
    for key in data if isinstance(data, dict) else ["(the file is not a mapping)"]:
        if key not in SPEC_KEYS:
            raise UserError(f"{where}: unknown key {key}; allowed: {', '.join(SPEC_KEYS)}.")
    data = {"metric": "val/err", "pruner": "median", "seed": 0, **data}
    for key, (ok, expected) in _CHECKS.items():
        if not ok(data.get(key)):
            raise UserError(f"{where}: {key} must be {expected}, got {data.get(key)!r}.")
    space = data["space"].items()
    ranges = {key: _parse_range(key, value, f"{where}: space.{key}") for key, value in space}
    base = config_list(data.get("base"), f"{where}: base")
    fields = {key: data[key] for key in ("name", "trials", "metric", "pruner", "seed")}
    return SearchSpec(base=base, space=ranges, source=source, **fields)


def _parse_range(key: Any, value: Any, where: str) -> dict[str, Any]:
    """One searched key: ``{low, high, log}`` (ints when both ends are) or ``{choices: [...]}``."""
    if not isinstance(key, str) or not _DOTTED_KEY.match(key):
        raise UserError(f"{where}: not a dotted config key such as model.optimizer.init_args.lr.")
    if any(key == reserved or key.startswith(f"{reserved}.") for reserved in _RESERVED):
        raise UserError(f"{where}: set by padam-search itself; remove it.")
    if isinstance(value, dict) and set(value) == {"choices"}:
        choices = value["choices"]
        scalar = (str, int, float, bool, type(None))
        if isinstance(choices, list) and choices and all(isinstance(c, scalar) for c in choices):
            return {"choices": choices}
        raise UserError(f"{where}: choices must be a non-empty list of numbers or strings.")
    value = value if isinstance(value, dict) and not set(value) - {"low", "high", "log"} else {}
    low, high, log = value.get("low"), value.get("high"), value.get("log", False)
    ends = [v for v in (low, high) if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(ends) != 2 or not ends[0] < ends[1] or not isinstance(log, bool) or (log and low <= 0):
        expected = "{low, high, log} with low < high (low > 0 with log: true), or {choices: [...]}"
        raise UserError(f"{where}: expected {expected}.")
    return {"low": low, "high": high, "log": log}


def suggest(trial: optuna.trial.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's value of each searched key (sampled, or those of the trial it retries)."""
    values = {}
    for key, r in space.items():
        if "choices" in r:
            values[key] = trial.suggest_categorical(key, r["choices"])
        else:
            whole = isinstance(r["low"], int) and isinstance(r["high"], int)
            sample = trial.suggest_int if whole else trial.suggest_float
            values[key] = sample(key, r["low"], r["high"], log=r["log"])
    return values


def trial_job(spec: SearchSpec, number: int, params: dict[str, Any], args: Any) -> FitJob:
    """The run of trial ``number`` (a retry's: the original trial's) with the values ``params``."""
    run = f"trial-{number:04d}"
    arguments = ["fit", *[a for c in spec.base for a in ("--config", c)]]
    arguments += ["--seed_everything", str(spec.seed)]
    for key, value in params.items():
        arguments += [f"--{key}", format_override_value(value)]
    arguments += [*args.extra, "--trainer.callbacks+", PRUNING_CALLBACK]
    pruning = {"storage": args.storage, "study_name": spec.name, "trial": number}
    for key, value in {**pruning, "pruner": spec.pruner, "monitor": spec.metric}.items():
        arguments += [f"--trainer.callbacks.{key}", str(value)]
    for key, value in (("save_dir", args.save_dir), ("name", spec.name), ("version", run)):
        arguments += [f"--trainer.logger.init_args.{key}", value]
    axes = {"trial": {"label": run, "title": f"trial {number}", "index": number}}
    identity = {"sweep": spec.name, "run": run, "axes": axes, "seed": spec.seed}
    identity |= {"arguments": arguments, "trial": number, "params": params}
    fit_command = shlex.split(args.fit_command or "") or sweep.default_fit_command()
    run_dir = Path.cwd() / args.save_dir / spec.name / run
    return FitJob(run, [*fit_command, *arguments], str(run_dir), str(Path.cwd()), identity)


def open_study(spec: SearchSpec, args: argparse.Namespace) -> optuna.Study:
    """The study in ``--storage`` (created on first use), with heartbeats and retries on."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # padam-search says what happens itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    # SQLite locks the whole file per write: wait for it rather than fail at once.
    wait = {"connect_args": {"timeout": 60}} if args.storage.startswith("sqlite") else None
    beat = {"heartbeat_interval": args.heartbeat, "grace_period": 2 * args.heartbeat}
    for attempt in (1, 2):  # two searches creating one study's tables at once: one loses
        try:
            storage = RDBStorage(args.storage, wait, heartbeat_stale_trial_callback=retry, **beat)
            return optuna.create_study(
                study_name=spec.name,
                storage=storage,
                sampler=optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True),
                pruner=make_pruner(spec.pruner),
                direction="minimize",
                load_if_exists=True,
            )
        except Exception as err:  # Optuna's and SQLAlchemy's: a bad URL, no server, no driver
            if attempt == 2 or isinstance(err, ImportError | ValueError):
                raise UserError(f"--storage {args.storage}: {str(err).splitlines()[0]}") from err
            time.sleep(1)
    raise AssertionError("unreachable")


def tally(study: optuna.Study) -> Counter[str]:
    """How many trials are in each state (``COMPLETE``, ``PRUNED``, ``RUNNING``, ...)."""
    return Counter(trial.state.name for trial in study.get_trials(deepcopy=False))


def _values(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={format_override_value(value)}" for key, value in params.items())


def describe(study: optuna.Study, spec: SearchSpec, storage: str) -> str:
    """One line: the study, its budget, what is done and the best trial so far."""
    n = tally(study)
    line = f"study {spec.name} ({spec.source}) in {storage}: {n['COMPLETE']} finished, "
    line += f"{n['PRUNED']} pruned, {n['RUNNING']} running, {n['FAIL']} failed of {spec.trials}"
    if not n["COMPLETE"]:
        return line
    best = study.best_trial
    return (
        f"{line}; best: trial {best.number}, {spec.metric} {best.value:.4g}, {_values(best.params)}"
    )


def run_trials(study: optuna.Study, spec: SearchSpec, args: Any, received: list[int]) -> bool:
    """Run trials until ``spec.trials`` are finished or pruned or a signal came; False: failures."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    executor = None
    if args.executor == "slurm":  # a SLURM job per trial; this process waits for each
        folder = Path.cwd() / args.save_dir / spec.name / ".submitit" / "%j"
        parameters = sweep.slurm_parameters(args, job_name=spec.name)
        executor = sweep_jobs.slurm_executor(folder, parameters)
    slots = [None] * (args.max_parallel or 1) if executor else sweep.local_slots(args)
    free: queue.Queue[int | None] = queue.Queue()
    for slot in slots:
        free.put(slot)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    interrupted: list[int] = []
    failures = [0]  # in a row

    def failed(trial: optuna.trial.Trial, why: str) -> float:
        _announce(f"trial {trial.number} FAILED: {why}")
        failures[0] += 1
        if failures[0] >= MAX_FAILED_IN_A_ROW:
            study.stop()
        return math.nan  # the trial fails and does not count

    def objective(trial: optuna.trial.Trial) -> float:
        trials = study.get_trials(deepcopy=False)
        if received or sum(t.state in live for t in trials[: trial.number]) >= spec.trials:
            trial.set_user_attr("over_budget", not received)
            study.stop()
            return math.nan  # FAIL, never ran
        params = suggest(trial, spec.space)
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[trial.number])
        number = trial.number if retried is None else retried
        job = trial_job(spec, number, params, args)
        trial.set_user_attr("run_dir", job.run_dir)
        again = f" (retry of trial {number})" if number != trial.number else ""
        _announce(f"trial {trial.number}{again}: {_values(params)}; {job.run_dir}")
        slot, start = free.get(), time.monotonic()
        try:
            if executor is not None:
                executor.submit(job).result()
            else:
                sweep_jobs.run_on_slot(job, slot, echo=len(slots) == 1, signals=received)
        except RunInterruptedError:
            interrupted.append(trial.number)
            return math.nan
        except Exception as err:  # RunFailedError, OSError, or a SLURM job's failure
            return failed(trial, (str(err).strip() or type(err).__name__).splitlines()[-1])
        finally:
            free.put(slot)
        took = f"{time.monotonic() - start:.0f} s"
        finished = read_json_object(Path(job.run_dir) / FINISHED_FILE)[0] or {}
        value = (finished.get("metrics") or {}).get(spec.metric)
        if not isinstance(value, int | float):
            return failed(trial, f"no {spec.metric} in its {FINISHED_FILE} (see {job.log_path})")
        failures[0] = 0
        if finished.get("stop") == "pruned":
            _announce(f"trial {trial.number}: pruned after {took} ({spec.metric} {value:.4g})")
            raise optuna.TrialPruned()
        _announce(f"trial {trial.number}: {spec.metric} {value:.4g} after {took}")
        return float(value)

    retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    waited = False
    while not received and failures[0] < MAX_FAILED_IN_A_ROW:
        optuna.storages.fail_stale_trials(study)  # retries the trials of a search that died
        counts = tally(study)
        done, running = counts["COMPLETE"] + counts["PRUNED"], counts["RUNNING"]
        if (todo := spec.trials - done - running) > 0:
            study.optimize(objective, n_trials=todo, n_jobs=len(slots), gc_after_trial=False)
            for number in interrupted:  # stopped by a signal: the next search retries it first
                retry(study, study.get_trials(deepcopy=False)[number])
            interrupted.clear()
        elif running and done < spec.trials:
            if not waited:
                old = f"retried once its heartbeat is {2 * args.heartbeat} s old"
                _announce(f"waiting for {running} running trial(s) (another search's, or {old})")
            waited = True
            time.sleep(args.heartbeat)
        else:
            break
    return failures[0] < MAX_FAILED_IN_A_ROW


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-search``."""
    about = (
        "Search padam-fit settings with Optuna: each trial is a padam-fit run in SAVE_DIR/<name>/"
        "trial-NNNN, pruned by its per-epoch metric. The same command continues the search to its "
        "budget; several processes may share one --storage. Arguments after `--` go to each trial."
    )
    parser = argparse.ArgumentParser(prog=PROG, description=about)
    add = parser.add_argument
    add("spec", help="search YAML file, e.g. configs/searches/p_lr.yaml")
    add("--trials", type=int, metavar="N", help="the budget: trials finished or pruned")
    add("--storage", metavar="URL", help="Optuna storage (default sqlite in the search folder)")
    add("--dry-run", action="store_true", help="show the study and a trial's command; run none")
    add("--save-dir", default=DEFAULT_LOG_DIR, help=f"root log folder (default {DEFAULT_LOG_DIR})")
    add("--fit-command", metavar="CMD", help="training command instead of padam-fit")
    beat = "seconds between a trial's heartbeats; one silent for 2 x S is retried (default 30)"
    add("--heartbeat", type=int, default=30, metavar="S", help=beat)
    sweep.add_executor_arguments(parser)
    return parser


def run_search(argv: Sequence[str]) -> int:
    """Parse ``argv``, open the study and run trials until its budget is spent."""
    own, extra = sweep.split_passthrough(argv)
    args = build_parser().parse_args(own)
    args.extra = extra
    sweep.check_executor_arguments(args)
    if args.heartbeat < 1 or (args.trials is not None and args.trials < 1):
        raise UserError("--trials and --heartbeat must be at least 1.")
    if args.no_wait:
        raise UserError("--no-wait is padam-sweep's: a search waits for each trial's result.")
    spec = load_spec(args.spec)
    spec = dataclasses.replace(spec, trials=args.trials or spec.trials)
    check_output_folder(Path(args.save_dir) / spec.name, "the search's folder")
    database = Path(args.save_dir) / spec.name / "study.db"
    args.storage = args.storage or f"sqlite:///{database}"
    first = {k: s["choices"][0] if "choices" in s else s["low"] for k, s in spec.space.items()}
    sweep.check_fit_arguments(trial_job(spec, 0, first, args))  # a bad option fails every trial
    if args.dry_run:  # the study, unless it is yet to be made, and what a trial runs
        if args.storage != f"sqlite:///{database}" or database.exists():
            _announce(describe(open_study(spec, args), spec, args.storage))
        print(shlex.join(trial_job(spec, 0, first, args).command))
        return 0
    database.parent.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, args)
    _announce(describe(study, spec, args.storage))
    with sweep_jobs.stop_signals_passed_on(_announce) as received:
        ok = run_trials(study, spec, args, received)
    _announce(describe(study, spec, args.storage))
    if received:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + received[0]
    if not ok:
        _announce(f"stopped: {MAX_FAILED_IN_A_ROW} trials failed in a row (see their fit.log).")
    return 0 if ok else 1


def _announce(line: str) -> None:
    print(f"{PROG}: {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``padam-search``; a mistake prints one line and exits with status 2."""
    try:
        return run_search(sys.argv[1:] if argv is None else argv)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
