"""What the benchmarks compare this package against: the released code's pipeline and a plain loop.

Not a benchmark itself.

- The released code (github.com/uclaml/Padam, ``run_cnn_test_cifar10.py``) keeps CIFAR as one
  ``N x 32 x 32 x 3`` uint8 array (torchvision's ``CIFAR10``), turns every sample into a PIL image
  and runs ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()`` and
  ``Normalize`` on it in a ``DataLoader`` with two worker processes; it trains in fp32 with the
  for-loop Padam, the network wrapped in ``DataParallel`` and ``cudnn.benchmark`` on, and reads
  the loss and the correct count back to the host after every step. :class:`ReleasedCIFAR` and
  :func:`released_epoch` do the same.
- The plain loop (:func:`plain_training_steps`) does the work of one ``padam-fit`` training step
  without Lightning: the same network, batches from the same ``make_batch``, the same optimizer,
  per-sample cross-entropy and the same metrics (``WeightedMean``), under the same precision.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from _timing import synchronize
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from padam_lightning.data import CIFARDataModule
from padam_lightning.data.splits import ImageSplit
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import WeightedMean

#: The released code's normalisation constants (CIFAR-10).
RELEASED_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))

#: Padam as the shipped configs set it (configs/wrn.yaml); the released code's defaults too.
PADAM_SETTINGS: dict[str, Any] = {
    "lr": 0.1,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 5e-4,
    "partial": 0.125,
    "amsgrad": True,
}


def released_train_transform() -> T.Compose:
    """The released code's per-image training transforms."""
    return T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(*RELEASED_MEAN_STD),
        ]
    )


def released_test_transform() -> T.Compose:
    """The released code's per-image evaluation transforms."""
    return T.Compose([T.ToTensor(), T.Normalize(*RELEASED_MEAN_STD)])


class ReleasedCIFAR(Dataset[tuple[torch.Tensor, int]]):
    """torchvision's ``CIFAR10`` access path: an HWC uint8 array, one PIL image per sample.

    Args:
        split: The images (``N x 3 x 32 x 32`` uint8, as this package holds them) and labels.
        transform: The per-image transform applied to each PIL image.
    """

    def __init__(self, split: ImageSplit, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.data = np.ascontiguousarray(split.images.permute(0, 2, 3, 1).numpy())
        self.targets = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.data[index])
        return self.transform(image), self.targets[index]


def released_loader(
    split: ImageSplit, train: bool, num_workers: int = 2, batch_size: int | None = None
) -> DataLoader[tuple[torch.Tensor, int]]:
    """The released code's DataLoader: batch 128 shuffled for training, 100 in order for test."""
    transform = released_train_transform() if train else released_test_transform()
    dataset = ReleasedCIFAR(split, transform)
    return DataLoader(
        dataset,
        batch_size=batch_size or (128 if train else 100),
        shuffle=train,
        num_workers=num_workers,
    )


def released_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader[tuple[torch.Tensor, int]],
    test_loader: DataLoader[tuple[torch.Tensor, int]],
    device: torch.device,
    max_batches: int | None = None,
) -> dict[str, float]:
    """One epoch as the released code runs it: train, then evaluate on the test split.

    (The released code also re-evaluates the whole training split every epoch, which this package
    does not do; it is left out so that both sides do the same work.)

    Returns:
        ``train_seconds``, ``eval_seconds``, ``train_images``, ``test_err``.
    """
    criterion = nn.CrossEntropyLoss()
    model.train()
    synchronize(device)
    start = time.perf_counter()
    train_loss, correct, total = 0.0, 0, 0
    for batch_index, (inputs, targets) in enumerate(train_loader):
        if max_batches is not None and batch_index >= max_batches:
            break
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        # The released code reads these back every step (loss.data[0], .cpu().sum()).
        train_loss += loss.item()
        correct += int(outputs.argmax(1).eq(targets).cpu().sum())
        total += targets.size(0)
    synchronize(device)
    train_seconds = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()  # the device is idle: the training loop synchronised above
    test_correct, test_total = 0, 0
    with torch.no_grad():
        for batch_index, (inputs, targets) in enumerate(test_loader):
            if max_batches is not None and batch_index >= max_batches:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            criterion(outputs, targets).item()
            test_correct += int(outputs.argmax(1).eq(targets).cpu().sum())
            test_total += targets.size(0)
    synchronize(device)
    eval_seconds = time.perf_counter() - start
    return {
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "train_images": float(total),
        "test_err": 1 - test_correct / max(test_total, 1),
    }


def released_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Put the network on the device as the released code does (DataParallel on CUDA)."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = nn.DataParallel(model, device_ids=list(range(torch.cuda.device_count())))
    return model


# -- the plain PyTorch loop --------------------------------------------------------------------


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context Lightning's precision plugin uses for ``precision``."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext()
    raise ValueError(f"unsupported precision {precision!r}")


def cycle_indices(data: CIFARDataModule) -> Iterator[torch.Tensor]:
    """Index batches of the training loader, epoch after epoch (as padam-fit draws them)."""
    loader = data.train_dataloader()
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        yield from loader
        epoch += 1


def plain_training_steps(
    net: nn.Module,
    data: CIFARDataModule,
    device: torch.device,
    precision: str,
    channels_last: bool,
    warmup: int,
    steps: int,
    read_back_each_step: bool = False,
) -> float:
    """Seconds of ``steps`` plain-PyTorch training steps, after ``warmup`` untimed ones.

    Each step: index batch from the training loader, moved to the device; ``make_batch``; forward
    and cross-entropy under the precision's autocast; backward (through a ``GradScaler`` for
    ``16-mixed``); a Padam step; the per-sample losses and errors added to padam-fit's own
    metrics (``WeightedMean``, two on-device sums); and a divergence flag
    (``not isfinite(loss)``) or-ed into a tensor on the device.

    Nothing in a step waits for the device, so that the ratio to padam-fit's step shows any wait
    padam-fit adds. torchmetrics' ``MeanMetric`` would: its default NaN check reads a value back
    at every update, and a ``weight=`` number is copied to the device every step (its
    ``nan_strategy="disable"`` avoids the read but, in torchmetrics 1.9, drops the weights). The
    divergence flag is read once, after the clock stops; the clock itself synchronises the
    device only before the first and after the last timed step. (With ``16-mixed`` the
    ``GradScaler`` reads its overflow flag back every step, in padam-fit as here.)

    Args:
        net: The network, on ``device`` (compiled or not, channels-last or not).
        data: The data module whose training batches to use (``setup`` done or not).
        device: Where to train.
        precision: A Lightning precision: ``32-true``, ``bf16-mixed`` or ``16-mixed``.
        channels_last: Make each batch channels-last (for a channels-last network).
        warmup: Untimed steps first (optimizer state, cuDNN tuning, compilation).
        steps: Timed steps.
        read_back_each_step: Also read the divergence flag back after every step, as a plain
            ``if not torch.isfinite(loss)`` does: one device synchronisation per step, to
            measure what such a check costs.

    Raises:
        RuntimeError: If a loss was not finite.
    """
    net.train()
    optimizer = Padam(net.parameters(), **PADAM_SETTINGS)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    loss_metric, err_metric = WeightedMean().to(device), WeightedMean().to(device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    batches = cycle_indices(data)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        indices = next(batches).to(device, non_blocking=True)
        images, labels = data.make_batch(indices, train=True, epoch=0)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_for(precision, device):
            logits = net(images)
            losses = F.cross_entropy(logits, labels, reduction="none")
            loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        weights = torch.ones_like(losses)  # a fill on the device, no copy
        loss_metric.update(losses.detach(), weights)
        err_metric.update((logits.detach().argmax(dim=1) != labels).to(losses.dtype), weights)
        nonfinite |= ~torch.isfinite(loss.detach())
        if read_back_each_step and bool(nonfinite):  # bool() waits for the device
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    if bool(nonfinite):
        raise RuntimeError("the plain loop's loss was not finite")
    return seconds
