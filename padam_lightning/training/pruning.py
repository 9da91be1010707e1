"""Optuna pruning inside a training run: report the metric per epoch, stop a hopeless trial.

:class:`OptunaPruning` is the callback ``padam-search`` adds to each trial's ``padam-fit`` (its
arguments are plain strings and numbers, so it goes on the command line and into the run's
config). After each validation it loads the trial from the study's storage, reports the metric
at the number of epochs done and asks the study's pruner (not after the last epoch: a trial trained
to its end completes with its value). A pruned trial prints one line and
stops through :class:`~padam_lightning.training.run_record.RunRecord` with the stop ``pruned``:
``last.ckpt`` and ``finished.json`` are written as for a run's configured end, so the search
never resumes it.

optuna-integration's ``PyTorchLightningPruningCallback`` is not used: it needs a live
``optuna.trial.Trial`` (not something a command line can give), and it raises ``TrialPruned``
from inside ``on_validation_end``, which Lightning treats as a crash (no checkpoint, the run's
stop recorded as an error, a traceback). Optuna is imported when the fit starts, so the package
works without the ``search`` extra.
"""

from __future__ import annotations

import statistics
import sys
from typing import TYPE_CHECKING

import lightning as L

from padam_lightning.training.pruners import PRUNERS, live_trial, make_pruner, rdb_storage
from padam_lightning.training.run_record import RunRecord

if TYPE_CHECKING:
    import optuna


class OptunaPruning(L.Callback):
    """Report ``monitor`` to an Optuna trial after each validation; stop the run if pruned.

    Args:
        storage: The study's storage URL (``sqlite:///...``, ``postgresql://...``).
        study_name: The study's name.
        trial: The number of the trial whose run this is; a retry of that trial (Optuna's
            ``RetryHeartbeatStaleTrialCallback``) continues the same run and is found by it.
        pruner: One of :data:`PRUNERS`, as the search builds it.
        monitor: The logged metric reported (minimised).
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial: int,
        pruner: str = "median",
        monitor: str = "val/err",
    ) -> None:
        if pruner not in PRUNERS:
            raise ValueError(f"pruner: expected one of {', '.join(PRUNERS)}, got {pruner!r}")
        self.storage, self.study_name, self.trial = storage, study_name, trial
        self.pruner, self.monitor = pruner, monitor
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.BaseStorage | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load the study (process 0 only: it alone reports)."""
        if trainer.is_global_zero:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._storage = rdb_storage(self.storage)
            self._study = optuna.load_study(
                study_name=self.study_name, storage=self._storage, pruner=make_pruner(self.pruner)
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the metric at the epochs done; on a prune, stop the run as ``pruned``."""
        if trainer.sanity_checking:
            return
        message = self._report(trainer) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            message = trainer.strategy.broadcast(message)
        if message is None:
            return
        record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)  # type: ignore[attr-defined]
        if record is not None:
            record.request_stop("pruned", message=message)
        else:  # a plain Trainer: Lightning's own stop, at the epoch's end
            print(f"\n{message}", file=sys.stderr, flush=True)
            trainer.should_stop = True

    def _report(self, trainer: L.Trainer) -> str | None:
        """Report to the trial; the line to print when it is to be pruned, else None."""
        import optuna

        value = trainer.callback_metrics.get(self.monitor)
        study, storage = self._study, self._storage
        if value is None or study is None or storage is None:
            return None
        frozen = live_trial(study, self.trial)
        if frozen is None:  # no longer running (the search gave it up): train on
            return None
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        trial = optuna.trial.Trial(study, trial_id)
        step, score = trainer.current_epoch + 1, float(value)
        if step not in frozen.intermediate_values:  # a resumed epoch is reported once
            trial.report(score, step)
        last = step == trainer.max_epochs or 0 < trainer.max_steps <= trainer.global_step
        if last or not trial.should_prune():  # a trial trained to its end completes
            return None
        best = min([score, *frozen.intermediate_values.values()])
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        others = [t.intermediate_values[step] for t in finished if step in t.intermediate_values]
        if self.pruner == "median" and others:
            than = f"the median {statistics.median(others):.4g} of {len(others)} finished trials"
        else:
            than = f"what the {self.pruner} pruner keeps"
        return (
            f"padam-fit: trial {frozen.number} pruned after epoch {step}: its best {self.monitor} "
            f"{best:.4g} is worse than {than} at that epoch; the run ends here (stop: pruned)."
        )
