"""DivergenceGuard on a plain Lightning Trainer with a tiny LightningModule (no ImageClassifier).

The module's loss becomes NaN at a chosen global step. On the CPU the guard reads each loss at
once; :class:`SlowDevice` makes it behave as on an accelerator whose copies have not arrived
until they are waited for, so the tests see where the guard waits: before validation, at the end
of the epoch and before each checkpoint. (The asynchronous copy itself is checked on fake CUDA
tensors in ``test_fake_cuda.py``.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from padam_lightning.errors import TrainingDivergedError
from padam_lightning.training.divergence import DivergenceGuard

BATCHES_PER_EPOCH = 4


class TinyModule(L.LightningModule):
    """A linear regression whose loss is NaN from global step ``nan_from_step`` on (if any)."""

    def __init__(self, nan_from_step: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.nan_from_step = nan_from_step
        self.validated_epochs: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
        if self.nan_from_step is not None and self.global_step >= self.nan_from_step:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.validated_epochs.append(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self) -> DataLoader[Any]:
        inputs = torch.linspace(-1, 1, 2 * BATCHES_PER_EPOCH * 2).reshape(-1, 2)
        return DataLoader(TensorDataset(inputs, inputs.sum(1, keepdim=True)), batch_size=2)

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader()

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader()


class Event:
    """A stand-in device event: the copy arrives only when the guard waits for it."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


class SlowDevice(DivergenceGuard):
    """The guard as on an accelerator that is always still busy with the queued steps."""

    def defer(self, loss: torch.Tensor, step: int, epoch: int, batch_idx: int) -> None:
        super().defer(loss, step, epoch, batch_idx)
        self._pending[-1] = dataclasses.replace(self._pending[-1], event=Event())


def _trainer(tmp_path: Path, *callbacks: L.Callback, **settings: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "max_epochs": 3,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return L.Trainer(callbacks=list(callbacks), **{**defaults, **settings})


def test_a_nan_loss_stops_a_plain_lightning_run_at_the_step_it_happened(tmp_path: Path) -> None:
    # 4 batches per epoch: global step 6 is epoch 1's batch 2.
    trainer = _trainer(tmp_path, DivergenceGuard(), limit_val_batches=0)
    with pytest.raises(TrainingDivergedError) as error:
        trainer.fit(TinyModule(nan_from_step=6))
    message = str(error.value)
    assert message.startswith("the training loss became nan at step 6 (epoch 1, batch 2). ")
    assert "learning rate" in message and "\n" not in message
    assert error.value.exit_code == 1
    # On the CPU the loss is read at once: training stopped at that batch.
    assert trainer.global_step == 7 and trainer.current_epoch == 1


def test_without_the_guard_the_same_run_trains_through_the_nan(tmp_path: Path) -> None:
    # The module has no check of its own: the guard is what stops the run above.
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(TinyModule(nan_from_step=6))
    assert trainer.global_step == 3 * BATCHES_PER_EPOCH


def test_on_an_accelerator_the_guard_waits_before_validation(tmp_path: Path) -> None:
    guard = SlowDevice()
    model = TinyModule(nan_from_step=BATCHES_PER_EPOCH + 3)  # the last batch of epoch 1
    trainer = _trainer(tmp_path, guard)
    with pytest.raises(TrainingDivergedError, match=r"became nan at step 7 \(epoch 1, batch 3\)"):
        trainer.fit(model)
    # No copy had arrived during the epoch, so the step went on; the run stopped before
    # evaluating the diverged weights.
    assert model.validated_epochs == [0]
    assert not guard._pending


def test_on_an_accelerator_no_checkpoint_is_written_after_a_divergence(tmp_path: Path) -> None:
    # A checkpoint after every step: the guard waits for the step's loss before each is written.
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1
    )
    trainer = _trainer(tmp_path, SlowDevice(), checkpoints, enable_checkpointing=True)
    with pytest.raises(TrainingDivergedError, match=r"became nan at step 5 \(epoch 1, batch 1\)"):
        trainer.fit(TinyModule(nan_from_step=5))
    # ModelCheckpoint names a file by the global step after the optimizer step: steps 1 to 5
    # were saved, the diverged step (whose file would be step=6) was not.
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == [
        f"step={step}.ckpt" for step in range(1, 6)
    ]


def test_the_epoch_end_waits_for_the_last_loss_before_the_epochs_checkpoint(
    tmp_path: Path,
) -> None:
    # Without validation, and with weights-only checkpoints (for which Lightning calls no
    # callback's on_save_checkpoint), the epoch-end hook is the guard's last chance.
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", save_top_k=-1, save_weights_only=True
    )
    trainer = _trainer(
        tmp_path, SlowDevice(), checkpoints, enable_checkpointing=True, limit_val_batches=0
    )
    with pytest.raises(TrainingDivergedError, match=r"at step 7 \(epoch 1, batch 3\)"):
        trainer.fit(TinyModule(nan_from_step=BATCHES_PER_EPOCH + 3))
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == ["epoch=0.ckpt"]


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path: Path) -> None:
    model = TinyModule()
    trainer = _trainer(tmp_path, DivergenceGuard(), max_epochs=1, limit_val_batches=0)
    trainer.fit(model)
    with torch.no_grad():
        model.layer.weight[0, 1] = float("inf")
    path = tmp_path / "diverged.ckpt"
    with pytest.raises(
        TrainingDivergedError,
        match=r"parameters became non-finite by step 4 \(first: layer.weight\); not saving",
    ):
        trainer.save_checkpoint(path)
    assert not path.exists()


def test_the_guard_adds_nothing_to_checkpoints(tmp_path: Path) -> None:
    # Nothing to restore on resume, so a resumed run continues as an uninterrupted one.
    trainer = _trainer(tmp_path, DivergenceGuard(), max_epochs=1, limit_val_batches=0)
    trainer.fit(TinyModule())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert not any("DivergenceGuard" in key for key in checkpoint["callbacks"])
