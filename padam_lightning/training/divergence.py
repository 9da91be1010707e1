"""A Lightning callback that stops training at the first NaN or infinite loss, without stalls.

Checking a loss for NaN is a read of a device value on the host, and a read every step would make
every step wait for the accelerator to finish it (on a GPU the host normally runs ahead, queueing
the next steps' kernels). :class:`DivergenceGuard` instead copies each step's loss to the host
behind the step's kernels, without blocking, and reads each copy once it has arrived: on an
accelerator a divergence is noticed a few steps after it happened, but reported with the step it
happened at; on the CPU it is noticed at once. Before anything that must not see a diverged run (a
checkpoint, the validation loop, the end of the epoch or of training) it waits for every pending
copy, so no checkpoint of diverged weights is written unnoticed over the last good one.

Any Lightning user can add it to a ``Trainer``; ``padam-fit`` adds it to every run::

    trainer = L.Trainer(callbacks=[DivergenceGuard()])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from padam_lightning.errors import TrainingDivergedError


def _record_event(device: torch.device) -> Any:
    """An event recorded on ``device``'s current stream (replaced by the fake-device tests)."""
    event = torch.Event(device=device)
    event.record()
    return event


@dataclass(frozen=True)
class _PendingLoss:
    """A training loss on its way to the host: ``host`` is valid once ``event`` has completed."""

    host: torch.Tensor
    event: Any  # torch.Event, or None when ``host`` is valid already (a loss on the CPU)
    step: int
    epoch: int
    batch_idx: int


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The loss in what ``training_step`` gave Lightning (None: no loss, the batch was skipped).

    Lightning passes ``on_train_batch_end`` the step's output: ``{"loss": tensor, ...}`` under
    automatic optimisation (a detached copy, divided by ``accumulate_grad_batches``), and whatever
    ``training_step`` returned under manual optimisation (a tensor, a dict or None).
    """
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, torch.Tensor) else None


class DivergenceGuard(L.Callback):
    """Stop training at the first NaN or infinite training loss, naming the step it happened at.

    Each training batch's loss (the ``loss`` of the step's output, a scalar tensor) is queued in
    :meth:`on_train_batch_end`: on an accelerator as a non-blocking copy to host memory with an
    event recorded behind it, on the CPU as it is. Every batch then checks, in order, the queued
    losses whose copies have arrived (``event.query()``, which never waits) and stops at the first
    non-finite one. The training step itself never waits for the device: the only transfer the
    guard adds is that one non-blocking device-to-host copy of a scalar per step.

    Before a checkpoint (:meth:`on_save_checkpoint`), before validation
    (:meth:`on_validation_start`) and at the end of each training epoch and of training, every
    pending loss is waited for and checked, and before a checkpoint the weights are checked too
    (one read of the device per checkpoint), so a checkpoint is never written over the last good
    one with diverged weights. Lightning runs this callback's epoch-end hook before the checkpoint
    callbacks' (which it orders last), and calls :meth:`on_save_checkpoint` before a checkpoint's
    file is written.

    The guard keeps no state in checkpoints: a resumed run continues exactly as an uninterrupted
    one. Under DDP each process checks its own loss (its error ends that process, and Lightning's
    launcher the others).

    Limitation: Lightning does not call callbacks' ``on_save_checkpoint`` for weights-only
    checkpoints (``ModelCheckpoint(save_weights_only=True)``), so their weights are not checked,
    and those written mid-epoch (``every_n_train_steps``) on an accelerator are saved before the
    guard has seen the last few steps' losses; the run still stops when those copies arrive.
    (Weights-only checkpoints at the end of an epoch or of validation come after the waits.)

    Raises:
        TrainingDivergedError: From the training hooks, at the first loss that is NaN or
            infinite: one line with the value, the global step (the optimizer steps done before
            that batch, as ``LightningModule.global_step`` counts them in ``training_step``), the
            epoch and the batch index, the usual causes and what to do. From
            :meth:`on_save_checkpoint` also when a parameter is NaN or infinite. Its
            ``exit_code`` is 1 (``padam-fit`` prints the message as ``padam-fit: error: ...``).
    """

    def __init__(self) -> None:
        self._pending: deque[_PendingLoss] = deque()
        self._step = 0  # the global step when the current batch started

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Forget the losses of an earlier fit with this callback (one that failed)."""
        self._pending.clear()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Note the batch's step; check the losses that arrived while this batch was fetched."""
        self._step = trainer.global_step
        self.check()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Queue this batch's loss and check the losses that have arrived."""
        loss = _loss_of(outputs)
        if loss is not None:
            self.defer(loss, self._step, trainer.current_epoch, batch_idx)
        self.check()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Wait for the epoch's pending losses: evaluate (and checkpoint) only a finite run."""
        self.check(wait=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Wait for the epoch's pending losses before the epoch's checkpoint is written."""
        self.check(wait=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Wait for the last losses, so a run never ends with a divergence unreported."""
        self.check(wait=True)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write diverged weights over the last good checkpoint.

        Raises:
            TrainingDivergedError: If a pending loss or a parameter is NaN or infinite.
        """
        self.check(wait=True)
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDivergedError(
                f"parameters became non-finite by step {trainer.global_step} (first: {bad[0]}); "
                "not saving this checkpoint, so the last good one stays intact. Lower the "
                "learning rate and start the run again."
            )

    def defer(self, loss: torch.Tensor, step: int, epoch: int, batch_idx: int) -> None:
        """Queue a training step's loss (a scalar tensor) for checking, without waiting for it."""
        loss = loss.detach()
        if loss.device.type == "cpu":
            self._pending.append(_PendingLoss(loss, None, step, epoch, batch_idx))
            return
        host = loss.to("cpu", non_blocking=True)  # into pinned memory, behind the step's kernels
        self._pending.append(_PendingLoss(host, _record_event(loss.device), step, epoch, batch_idx))

    def check(self, wait: bool = False) -> None:
        """Check the queued losses in order: those already on the host, or all if ``wait``.

        Raises:
            TrainingDivergedError: At the first loss that is NaN or infinite, with its step,
                epoch and batch.
        """
        while self._pending:
            pending = self._pending[0]
            if pending.event is not None:
                if wait:
                    pending.event.synchronize()
                elif not pending.event.query():
                    return  # the device has not finished that step yet: look again next batch
            self._pending.popleft()
            value = float(pending.host)
            if not math.isfinite(value):
                self._pending.clear()
                raise TrainingDivergedError(
                    f"the training loss became {value} at step {pending.step} (epoch "
                    f"{pending.epoch}, batch {pending.batch_idx}). The usual cause is a learning "
                    "rate too large for this optimizer (Adam-like methods want ~1e-3, Padam and "
                    "SGD ~0.1) or fp16 overflow: lower the learning rate (or train in bf16 or "
                    "float32) and start again. No checkpoint was written after that step."
                )
