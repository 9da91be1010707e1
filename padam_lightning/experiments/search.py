"""``padam-search``: search padam-fit settings with Optuna at a fixed budget; resumable, sharable.

Each trial is a :class:`FitJob` in ``<save dir>/<name>/trial-NNNN`` whose padam-fit reports the
metric per epoch and stops itself when pruned (:mod:`~padam_lightning.training.pruning`); one
whose padam-search died is retried from its ``last.ckpt``. docs/search.md: format, budget, design.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import shlex
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

from padam_lightning.cli.run_layout import DEFAULT_LOG_DIR, FINISHED_FILE
from padam_lightning.errors import UserError
from padam_lightning.experiments import sweep, sweep_jobs, sweep_spec
from padam_lightning.experiments.run_logs import check_output_folder, read_json_object
from padam_lightning.experiments.sweep_jobs import FitJob, RunInterruptedError
from padam_lightning.experiments.sweep_spec import Kind, format_override_value, require
from padam_lightning.training import pruners

if TYPE_CHECKING:
    import optuna

PROG = "padam-search"
HEARTBEAT = 30  #: seconds between a running trial's heartbeats unless the study has its own
MAX_FAILED_IN_A_ROW = 3  #: failed trials one after another that stop a search (a broken setup)
#: Keys padam-search sets (``trainer.callbacks.init_args.*`` set a base config's last callback).
_RESERVED = ("seed_everything", "trainer.logger", "ckpt_path", "config")
LIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  #: the trials that count, or may yet
SEARCH_KEYS: dict[str, Kind] = {  #: a search file's keys (name, space and trials required)
    "name": sweep_spec.NAME,
    "description": sweep_spec.STRING,
    "base": sweep_spec.CONFIGS,
    "space": (lambda v: isinstance(v, dict) and v, "a mapping of dotted config keys to ranges"),
    "overrides": sweep_spec.MAPPING,
    "trials": (lambda v: type(v) is int and v > 0, "a positive integer"),
    "metric": (lambda v: isinstance(v, str) and v, "a logged metric's name such as val/err"),
    "pruner": (lambda v: v in pruners.PRUNERS, f"one of {', '.join(pruners.PRUNERS)}"),
    "seed": (lambda v: type(v) is int and v >= 0, "a non-negative integer"),
}
RANGE = "{low, high}: finite, low < high, ints or floats, log: low > 0; or {choices: [scalars]}"


class SearchSpec(NamedTuple):
    """A parsed, validated search file."""

    name: str
    base: tuple[str, ...]
    space: dict[str, dict[str, Any]]
    overrides: dict[str, Any]
    trials: int
    metric: str = "val/err"
    pruner: str = "median"
    seed: int = 0


def load_spec(path: str | Path) -> SearchSpec:
    """Read and validate a search file; a mistake is one :class:`UserError` naming the key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or str(err).replace("\n", " ")
        raise UserError(f"search file {path} cannot be read as YAML: {why}") from err
    require(data, (lambda v: isinstance(v, dict), "a mapping with name, space, ..."), str(path))
    where, names = f"{path}: ", ", ".join(SEARCH_KEYS)
    sweep_spec.check_keys(data, SEARCH_KEYS, where, f"unknown key(s) {{}}; allowed: {names}")
    for key in ("name", "space", "trials"):
        require(data.get(key), SEARCH_KEYS[key], f"{where}{key}")
    for key in [*data["space"], *(data.get("overrides") or {})]:
        require(key, sweep_spec.DOTTED_KEY, f"{where}space or overrides key {key!r}")
        if any(key == reserved or key.startswith(f"{reserved}.") for reserved in _RESERVED):
            raise UserError(f"{where}{key} is set by padam-search itself; remove it.")
    space = {key: _range(value, f"{where}space.{key}") for key, value in data["space"].items()}
    base = sweep_spec.config_list(data.get("base"), f"{where}base")
    given = {key: data[key] for key in ("metric", "pruner", "seed") if key in data}
    return SearchSpec(
        data["name"], base, space, data.get("overrides") or {}, data["trials"], **given
    )


def _range(value: Any, where: str) -> dict[str, Any]:
    """One searched key: ``{low, high, log}`` (ints when both ends are) or ``{choices: [...]}``."""
    keys = set(value) if isinstance(value, dict) else set()
    choices = value["choices"] if keys == {"choices"} and type(value["choices"]) is list else []
    if choices and all(isinstance(c, int | float | str | None) for c in choices):  # as Optuna's
        return dict(value)
    low, high, log = (value.get(key) for key in ("low", "high", "log")) if keys else (0, 0, 0)
    ends = [type(end) in (int, float) and math.isfinite(end) and type(end) for end in (low, high)]
    numbers = ends[0] and ends[0] == ends[1] and low < high
    bad = not numbers or not {"low", "high"} <= keys <= {"low", "high", "log"}
    if bad or log not in (None, True, False) or (log and low <= 0):
        raise UserError(f"{where} must be {RANGE}, got {value!r}.")
    return {"low": low, "high": high, "log": bool(log), "int": type(low) is type(high) is int}


def trial_job(spec: SearchSpec, number: int, params: dict[str, Any], args: Any) -> FitJob:
    """The run of trial ``number`` (a retry's: the original trial's) with the values ``params``."""
    run = f"trial-{number:04d}"
    arguments = ["fit", *[a for c in spec.base for a in ("--config", c)]]
    arguments += ["--seed_everything", str(spec.seed)]
    for key, value in {**spec.overrides, **params}.items():
        arguments += [f"--{key}", format_override_value(value)]
    arguments += args.extra
    retrain = list(arguments)  # these settings in a run of their own: no study, no trial folder
    arguments += ["--trainer.callbacks+", "padam_lightning.training.pruning.OptunaPruning"]
    pruning = {"storage": args.storage, "study_name": spec.name, "trial": number}
    for key, value in {**pruning, "pruner": spec.pruner, "monitor": spec.metric}.items():
        arguments += [f"--trainer.callbacks.{key}", str(value)]
    for key, value in (("save_dir", args.save_dir), ("name", spec.name), ("version", run)):
        arguments += [f"--trainer.logger.init_args.{key}", value]
    axes = {"trial": {"label": run, "title": f"trial {number}", "index": number}}
    identity = {"sweep": spec.name, "run": run, "axes": axes, "seed": spec.seed}
    identity |= {"arguments": arguments, "retrain": retrain, "trial": number, "params": params}
    fit_command = shlex.split(args.fit_command or "") or sweep.default_fit_command()
    run_dir = Path.cwd() / args.save_dir / spec.name / run
    return FitJob(run, [*fit_command, *arguments], str(run_dir), str(Path.cwd()), identity)


def open_study(spec: SearchSpec, args: Any, tries: int = 2, dry: bool = False) -> Any:
    """The study in ``--storage``; ``dry``: write nothing (None for a study not made yet).

    Made with the spec's setup in its user attrs (space, base, overrides, metric, heartbeat).
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy import create_engine, inspect

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # padam-search says what happens itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    chosen: dict[str, Any] = {"study_name": spec.name, "pruner": pruners.make_pruner(spec.pruner)}
    chosen["sampler"] = pruners.trial_sampler(spec.seed)
    beat = args.heartbeat or HEARTBEAT
    missing = args.storage.startswith("sqlite:///") and not Path(args.storage[10:]).is_file()
    try:
        tables = dry and not missing and inspect(create_engine(args.storage)).get_table_names()
        if dry and "studies" not in (tables or ()):
            return None  # no Optuna tables, or no SQLite file, yet
        storage = pruners.rdb_storage(args.storage, beat, retry, create=not dry)
        if dry and spec.name not in optuna.study.get_all_study_names(storage):
            return None
        study = optuna.create_study(storage=storage, load_if_exists=True, **chosen)
    except Exception as err:  # Optuna's and SQLAlchemy's: a bad URL, no server, no driver
        if tries > 1 and not isinstance(err, ImportError | ValueError):  # two made one at once
            time.sleep(1)
            return open_study(spec, args, tries - 1, dry)
        raise UserError(f"--storage {args.storage}: {str(err).splitlines()[0]}") from err
    setup = {"space": spec.space, "base": spec.base, "overrides": spec.overrides}
    setup = json.loads(json.dumps({**setup, "metric": spec.metric}))  # as the storage keeps it
    made = study.user_attrs or {**setup, "heartbeat": beat}
    for key, value in made.items() if not (study.user_attrs or dry) else ():
        study.set_user_attr(key, value)
    other_beat = ["heartbeat"] * (args.heartbeat not in (None, made["heartbeat"]))
    if differ := [key for key in setup if made.get(key) != setup[key]] + other_beat:
        raise UserError(
            f"{args.spec}: study {spec.name} in {args.storage} was made with another "
            f"{', '.join(differ)}; go on as made (its search file, --heartbeat "
            f"{made['heartbeat']}) or give the search another name: for a new study."
        )
    args.heartbeat = storage.heartbeat_interval = made["heartbeat"]
    storage.grace_period = 2 * args.heartbeat
    return study


def _values(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={format_override_value(value)}" for key, value in params.items())


def describe(study: optuna.Study, spec: SearchSpec, args: argparse.Namespace) -> str:
    """One line: the study, its budget, what is done and the best trial so far."""
    trials = study.get_trials(deepcopy=False)
    n = Counter(t.state.name for t in trials) + Counter("failed" in t.user_attrs for t in trials)
    line = f"study {spec.name} ({args.spec}) in {args.storage}: {n['COMPLETE']} finished, "
    line += f"{n['PRUNED']} pruned, {n['RUNNING']} running, {n[True]} failed of {spec.trials}"
    if n["COMPLETE"]:
        best = study.best_trial
        line += (
            f"; best: trial {best.number}, {spec.metric} {best.value:.4g}, {_values(best.params)}"
        )
    return line


def run_trials(study: optuna.Study, spec: SearchSpec, args: Any, received: list[int]) -> bool:
    """Run trials until ``spec.trials`` are finished or pruned or a signal came; False: failures."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    executor = None
    if args.executor == "slurm":  # a SLURM job per trial; this process waits for each
        folder = Path.cwd() / args.save_dir / spec.name / ".submitit" / "%j"
        parameters = sweep.slurm_parameters(args, job_name=spec.name)
        executor = sweep_jobs.slurm_executor(folder, parameters)
    parallel = args.max_parallel or args.slurm_array_parallelism or 1  # SLURM jobs at once
    slots = [None] * parallel if executor else sweep.local_slots(args)
    free: queue.Queue[int | None] = queue.Queue()
    for slot in slots:
        free.put(slot)
    retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    failures = [0]  # in a row

    def objective(trial: optuna.trial.Trial) -> float:
        trials = study.get_trials(deepcopy=False)
        over = sum(t.state.name in LIVE for t in trials[: trial.number]) >= spec.trials
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[trial.number])
        if received or over or failures[0] >= MAX_FAILED_IN_A_ROW:  # FAIL, never run
            trial.set_user_attr("over_budget", over)
            if retried is not None and not over:  # a queued retry asked for now stays queued
                retry(study, trials[trial.number])
            study.stop()
            return math.nan
        params = pruners.suggest(trial, spec.space)
        number = trial.number if retried is None else retried
        job = trial_job(spec, number, params, args)
        trial.set_user_attr("run_dir", job.run_dir)
        again = f" (retry of trial {number})" if number != trial.number else ""
        _announce(f"trial {trial.number}{again}: {_values(params)}; {job.run_dir}")
        slot, start, why = free.get(), time.monotonic(), ""
        try:
            if executor is not None:
                executor.submit(job).result()
            else:
                sweep_jobs.run_on_slot(job, slot, echo=len(slots) == 1, signals=received)
        except RunInterruptedError:  # saved and stopped: a copy (WAITING) goes on from there
            retry(study, study.get_trials(deepcopy=False)[trial.number])
            study.stop()
            return math.nan
        except Exception as err:  # RunFailedError, OSError, or a SLURM job's failure
            why = (str(err).strip() or type(err).__name__).splitlines()[-1]
        finally:
            free.put(slot)
        if study.get_trials(deepcopy=False)[trial.number].state.name != "RUNNING":
            _announce(f"trial {trial.number}: another worker gave it up; its retry takes it over")
            raise RunInterruptedError  # Optuna cannot tell it: run_trials goes on
        took = f"{time.monotonic() - start:.0f} s"
        finished = {} if why else read_json_object(Path(job.run_dir) / FINISHED_FILE)[0] or {}
        value = (finished.get("metrics") or {}).get(spec.metric)
        if not isinstance(value, int | float):  # FAIL: the trial does not count
            why = why or f"no {spec.metric} in its {FINISHED_FILE} (see {job.log_path})"
            trial.set_user_attr("failed", why)  # counted as failed (over-budget ones are not)
            _announce(f"trial {trial.number} FAILED: {why}")
            failures[0] += 1
            return math.nan
        failures[0] = 0
        if finished.get("stop") == "pruned":
            epoch = f"epoch {finished.get('epoch')}, {took}"
            _announce(f"trial {trial.number}: pruned after {epoch} ({spec.metric} {value:.4g})")
            raise optuna.TrialPruned()
        _announce(f"trial {trial.number}: {spec.metric} {value:.4g} after {took}")
        return float(value)

    waited = False
    while not received and failures[0] < MAX_FAILED_IN_A_ROW:
        optuna.storages.fail_stale_trials(study)  # retries the trials of a search that died
        counts = Counter(trial.state.name for trial in study.get_trials(deepcopy=False))
        done, running = counts["COMPLETE"] + counts["PRUNED"], counts["RUNNING"]
        if (todo := spec.trials - done - running) > 0:
            try:
                study.optimize(objective, n_trials=todo, n_jobs=len(slots), gc_after_trial=False)
            except ValueError as err:  # "Cannot tell a FAIL trial": one another worker gave up
                if not str(err).startswith("Cannot tell a"):
                    raise
        elif running and done < spec.trials:  # another search's trials, or a dead search's
            if not waited:
                _announce(f"waiting for {running} running trial(s) to end or fall silent")
            waited = True
            time.sleep(args.heartbeat)
        else:
            break
    return failures[0] < MAX_FAILED_IN_A_ROW


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``padam-search``."""
    about = "Search padam-fit settings with Optuna (docs/search.md); the same command continues it."
    parser = argparse.ArgumentParser(prog=PROG, description=about + " `-- ARGS` go to each trial.")
    add = parser.add_argument
    add("spec", help="search YAML file, e.g. configs/searches/p_lr.yaml")
    add("--trials", type=int, metavar="N", help="the budget: trials finished or pruned")
    add("--storage", metavar="URL", help="Optuna storage (default sqlite in the search folder)")
    add("--dry-run", action="store_true", help="show the study and a trial's command; run none")
    add("--save-dir", default=DEFAULT_LOG_DIR, help=f"root log folder (default {DEFAULT_LOG_DIR})")
    add("--fit-command", metavar="CMD", help="training command instead of padam-fit")
    add("--heartbeat", type=int, metavar="S", help=f"trials' heartbeat (default {HEARTBEAT} s)")
    sweep.add_executor_arguments(parser)
    return parser


def run_search(argv: Sequence[str]) -> int:
    """Parse ``argv``, open the study and run trials until its budget is spent."""
    own, extra = sweep.split_passthrough(argv)
    args = build_parser().parse_args(own, argparse.Namespace(extra=extra))
    sweep.check_executor_arguments(args)
    if min(1 if n is None else n for n in (args.heartbeat, args.trials)) < 1:
        raise UserError("--trials and --heartbeat must be at least 1.")
    if args.no_wait:
        raise UserError("--no-wait is padam-sweep's: a search waits for each trial's result.")
    spec = (loaded := load_spec(args.spec))._replace(trials=args.trials or loaded.trials)
    check_output_folder(Path(args.save_dir) / spec.name, "the search's folder")
    database = Path(args.save_dir) / spec.name / "study.db"
    args.storage = args.storage or f"sqlite:///{database}"
    for option in args.extra:  # a searched key set after -- would override every trial's value
        if (key := option.removeprefix("--").split("=")[0]) in spec.space and option[:2] == "--":
            raise UserError(f"-- {option}: {key} is searched (space.{key}); remove one of them.")
    # padam-fit parses every choice and both ends (in as few runs as the longest list of them)
    ends = {k: r.get("choices") or [r["low"], r["high"]] for k, r in spec.space.items()}
    runs = max(map(len, ends.values()))
    picks = [{k: v[min(i, len(v) - 1)] for k, v in ends.items()} for i in range(runs)]
    for params in picks:  # a bad option or value fails every trial
        sweep.check_fit_arguments(trial_job(spec, 0, params, args))
    if args.dry_run:  # the study, if it is made (nothing is written), and what a trial runs
        if study := open_study(spec, args, dry=True):
            _announce(describe(study, spec, args))
        print(shlex.join(trial_job(spec, 0, picks[0], args).command))
        return 0
    database.parent.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, args)
    _announce(describe(study, spec, args))
    with sweep_jobs.stop_signals_passed_on(_announce) as received:
        ok = run_trials(study, spec, args, received)
    _announce(describe(study, spec, args))
    if received:
        print(f"{PROG}: interrupted; run the same command again to go on.", file=sys.stderr)
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
        print(f"{PROG}: interrupted; run the same command again to go on.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
