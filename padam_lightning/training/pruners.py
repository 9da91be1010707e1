"""Optuna's side of a search, without Lightning: the storage, the pruners and a run's live trial.

``padam-search`` and the :class:`~padam_lightning.training.pruning.OptunaPruning` callback in each
trial's ``padam-fit`` both open the storage and build the study's pruner here (a study does not
store its pruner), and the search's command starts without importing torch or Lightning.
"""

from __future__ import annotations

import random
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

#: The pruners a search may name, as ``make_pruner`` builds them.
PRUNERS = ("median", "hyperband", "none")


def rdb_storage(
    url: str,
    heartbeat: int | None = None,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    create: bool = True,
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``; heartbeats every ``heartbeat`` s, stale after twice that.

    Without ``create``, Optuna's tables are not made where they are missing (``--dry-run``).

    SQLite has no ``SELECT ... FOR UPDATE``, with which Optuna makes taking a queued trial and
    failing a stale one atomic: two workers could both take one retry (seen in
    ``tests/experiments/test_search.py``, 1 run in 3: "Cannot tell a COMPLETE trial"). Every
    SQLite transaction here starts with ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for SQLite
    transactions), so one worker reads and writes at a time, and waits up to 60 s for the file.
    """
    import optuna
    import sqlalchemy

    sqlite = url.startswith("sqlite")
    connect = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None
    storage = optuna.storages.RDBStorage(
        url,
        connect,
        heartbeat_interval=heartbeat,
        grace_period=2 * heartbeat if heartbeat else None,
        heartbeat_stale_trial_callback=on_stale,
        skip_table_creation=not create,
    )
    if sqlite:  # storage.engine: the SQLAlchemy engine RDBStorage made (a public attribute)
        begin = lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE")  # noqa: E731
        sqlalchemy.event.listen(storage.engine, "begin", begin)
        storage.engine.dispose()  # connections opened before the listener are not reused
    return storage


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The pruner ``name`` (one of :data:`PRUNERS`) with Optuna's defaults.

    Steps are epochs done (1, 2, ...). ``median`` prunes a trial whose best value so far is worse
    than the median of the finished trials' values at the same epoch, once 5 trials have finished
    (``n_startup_trials``; no warm-up epochs); ``hyperband`` runs Optuna's successive-halving
    brackets from 1 epoch up to the longest trial's epochs; ``none`` never prunes.
    """
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; expected one of {', '.join(PRUNERS)}")


def live_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial | None:
    """The running trial that trains run ``number``: the trial itself or its latest retry."""
    import optuna

    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        matches = [t for t in running if number in (t.number, retried(t))]
    return max(matches, key=lambda t: t.number) if matches else None


def trial_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's TPE sampler, seeded for each trial by ``(seed, trial number)``.

    One ``TPESampler(seed=seed)`` per process would draw the same sequence in every process:
    two workers sharing a study, or a search run again after a kill, would train the same values
    again. Seeded by the trial's number, a fresh search is reproducible from ``seed`` and no two
    trials of a study share a seed. (TPE still conditions on the trials done so far.)
    """
    import optuna

    class TrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._samplers: dict[int, optuna.samplers.TPESampler] = {}
            self._lock = threading.Lock()  # the trials of study.optimize(n_jobs=N) share it

        def _of(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
            with self._lock:
                if trial.number not in self._samplers:
                    trial_seed = random.Random(f"{seed}/{trial.number}").getrandbits(32)
                    tpe = optuna.samplers.TPESampler(seed=trial_seed, constant_liar=True)
                    self._samplers[trial.number] = tpe
                return self._samplers[trial.number]

        def infer_relative_search_space(self, study, trial):
            return self._of(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._of(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, name, distribution):
            return self._of(trial).sample_independent(study, trial, name, distribution)

        def before_trial(self, study, trial):
            self._of(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._of(trial).after_trial(study, trial, state, values)
            with self._lock:
                self._samplers.pop(trial.number, None)

    return TrialSeeded()


def suggest(trial: optuna.trial.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's value of each searched key (sampled, or those of the trial it retries)."""
    values = {}
    for key, r in space.items():
        if "choices" in r:
            values[key] = trial.suggest_categorical(key, r["choices"])
        else:
            sample = trial.suggest_int if r["int"] else trial.suggest_float
            values[key] = sample(key, r["low"], r["high"], log=r["log"])
    return values
