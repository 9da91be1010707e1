"""Optuna's side of a search's pruning, without Lightning: the pruners and a run's live trial.

``padam-search`` and the :class:`~padam_lightning.training.pruning.OptunaPruning` callback in each
trial's ``padam-fit`` both build the study's pruner here (a study does not store its pruner), and
the search's command starts without importing torch or Lightning.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

#: The pruners a search may name, as ``make_pruner`` builds them.
PRUNERS = ("median", "hyperband", "none")


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
