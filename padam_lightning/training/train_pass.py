"""The released code's end-of-epoch pass over the training split: the paper's "train loss".

The training script released with the paper (uclaml/Padam, ``run_cnn_test_cifar10.py``) does not
report the running mean of the loss during an epoch. After each epoch's optimisation steps it
iterates its training ``DataLoader`` a second time, forwards every batch through the network,
which is still in train mode, takes no optimizer step, and records that pass's mean loss and
error; the paper's "train loss" curves are those numbers. :class:`TrainPass` makes the same pass
in a padam-fit run and logs it as ``train_pass/loss`` and ``train_pass/err`` beside the usual
running means ``train/loss`` and ``train/err``.

What the released pass does, and what this callback therefore does:

* It runs after the epoch's last optimisation step and *before* the test evaluation (here: in
  ``on_train_batch_end`` of the epoch's last batch, after Lightning stepped the optimizer and
  the epoch-wise scheduler, before the validation loop and the epoch's checkpoint).
* The network stays in train mode: BatchNorm normalises with each batch's own statistics and
  updates its running statistics, so the pass changes the running statistics that the test
  evaluation then uses. (The parameters, the optimizer state and the gradients are untouched.)
* No gradients: the first released version wraps the inputs in ``Variable(volatile=True)``
  (PyTorch 0.3's no-grad mode); the latest one builds the autograd graph and discards it. The
  values are the same; this callback runs under ``torch.no_grad()``.
* It iterates the same ``DataLoader`` again, so the pass sees a *fresh* shuffle and a *fresh*
  random crop and flip of every image, in batches of the training batch size (128), the last one
  smaller (no ``drop_last``). Here the pass draws its own shuffle and augmentation from streams
  that depend only on (seed, epoch) and differ from the training epoch's, so it is reproducible,
  identical after a resume, and leaves the training data order and augmentation unchanged.
* The loss is the mean of the per-batch mean losses (``train_loss / (batch_idx + 1)``; the
  smaller last batch counts as much as a full one); the error is the fraction of all samples
  misclassified.

Under DDP each process passes over its share of the permutation (padded as Lightning's
``DistributedSampler`` pads, the padding masked out of the sums) and the per-batch sums are added
up over the processes, so batch ``k`` is the global batch ``k`` and the numbers are those of one
process with the global batch size. Any random op of the network in train mode (dropout; none of
the package's networks has any) draws from a generator forked and seeded from (seed, epoch), so
the training run's own random stream is not disturbed either.

Cost: one extra forward pass over the training split per epoch, without backward: about a third
of the compute of the epoch's training steps (measured 0.33x their time for WRN-10-1 in fp32 on
one CPU thread). With ``torch.compile`` the first pass also compiles the network once more (for
no-grad train mode).

Stack ``configs/experiments/released_metrics.yaml`` to enable it from padam-fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from padam_lightning.data.augment import augment, draw_augmentation, normalize
from padam_lightning.data.datamodule import CIFARDataModule
from padam_lightning.data.sampling import EpochShuffleSampler, derive_seed, epoch_generator
from padam_lightning.data.splits import ImageSplit
from padam_lightning.errors import UserError

#: Names of the random streams of the pass (distinct from the training epoch's "shuffle" and
#: "augment", so the pass's draw is a fresh one, as the released code's second iteration is).
SHUFFLE_STREAM = "train_pass/shuffle"
AUGMENT_STREAM = "train_pass/augment"
MODEL_RNG_STREAM = "train_pass/model"


class _PassSampler(EpochShuffleSampler):
    """The training epoch's sampler, dealing out the pass's own permutation instead."""

    def permutation(self, epoch: int) -> torch.Tensor:
        """The int64 permutation of the pass of ``epoch`` (the ``train_pass/shuffle`` stream)."""
        generator = epoch_generator(self.seed, epoch, SHUFFLE_STREAM)
        return torch.randperm(self.num_samples_total, generator=generator)


def pass_batches(
    num_samples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The index batches of one process's share of an epoch's pass.

    The permutation of all samples is drawn from the ``train_pass/shuffle`` stream of (seed,
    epoch), padded with its own first elements to a multiple of ``num_replicas`` and dealt out
    round-robin by :class:`~padam_lightning.data.sampling.EpochShuffleSampler` (the training
    epoch's sampler, here given the pass's permutation), then cut into batches of
    ``batch_size``. With one process the batches are the permutation cut into pieces of
    ``batch_size``, the last one smaller.

    Args:
        num_samples: Size of the training split.
        batch_size: Per-process batch size (the training batch size).
        seed: The run's data seed.
        epoch: The epoch, from 0.
        num_replicas: Number of processes.
        rank: This process's rank.

    Returns:
        ``(indices, real)`` per batch: int64 sample indices and a bool mask that is False on
        padding samples (those only exist under DDP when ``num_samples`` is not a multiple of
        ``num_replicas``). Every process gets the same number of batches.
    """
    sampler = _PassSampler(num_samples, seed, num_replicas, rank)
    sampler.set_epoch(epoch)
    mine = torch.tensor(list(sampler), dtype=torch.long)
    # The position of each entry in the padded permutation: those past the split are padding.
    real = torch.arange(rank, sampler.total_size, num_replicas) < num_samples
    return list(zip(mine.split(batch_size), real.split(batch_size), strict=True))


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Run the body on a generator seeded with ``seed``, then restore the training RNG state."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _datamodule(trainer: L.Trainer) -> Any:
    """The trainer's data module (a property the Trainer's type stubs do not declare)."""
    return getattr(trainer, "datamodule", None)


class TrainPass(L.Callback):
    """After each training epoch, a pass over the augmented training split in train mode.

    Logs ``train_pass/loss`` (mean of the per-batch mean cross-entropy) and ``train_pass/err``
    (top-1 error, a fraction) once per epoch, reduced over DDP processes. See the module
    docstring for how it replicates the released code's pass. It keeps its own copy of the
    training split on the training device (uint8: 150 MB for CIFAR-10) and draws each pass's
    crops with :func:`~padam_lightning.data.augment.augment` per batch.

    Args:
        batch_size: Batch size of the pass; None (the default) uses the data module's training
            batch size, as the released code (which iterates its training loader again) does.

    Raises:
        UserError: At the start of fitting, if the data module is not a
            :class:`~padam_lightning.data.CIFARDataModule` or ``batch_size`` is not positive.
    """

    def __init__(self, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise UserError(f"TrainPass batch_size must be a positive integer, got {batch_size}.")
        self.batch_size = batch_size
        self._split: ImageSplit | None = None  # the training split on the training device

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check that the run's data module is one whose training split can be read."""
        if stage == "fit" and not isinstance(_datamodule(trainer), CIFARDataModule):
            raise UserError(
                "the train_pass callback (configs/experiments/released_metrics.yaml) needs the "
                "CIFARDataModule (data: dataset cifar10, cifar100, imagefolder or synthetic)."
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Release the device copy of the training split."""
        self._split = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After the epoch's last optimisation step (before validation), make the pass."""
        if trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches:
            loss, err = self.run_pass(trainer, pl_module)
            for name, value in (("loss", loss), ("err", err)):
                # Already reduced over the processes, so no sync_dist here.
                pl_module.log(
                    f"train_pass/{name}", value, on_step=False, on_epoch=True, batch_size=1
                )

    def run_pass(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float]:
        """Make the pass of the current epoch and return its (mean loss, error).

        Args:
            trainer: The running trainer (its data module must be a ``CIFARDataModule``).
            pl_module: The network being trained; it stays in whatever mode it is in (train mode
                during fitting), so BatchNorm running statistics are updated.

        Returns:
            The mean over the pass's (global) batches of their mean cross-entropy loss, and the
            fraction of the split's samples misclassified, both reduced over DDP processes.
        """
        datamodule = _datamodule(trainer)
        assert isinstance(datamodule, CIFARDataModule)  # checked in setup
        device = pl_module.device
        if self._split is None or self._split.device != device:
            self._split = datamodule.split("train").to(device)
        split = self._split
        seed, epoch = datamodule.effective_seed, trainer.current_epoch
        batch_size = self.batch_size or datamodule.batch_size
        batches = pass_batches(
            len(split), batch_size, seed, epoch, trainer.world_size, trainer.global_rank
        )
        if datamodule.augment:
            offsets, flips = draw_augmentation(
                len(split), epoch_generator(seed, epoch, AUGMENT_STREAM)
            )
            offsets, flips = offsets.to(device), flips.to(device)
        mean = torch.tensor(datamodule.mean, device=device)
        std = torch.tensor(datamodule.std, device=device)
        # Per (global) batch: summed loss and sample count; summed over processes at the end.
        loss_sums = torch.zeros(len(batches), dtype=torch.float64, device=device)
        counts = torch.zeros(len(batches), dtype=torch.float64, device=device)
        wrong = torch.zeros((), dtype=torch.float64, device=device)
        model_seed = derive_seed(seed, epoch, f"{MODEL_RNG_STREAM}:{trainer.global_rank}")
        with (
            torch.no_grad(),
            _forked_rng(device, model_seed),
            trainer.precision_plugin.forward_context(),
        ):
            for k, (indices_cpu, real_cpu) in enumerate(batches):
                indices, real = indices_cpu.to(device), real_cpu.to(device)
                images = split.images.index_select(0, indices)
                if datamodule.augment:
                    images = augment(
                        images, offsets.index_select(0, indices), flips.index_select(0, indices)
                    )
                labels = split.labels.index_select(0, indices)
                # In the precision's dtype, as the data module hands training batches over.
                inputs = trainer.precision_plugin.convert_input(normalize(images, mean, std))
                logits = pl_module(inputs)
                losses = F.cross_entropy(logits.float(), labels, reduction="none")
                weight = real.to(torch.float64)
                loss_sums[k] = (losses.to(torch.float64) * weight).sum()
                counts[k] = weight.sum()
                wrong += ((logits.argmax(dim=1) != labels).to(torch.float64) * weight).sum()
        totals = torch.cat([loss_sums, counts, wrong.reshape(1)])
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        loss_sums, counts, wrong = totals[: len(batches)], totals[len(batches) : -1], totals[-1]
        filled = counts > 0
        loss = (loss_sums[filled] / counts[filled]).mean()
        err = wrong / counts.sum()
        return float(loss), float(err)
