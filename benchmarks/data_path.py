"""Images/s of the batched on-device augmentation against the released code's per-image pipeline.

Run with ``make bench`` or ``python benchmarks/data_path.py [--device cuda] [--data-dir DIR]``.

Baseline: torchvision's per-image transforms (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``) on PIL images from an HWC uint8 array,
batched by a ``DataLoader`` (batch 128, shuffled) with 2 worker processes as released, and with 0.
Timed from the first batch on, so the workers' start-up (paid again every epoch by the released
code) is left out in the baseline's favour. On CUDA its batches are also copied to the device.

This package: ``CIFARDataModule``'s index loader and ``make_batch`` (crop, flip, normalise as
tensor operations on the split kept on the device), as Lightning runs them. On the CPU it is
timed with one torch thread (one core, against the baseline's two worker processes) and with
``--threads`` threads (default: all the machine's cores, as a training run uses them; the goal
line is computed on this row). Goal: at least 20x the baseline's images/s.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
from _baselines import cycle_indices, released_loader
from _timing import (
    add_common_arguments,
    apply_threads,
    describe_machine,
    interleaved,
    print_table,
    resolve_device,
    synchronize,
)

from padam_lightning.data import CIFARDataModule

BATCH_SIZE = 128


def baseline_rate(
    data: CIFARDataModule, num_workers: int, batches: int, device: torch.device
) -> float:
    """Images/s of the released pipeline, from its first batch to batch ``batches``."""
    loader = released_loader(data.split("train"), train=True, num_workers=num_workers)
    iterator = iter(loader)
    next(iterator)  # the workers are up and running
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        inputs, targets = next(iterator)
        if device.type == "cuda":
            inputs, targets = inputs.to(device), targets.to(device)
        images += len(targets)
    synchronize(device)
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return images / seconds


def package_rate(
    data: CIFARDataModule,
    indices: Iterator[torch.Tensor],
    batches: int,
    device: torch.device,
    threads: int,
) -> float:
    """Images/s of index batches turned into augmented, normalised batches, on ``threads``."""
    torch.set_num_threads(threads)
    synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(indices).to(device, non_blocking=True)
        inputs, _ = data.make_batch(batch, train=True, epoch=0)
        images += inputs.shape[0]
    synchronize(device)
    seconds = time.perf_counter() - start
    torch.set_num_threads(1)  # the baselines' main process, like their workers, uses one
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=5)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with train/<class>/*.jpg (the CIFAR-10 JPEGs); default: synthetic data",
    )
    parser.add_argument(
        "--train-size", type=int, default=10_000, help="synthetic images (default 10000)"
    )
    parser.add_argument(
        "--baseline-batches", type=int, default=20, help="timed baseline batches (default 20)"
    )
    parser.add_argument(
        "--batches", type=int, default=200, help="timed batches of this package (default 200)"
    )
    parser.set_defaults(threads=os.cpu_count() or 1)
    args = parser.parse_args()
    apply_threads(1)
    device = resolve_device(args.device)

    if args.data_dir:
        data = CIFARDataModule(dataset="imagefolder", data_dir=args.data_dir, batch_size=BATCH_SIZE)
    else:
        data = CIFARDataModule(
            dataset="synthetic",
            synthetic_train_size=args.train_size,
            synthetic_test_size=100,
            batch_size=BATCH_SIZE,
        )
    data.setup("fit")
    num_images = len(data.split("train"))
    indices = cycle_indices(data)
    data.make_batch(next(indices).to(device), train=True)  # the split moves to the device once

    print(describe_machine(device))
    print(
        f"training batches of {BATCH_SIZE} from {num_images:,} "
        f"{'JPEG-decoded' if args.data_dir else 'synthetic'} 32x32 images on {device.type}; "
        f"{args.rounds} interleaved rounds"
    )
    candidates: dict[str, Callable[[], float]] = {
        f"torchvision per-image, DataLoader {workers} workers": partial(
            baseline_rate, data, workers, args.baseline_batches, device
        )
        for workers in (2, 0)
    }
    ours_name = ""
    # Threads only matter where make_batch runs on the CPU.
    thread_counts = sorted({1, max(args.threads, 1)}) if device.type == "cpu" else [1]
    for threads in thread_counts:
        ours_name = f"CIFARDataModule.make_batch on {device.type}, {threads} thread(s)"
        candidates[ours_name] = partial(package_rate, data, indices, args.batches, device, threads)
    samples = interleaved(candidates, args.rounds)
    medians = print_table(
        "images/s fed to training", samples, baseline=next(iter(candidates)), unit="images/s"
    )
    ours = medians[ours_name]
    for name, rate in medians.items():
        if name.startswith("torchvision"):
            threads = ours_name.rsplit(", ", 1)[1]
            print(f"make_batch ({threads}) / {name} = {ours / rate:.1f}x (goal >= 20)")


if __name__ == "__main__":
    main()
