"""Epoch metrics are the means over the epoch's batches, though they are logged once per epoch.

``ImageClassifier`` hands its torchmetrics objects to ``self.log`` at the first update of each
epoch instead of every step (a per-step cost on the GPU); these tests check the logged values
against the per-step losses and against an independent evaluation of the saved weights.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from padam_lightning.data import CIFARDataModule
from padam_lightning.training.classifier import ImageClassifier


class Recorder(L.Callback):
    """Records each step's loss and batch size, the weights before each evaluation, and metrics."""

    def __init__(self) -> None:
        self.step_losses: list[list[tuple[float, int]]] = []
        self.eval_weights: list[dict[str, torch.Tensor]] = []
        self.epoch_metrics: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step_losses.append([])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.step_losses[-1].append((float(outputs["loss"]), len(batch[1])))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.eval_weights.append(copy.deepcopy(pl_module.state_dict()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A plain callback runs before the module's own epoch-end hook: the metrics must be
        # there already, as they were when they were logged every step.
        self.epoch_metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_logged_epoch_metrics_are_the_means_of_that_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = CIFARDataModule(
        dataset="synthetic",
        batch_size=24,
        eval_batch_size=16,
        synthetic_train_size=60,  # batches of 24, 24, 12: the mean must weight by batch size
        synthetic_test_size=40,
        seed=3,
    )
    model = ImageClassifier(arch="wrn10_1")
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,  # its batch must not leak into the first epoch's values
        default_root_dir=tmp_path,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=data)

    assert len(recorder.epoch_metrics) == 2
    test = data.split("test")
    for epoch, logged in enumerate(recorder.epoch_metrics):
        losses = recorder.step_losses[epoch]
        expected_loss = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
        assert logged["train/loss"] == pytest.approx(expected_loss, rel=1e-5)

        reference = ImageClassifier(arch="wrn10_1")
        reference.load_state_dict(recorder.eval_weights[epoch])
        reference.eval()
        with torch.no_grad():
            images, labels = data.make_batch(torch.arange(len(test)), train=False)
            logits = reference(images)
        expected_val_loss = F.cross_entropy(logits, labels).item()
        assert logged["val/loss"] == pytest.approx(expected_val_loss, rel=1e-5)
        expected_err = (logits.argmax(1) != labels).float().mean().item()
        assert logged["val/err"] == pytest.approx(expected_err, abs=1e-6)
    # Each epoch's values are its own: the training loss changes from epoch to epoch.
    assert len({round(m["train/loss"], 6) for m in recorder.epoch_metrics}) == 2


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_an_epoch_resumed_from_a_best_checkpoint_is_the_mean_of_its_own_batches(
    tmp_path: Path,
) -> None:
    """A best checkpoint is saved after validation, before the epoch's sums are reset.

    Resumed from it, the next epoch's ``train/loss`` and ``train/err`` must not carry the saved
    epoch's sums: they equal the uninterrupted run's values for that epoch.
    """

    def fit(max_epochs: int, ckpt_path: str | None, callbacks: list[L.Callback]) -> None:
        torch.manual_seed(0)
        data = CIFARDataModule(
            dataset="synthetic",
            batch_size=24,
            eval_batch_size=16,
            synthetic_train_size=60,
            synthetic_test_size=40,
            seed=3,
        )
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp_path,
            callbacks=callbacks,
        )
        trainer.fit(ImageClassifier(arch="wrn10_1"), datamodule=data, ckpt_path=ckpt_path)

    whole = Recorder()
    fit(2, None, [whole])
    best = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/err", save_top_k=1, save_last=False
    )
    fit(1, None, [best])
    resumed = Recorder()
    fit(2, best.best_model_path, [resumed])

    assert len(resumed.epoch_metrics) == 1
    losses = resumed.step_losses[0]
    own_mean = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert resumed.epoch_metrics[0]["train/loss"] == pytest.approx(own_mean, rel=1e-5)
    for name in ("train/loss", "train/err"):
        assert resumed.epoch_metrics[0][name] == pytest.approx(
            whole.epoch_metrics[1][name], rel=1e-5
        )
