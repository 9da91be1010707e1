"""Checkpoint files that survive crashes, and a marker for runs that finished."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from lightning.pytorch.utilities import move_data_to_device
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import Sampler
from torchmetrics import Metric

from padam_lightning.cli.run_layout import FINISHED_FILE, LAST_CHECKPOINT
from padam_lightning.training.tensorboard import process_is_alive

#: Temporary files are named ``.<target>.tmp-<pid>`` beside their target.
_TEMP_MARK = ".tmp-"


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that processes killed during a save left in ``folder``.

    A temporary file holds a whole checkpoint (hundreds of MB for the larger networks), so each
    crash during a save would otherwise leak one. Files of processes still running are kept.

    Returns:
        The files deleted.
    """
    removed = []
    for tmp in folder.glob(f".*{_TEMP_MARK}*"):
        pid = tmp.name.rsplit(_TEMP_MARK, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_is_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints so that a crash during a save never leaves a truncated file.

    The checkpoint goes to a temporary file in the destination folder, is flushed to disk, and
    then replaces the old file with one atomic rename. A process killed at any moment leaves
    either the previous checkpoint or the new one, never a partial file; the temporary file it
    may leave is deleted by the next save into that folder. (Lightning's own writer stages
    through the system temp folder and falls back to a non-atomic copy across devices.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically (local paths only)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target.parent)
        tmp = target.with_name(f".{target.name}{_TEMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        # Make the rename itself durable.
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class LastCheckpoint(ModelCheckpoint):
    """Save ``checkpoints/last.ckpt`` in the run folder at the end of every training epoch.

    A separate callback from the best-by-``val/err`` one because Lightning's ``save_last`` only
    refreshes ``last.ckpt`` in epochs where a top-k checkpoint was written. Saving at the end of the
    training epoch (after validation) means a resumed run starts cleanly at the next epoch.
    """

    def __init__(self) -> None:
        super().__init__(
            filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        #: Whether the last fit's stop saved ``last.ckpt`` where it stopped (see on_exception).
        self.saved_at_stop = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save ``last.ckpt`` where a fit stopped on SIGTERM or Ctrl-C (see :class:`Interruption`).

        Lightning raises ``SIGTERMException`` at the end of a training batch, so the state is
        consistent; other exceptions (divergence, a refused resume, a crash) keep the checkpoint
        of the last completed epoch. A stop during validation or sanity checking saves nothing.
        :attr:`saved_at_stop` says which happened.
        """
        self.saved_at_stop = False
        if (
            isinstance(exception, SIGTERMException)
            and trainer.state.fn == TrainerFn.FITTING
            and trainer.training
            and self.dirpath is not None
        ):
            trainer.save_checkpoint(Path(self.dirpath) / LAST_CHECKPOINT)
            self.saved_at_stop = True


def _last_checkpoint(trainer: L.Trainer) -> Path | None:
    """Where a stop in training saves ``last.ckpt`` (None: the run has no LastCheckpoint)."""
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, LastCheckpoint) and callback.dirpath is not None:
            return Path(callback.dirpath) / LAST_CHECKPOINT
    return None


def _kept(trainer: L.Trainer) -> str:
    """What a stop that saves nothing leaves to continue from, for a message."""
    last = _last_checkpoint(trainer)
    return "the run's last checkpoint is kept" if last and last.is_file() else "it has none yet"


class RunSummary(L.Callback):
    """Write ``finished.json`` into the run folder when a fit ends normally.

    Sweeps use the file to tell finished runs (skipped) from interrupted ones (resumed).
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the final epoch, step and metrics (process 0 writes)."""
        if not trainer.loggers:
            return  # no run folder: without a logger log_dir is merely the working directory
        # Every process must ask for log_dir: under DDP it is a collective broadcast.
        log_dir = trainer.log_dir
        if trainer.interrupted or not trainer.is_global_zero or log_dir is None:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        summary = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "max_epochs": trainer.max_epochs,
            "metrics": metrics,
        }
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        write_text_atomically(Path(log_dir) / FINISHED_FILE, text)


#: Checkpoint key of an interrupted epoch's progress, written by :class:`Interruption`.
MID_EPOCH_KEY = "padam_lightning_mid_epoch"


class _SkipFirstSamples(Sampler[int]):
    """A sampler that leaves out the first ``skip`` samples of its next pass, once.

    Batches of ``batch_size`` drawn from it after skipping ``k * batch_size`` samples are the
    batches ``k, k + 1, ...`` of the full pass: the epoch's order depends only on the seed and the
    epoch, so a run resumed mid-epoch trains on exactly the batches it had not trained on yet.
    """

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner = inner
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on (Lightning sets it on every sampler each epoch)."""
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)


class Interruption(L.Callback):
    """Stop cleanly on Ctrl-C or SIGTERM, save where the run stopped, and resume exactly there.

    Lightning's signal connector turns SIGTERM (a cluster's notice before its time limit) into a
    stop at the end of the current training batch; this callback makes the first Ctrl-C (SIGINT)
    do the same, through Lightning's own SIGTERM handler (a second Ctrl-C stops at once, without a
    checkpoint). :class:`LastCheckpoint` then saves ``last.ckpt`` at that batch boundary, and this
    callback adds what Lightning does not keep of a half-done epoch:

    - the number of batches done, so the resumed run skips them (the epoch's order is a pure
      function of the seed and the epoch; Lightning otherwise restarts the epoch's data);
    - the module's torchmetrics accumulators (the epoch's mean loss and error so far; under DDP
      summed over the processes, so metrics whose states are sums, as the module's are);
    - and on resume it calls the ``on_train_epoch_start`` hooks that Lightning skips when it
      restarts mid-epoch, so the epoch's ``optim/*`` values are logged as in an uninterrupted run.

    With that, weights, optimizer state and the per-epoch curves of a resumed run equal those of a
    run that was never stopped. A stop during validation saves nothing new (the run's last
    checkpoint is kept, and continuing repeats the training since it): Lightning cannot resume an
    evaluation half done. What Ctrl-C prints says which of the two will happen.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None  # "SIGINT" or "SIGTERM" once one stopped the run
        #: Whether the signal stopped the run during validation (or sanity checking).
        self.stopped_in_validation = False
        self._trainer: L.Trainer | None = None
        self._save_promised = False  # Ctrl-C's message said a checkpoint would be saved
        self._previous_sigint: Any = None
        self._pending: dict[str, Any] | None = None
        self._bars_to_start: list[ProgressBar] = []

    # -- stopping ------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Route the first Ctrl-C of a fit to Lightning's graceful SIGTERM stop."""
        self.signal_name = None
        self.stopped_in_validation = self._save_promised = False
        self._trainer = trainer
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give Ctrl-C back its previous meaning."""
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # Restored first, so a second Ctrl-C raises KeyboardInterrupt at once.
        signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        self._previous_sigint = None
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler):  # Lightning's handler is not installed: stop the usual way
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        print("\n" + self._stop_notice(), file=sys.stderr, flush=True)
        handler(signum, frame)

    def _stop_notice(self) -> str:
        """What a stop asked for now will do, in one line: save where it stops, or not."""
        trainer = self._trainer
        if trainer is not None and (trainer.sanity_checking or trainer.validating):
            return (
                "padam-fit: stopping after this validation batch, without saving a checkpoint "
                f"(none is saved during validation: {_kept(trainer)}; Ctrl-C again stops at "
                "once)"
            )
        if trainer is None or _last_checkpoint(trainer) is None:
            return (
                "padam-fit: stopping after this batch; this run saves no checkpoints (Ctrl-C "
                "again stops at once)"
            )
        self._save_promised = True
        return (
            "padam-fit: stopping after this batch and saving a checkpoint (Ctrl-C again stops "
            "at once, without one)"
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Correct Ctrl-C's promise when validation follows the batch and the stop falls in it.

        Lightning finishes a training batch that validation follows with the validation, and
        stops that after its first batch (unless it is the only one): then nothing is saved.
        """
        if (
            self._save_promised
            and trainer.received_sigterm
            and any(n > 1 for n in trainer.num_val_batches)
        ):
            self._save_promised = False
            print(
                "padam-fit: validation follows that batch and the run stops in it, where no "
                f"checkpoint is saved: {_kept(trainer)}",
                file=sys.stderr,
                flush=True,
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Remember which signal stopped the run, and where (for the exit status and message)."""
        if isinstance(exception, SIGTERMException):
            if self.signal_name is None:
                self.signal_name = "SIGTERM"
            self.stopped_in_validation = trainer.sanity_checking or trainer.validating
        elif isinstance(exception, KeyboardInterrupt) and self.signal_name is None:
            # Ctrl-C before setup() routed it to the graceful stop (Lightning then exits 1).
            self.signal_name = "SIGINT"
            self.stopped_in_validation = trainer.sanity_checking or trainer.validating

    # -- saving and restoring a half-done epoch -------------------------------------------------

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Record the epoch's progress in a checkpoint saved at an interruption."""
        if trainer.state.status != TrainerStatus.INTERRUPTED or not trainer.training:
            return
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        metrics = {}
        for name, metric in pl_module.named_modules():
            if isinstance(metric, Metric) and metric.update_count > 0:
                state = metric.metric_state
                if trainer.world_size > 1:
                    # Every process saves through here, process 0 writes: its file must hold the
                    # epoch's sums over all processes (restored on process 0 alone, see
                    # on_train_start). Metrics whose states are not sums are not supported.
                    state = {
                        key: trainer.strategy.reduce(value.clone(), reduce_op="sum")
                        if isinstance(value, torch.Tensor)
                        else value
                        for key, value in state.items()
                    }
                metrics[name] = {key: _detached(value) for key, value in state.items()}
        checkpoint[MID_EPOCH_KEY] = {
            "epoch": trainer.current_epoch,
            "batches": batches,
            "metrics": metrics,
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the interrupted epoch's progress until training starts."""
        self._pending = checkpoint.get(MID_EPOCH_KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Continue a half-done epoch: skip its done batches, restore its metrics and logs."""
        pending, self._pending = self._pending, None
        if not pending or pending["epoch"] != trainer.current_epoch or pending["batches"] < 1:
            return
        loader = trainer.train_dataloader
        batch_sampler = getattr(loader, "batch_sampler", None)
        if batch_sampler is None or getattr(batch_sampler, "batch_size", None) is None:
            raise RuntimeError("Interruption: cannot resume mid-epoch with this data loader")
        batch_sampler.sampler = _SkipFirstSamples(
            batch_sampler.sampler, pending["batches"] * batch_sampler.batch_size
        )
        modules = dict(pl_module.named_modules())
        # The saved sums cover all processes; the epoch-end sync adds the processes' states.
        restored_metrics = pending["metrics"] if trainer.is_global_zero else {}
        for name, state in restored_metrics.items():
            metric = modules.get(name)
            if isinstance(metric, Metric):
                metric.merge_state(move_data_to_device(state, pl_module.device))
        # Lightning skips the epoch-start hooks when it restarts mid-epoch; an uninterrupted run
        # called them, and they set and log the epoch's lr and p. Progress bars are left for the
        # first batch: their bar is only made in their own on_train_start, which runs after this.
        # (Trainer.callbacks is a plain attribute that mypy does not see.)
        callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        self._bars_to_start = [c for c in callbacks if isinstance(c, ProgressBar)]
        trainer.callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]  # type: ignore[attr-defined]
        try:
            call._call_callback_hooks(trainer, "on_train_epoch_start")
        finally:
            trainer.callbacks = callbacks  # type: ignore[attr-defined]
        call._call_lightning_module_hook(trainer, "on_train_epoch_start")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start the progress bars' resumed epoch (deferred from :meth:`on_train_start`)."""
        bars, self._bars_to_start = self._bars_to_start, []
        for bar in bars:
            bar.on_train_epoch_start(trainer, pl_module)


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_detached(item) for item in value]
    return value
