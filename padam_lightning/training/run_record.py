"""One record of where a training run stands, kept in every checkpoint, and the run's stops.

:class:`RunRecord` is the run's life in one place. It saves ``last.ckpt`` at the start of every
epoch (after the previous epoch's curve points are written and flushed), where a stop leaves
the run, and when the run reaches its configured end; it writes ``finished.json`` only then.
Every stop is a stop at a training-batch boundary through Lightning's own graceful SIGTERM
path (``Trainer.received_sigterm`` then ``SIGTERMException`` at the end of the batch):

- SIGTERM (a cluster's notice), SIGINT (Ctrl-C; a second one stops at once, saving nothing),
  SIGUSR1 (SLURM's requeue notice, ``#SBATCH --signal=USR1@90``) and ``max_time``;
- a stop asked for during validation or the sanity check waits for its end: Lightning cannot
  resume an evaluation half done, and restarting one there would skip the epoch's rest.

With Lightning's stateful training loader (:class:`~padam_lightning.data.sampling.
ResumableLoader`), the module's persistent epoch sums and TensorBoard's ``purge_step`` at the
record's ``global_step``, a resumed run equals the uninterrupted one: weights, optimizer,
schedulers, data order and every curve point (all on the global-step axis).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from padam_lightning.errors import TrainingDivergedError

#: Why a run stopped: its configured ends, then the stops that leave it to be continued. A run
#: ``pruned`` by a search (:mod:`~padam_lightning.training.pruning`) ends as finished: its search
#: never resumes it.
FINISHED_REASONS = ("max_epochs", "max_steps", "early_stopping", "pruned")
STOP_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SIGUSR1"}

#: The record's key in ``checkpoint["callbacks"]``.
RECORD_KEY = "RunRecord"


def read_record(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The :class:`RunRecord` saved in a loaded checkpoint (None if it has none)."""
    record = checkpoint.get("callbacks", {}).get(RECORD_KEY)
    return dict(record) if isinstance(record, dict) else None


class RunRecord(L.Callback):
    """Keep the run's record, save ``last.ckpt`` at every epoch start and stop, end in one place.

    The record (``state_dict``, saved atomically inside every checkpoint) holds ``epoch`` (the
    epoch in progress, from 0), ``batches`` (its training batches done), ``global_step`` (the
    TensorBoard step the next point goes to: a resumed run purges from there), ``stop`` (why the
    run stopped: ``max_epochs``, ``max_steps``, ``early_stopping``, ``pruned``, ``SIGINT``,
    ``SIGTERM``, ``SIGUSR1``, ``max_time``; None in the checkpoints of a run still going),
    ``train_seconds`` (training time so far, what ``max_time`` limits), ``world_size`` and
    ``config`` (the settings the run was started with, compared when it is resumed).

    Args:
        config: The run's settings as plain data (padam-fit's resolved config).
        max_time: Stop at a batch boundary once training has taken this long in all (summed over
            resumes); use this instead of ``Trainer(max_time=...)``, which ends the epoch there
            as if it were complete.
        max_steps: End the run at this global step, at a batch boundary; instead of
            ``Trainer(max_steps=...)``, which counts the epoch it ends in as complete (a run
            continued with more steps would skip the rest of that epoch).
        dirpath: Folder of ``last.ckpt``; default ``<log_dir>/checkpoints``.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        max_time: timedelta | None = None,
        max_steps: int | None = None,
        dirpath: str | Path | None = None,
    ) -> None:
        self.config = config
        self.max_time = max_time
        self.max_steps = max_steps
        self.dirpath = Path(dirpath) if dirpath is not None else None
        #: Why this fit stopped (see the class docstring); "diverged" or "error" for an exception.
        self.stop: str | None = None
        #: Where ``last.ckpt`` was saved by this fit's stop or end (None: nothing saved then),
        #: and the record it holds.
        self.saved: Path | None = None
        self.saved_state: dict[str, Any] = {}
        #: The record of the latest ``last.ckpt`` this fit saved (epoch starts included).
        self.last_state: dict[str, Any] = {}
        self._trainer: L.Trainer | None = None
        self._lightning_sigterm: Any = None
        self._previous_handlers: dict[int, Any] = {}
        self._pending = False
        self._signalled = False  # a stop signal has been received (a second SIGINT: at once)
        #: An open file whose lock says this process trains the run; closed when the fit ends.
        self.lock: Any = None
        self._loaded_stop: str | None = None
        self._seconds_before = 0.0
        self._started = time.monotonic()
        self._first_epoch = 0
        self._at_epoch_start = False

    # -- the record ----------------------------------------------------------------------------

    @property
    def trainer(self) -> L.Trainer | None:
        """The trainer of the latest fit (None before one starts)."""
        return self._trainer

    @property
    def state_key(self) -> str:
        """One record per run, whatever the callback's settings."""
        return RECORD_KEY

    def train_seconds(self) -> float:
        """Training time so far, over this fit and the ones it resumed."""
        return self._seconds_before + time.monotonic() - self._started

    def state_dict(self) -> dict[str, Any]:
        """The record of where the run stands now (see the class docstring)."""
        trainer = self._trainer
        if trainer is None:
            return {}
        epochs = trainer.fit_loop.epoch_progress.current
        mid_epoch = epochs.ready > epochs.completed and not self._at_epoch_start
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed if mid_epoch else 0
        return {
            "epoch": trainer.current_epoch,
            "batches": batches,
            "global_step": trainer.global_step,
            "stop": self.stop,
            "train_seconds": self.train_seconds(),
            "world_size": trainer.world_size,
            "config": self.config,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training time of the run being resumed."""
        self._seconds_before = float(state_dict.get("train_seconds", 0.0))
        self._loaded_stop = state_dict.get("stop")

    # -- stopping ------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Forget the previous fit's stop; keep one asked for while this fit was being built."""
        self._trainer = trainer
        self.saved = None
        if not self._pending:
            self.stop, self._signalled = None, False

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over the stop signals (Lightning has registered its own by now)."""
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over the stop signals; start the clock."""
        self._install()
        self._started = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def _install(self) -> None:
        if self._previous_handlers or not _in_main_thread():
            return
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self.on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the signals back their previous handlers; let the run folder go."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers, self._pending = {}, False
        self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def on_signal(self, signum: int, frame: Any) -> None:
        """The stop signals' handler: a stop at the next batch boundary.

        A signal while the run already stops or ends (``max_steps``, ``max_time``, its final
        save) changes nothing: that stop saves the run. Only a Ctrl-C after an earlier signal
        stops at once, saving nothing.
        """
        signalled, self._signalled = self._signalled, True
        if self.stop is None:
            self.request_stop(STOP_SIGNALS[signal.Signals(signum)])
        elif signum == signal.SIGINT and signalled:
            raise KeyboardInterrupt

    def request_stop(self, reason: str, message: str | None = None) -> None:
        """Stop at the next training-batch boundary that no validation or epoch end follows.

        The stop is passed to Lightning's SIGTERM handler only there: Lightning checks for it
        inside validation too, and a validation cut short would leave the epoch half counted.

        Args:
            reason: The stop, as the record keeps it (see the class docstring).
            message: The line to print instead of ``padam-fit: <reason>: stopping at ...``.
        """
        self.stop = reason
        self._pending = True
        trainer = self._trainer
        saves = self.dirpath is not None or trainer is None or trainer.checkpoint_callbacks
        what = "and saving a checkpoint" if saves else "(this run saves no checkpoints)"
        _say(message or f"padam-fit: {reason}: stopping at the next batch boundary {what}")

    def _forward(self, trainer: L.Trainer) -> None:
        """Hand a pending stop to Lightning, which stops at the end of this batch or epoch.

        Every process calls this at the same hooks; under DDP they first agree (one all-reduce
        of a flag): Lightning's handler broadcasts from process 0, which pairs up only when all
        processes call it at the same point (one process alone deadlocks in validation's sync).
        """
        pending = self._pending
        if trainer.world_size > 1:
            pending = trainer.strategy.reduce_boolean_decision(pending, all=False)
        if not pending:
            return
        self._pending = False
        self.stop = self.stop or "SIGTERM"  # another process's signal
        handler = self._lightning_sigterm
        if not callable(handler):
            raise KeyboardInterrupt  # no graceful path (not the main thread): stop at once
        handler(signal.SIGTERM, None)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A stop asked for before or during validation goes ahead now that it is complete."""
        self._forward(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A stop asked for in the epoch's last batch goes ahead after the epoch's end."""
        self._forward(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Stop at ``max_time``; pass a stop on where no validation or epoch end follows."""
        limit = self.max_time
        if self.stop is None and limit is not None:
            spent = torch.tensor(self.train_seconds() >= limit.total_seconds())
            if trainer.strategy.broadcast(spent):  # every process stops at the same batch
                self.request_stop("max_time")
        if (
            self.stop is None
            and self.max_steps is not None
            and trainer.global_step >= self.max_steps
        ):
            self.stop, self._pending = "max_steps", True
        interval = trainer.val_check_batch
        validation_follows = (
            trainer.enable_validation
            and isinstance(interval, int | float)
            and interval != float("inf")
            and (idx + 1) % int(interval) == 0
        )
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if not (validation_follows or last_batch):
            self._forward(trainer)

    # -- saving --------------------------------------------------------------------------------

    def last_checkpoint(self, trainer: L.Trainer) -> Path:
        """Where ``last.ckpt`` goes."""
        if self.dirpath is not None:
            return self.dirpath / "last.ckpt"
        root = trainer.log_dir if trainer.loggers else None
        return Path(root or trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def _save(self, trainer: L.Trainer, at_epoch_start: bool = False) -> None:
        if not trainer.checkpoint_callbacks and self.dirpath is None:
            return  # --trainer.enable_checkpointing false: the run writes no checkpoints
        for logger in trainer.loggers:
            logger.save()  # flushed first: the checkpoint never runs ahead of the curves
        path = self.last_checkpoint(trainer)
        self._at_epoch_start = at_epoch_start
        try:
            state = self.state_dict()
            trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint
        finally:
            self._at_epoch_start = False
        self.last_state = state
        if not at_epoch_start:
            self.saved, self.saved_state = path, state

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Write an epoch-start checkpoint as the end of the previous epoch.

        Lightning has counted the new epoch as ``ready`` just before its start hooks; a resume
        from there must start that epoch afresh, which is the state of the epoch before it ended.
        """
        if self._at_epoch_start:
            progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
            for counts in (progress["total"], progress["current"]):
                counts["ready"] = counts["completed"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last.ckpt``: the previous epoch is complete and its curve points written."""
        if trainer.current_epoch > self._first_epoch:
            self._save(trainer, at_epoch_start=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The run reached its configured end: save ``last.ckpt`` and write ``finished.json``."""
        if self.stop == "pruned":
            pass  # pruned in its last epoch's validation: the reason stays
        elif self.stop == "max_steps" or (
            trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        ):
            self.stop = "max_steps"
        elif trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
            self.stop = "max_epochs"
        else:
            self.stop = "early_stopping"
        self._save(trainer)
        self._write_finished(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Finish a run resumed from a stop at its very end (Lightning then trains nothing)."""
        if self.stop is not None or not _epochs_done(trainer):
            return
        if self._loaded_stop in FINISHED_REASONS:
            self.stop = self._loaded_stop  # it had finished: its checkpoint stays as it is
            log_dir = trainer.log_dir if trainer.loggers else None  # collective under DDP
            if log_dir is not None and not (Path(log_dir) / "finished.json").is_file():
                self._write_finished(trainer)  # killed between the last save and this file
                return
            limit = "max_steps" if self.stop == "max_steps" else "max_epochs"
            _say(f"padam-fit: the run had already finished; raise --trainer.{limit} to go on")
            return
        self.on_train_end(trainer, pl_module)

    def _write_finished(self, trainer: L.Trainer) -> None:
        log_dir = trainer.log_dir if trainer.loggers else None  # a collective call under DDP
        if log_dir is not None and trainer.is_global_zero:
            metrics = {
                name: float(value)
                for name, value in trainer.callback_metrics.items()
                if isinstance(value, torch.Tensor) and value.numel() == 1
            }
            summary = {**self.state_dict(), "config": None, "metrics": metrics}
            summary.pop("config")
            _write_json(Path(log_dir) / "finished.json", summary)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save where a graceful stop left the run; record why anything else ended it."""
        if isinstance(exception, SIGTERMException):
            if self.stop is None:
                self.stop = "SIGTERM"  # Lightning's own handler, before ours was installed
            if _epochs_done(trainer) and self.stop != "pruned":
                self.stop = "max_epochs"  # stopped where the run ends anyway
            self._save(trainer)
            if self.stop in FINISHED_REASONS:
                self._write_finished(trainer)
        elif isinstance(exception, KeyboardInterrupt):
            self.stop = "SIGINT"
        else:
            self.stop = "diverged" if isinstance(exception, TrainingDivergedError) else "error"
        self._pending = False
        self._release()  # Lightning calls no teardown hook after an exception


def _epochs_done(trainer: L.Trainer) -> bool:
    return trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@rank_zero_only
def _say(message: str) -> None:
    print(f"\n{message}", file=sys.stderr, flush=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so that a crash leaves the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
