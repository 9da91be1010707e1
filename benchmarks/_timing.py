"""Shared helpers of the benchmarks: interleaved timing, tables, and Lightning timing callbacks.

Not a benchmark itself. The machines these run on are shared and noisy, so every benchmark times
its candidates in interleaved rounds (A B, B A, A B, ...) and reports medians: a burst of load
from someone else then slows all candidates of a round alike instead of one of them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

#: The repository root (the benchmarks run from a checkout).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: ``torch.backends.cudnn.benchmark`` (Lightning's ``Trainer(benchmark=...)``) for CUDA runs: the
#: value padam-fit's GPU defaults set (``PadamCLI.parse_arguments``); keep the two equal, so that
#: every benchmark measures what padam-fit runs. cuDNN autotunes each convolution shape once per
#: process; CIFAR's shapes are fixed (32x32 images, batches of 128 and 100), so the tuning is paid
#: in the first steps only. ``throughput.py --cudnn-benchmark both`` measures both settings.
CUDNN_BENCHMARK = True


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where available, else the CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock reading covers it.

    The benchmarks call it only at the boundaries of a timed interval (before the first and
    after the last timed step), never inside one: a wait per step is what they look for.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> str:
    """One line on what was measured where: date, CPU, threads, GPU, versions."""
    parts = [
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        f"{cpu_model()} ({os.cpu_count()} logical CPUs, torch uses {torch.get_num_threads()})",
    ]
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    parts.append(f"torch {torch.__version__}, lightning {L.__version__}")
    parts.append(f"Python {platform.python_version()}")
    return "; ".join(parts)


def add_common_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    """``--device``, ``--rounds`` and ``--threads``, which every benchmark takes."""
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or auto (CUDA when available; default)"
    )
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"interleaved rounds (default {rounds})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 0 is torch's choice (default 1: on a machine whose cores are "
        "shared, torch's threads wait for each other and the timings scatter widely)",
    )


def apply_threads(threads: int) -> None:
    """Set torch's intra-op thread count (0 keeps torch's choice)."""
    if threads > 0:
        torch.set_num_threads(threads)


def interleaved(
    candidates: dict[str, Callable[[], float]], rounds: int, verbose: bool = True
) -> dict[str, list[float]]:
    """Run every candidate once per round, rotating their order, and collect the results.

    Args:
        candidates: Name -> a function that measures once and returns a number (a rate or a
            time, whatever the caller compares).
        rounds: How many times to run each candidate.
        verbose: Print each measurement as it arrives (to stderr), so a long run shows progress.

    Returns:
        Name -> the numbers of the rounds, in the order they were measured.
    """
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            value = candidates[name]()
            samples[name].append(value)
            if verbose:
                print(f"  round {round_index + 1}/{rounds}: {name}: {value:,.1f}", file=sys.stderr)
    return samples


def median(values: list[float]) -> float:
    """The median (the statistic every table reports)."""
    return statistics.median(values)


def print_table(
    title: str,
    samples: dict[str, list[float]],
    baseline: str,
    unit: str = "images/s",
    higher_is_better: bool = True,
) -> dict[str, float]:
    """Print medians, their spread and each row's ratio to ``baseline``; return the medians.

    The ratio is always "times better than the baseline": rate / baseline rate for rates,
    baseline time / time for times, so above 1 means faster.
    """
    medians = {name: median(values) for name, values in samples.items()}
    reference = medians[baseline]
    width = max(len(name) for name in samples)
    print(f"\n{title}")
    print(f"{'':<{width}}  {'median ' + unit:>18}  {'min .. max':>21}  {'speedup':>10}")
    for name, values in samples.items():
        value = medians[name]
        ratio = value / reference if higher_is_better else reference / value
        spread = f"{min(values):,.1f} .. {max(values):,.1f}"
        print(f"{name:<{width}}  {value:>18,.1f}  {spread:>21}  {ratio:>10.2f}")
    return medians


@contextmanager
def quiet_output(keep: bool = False) -> Iterator[None]:
    """Send stdout and stderr to /dev/null at the file-descriptor level (unless ``keep``).

    Used around Lightning runs: the progress bar and banners are still written (their cost is part
    of what is measured) but do not drown the tables.
    """
    if keep:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class StepTimer(L.Callback):
    """Time training steps ``warmup .. warmup + steps`` of a Lightning fit, start to start.

    The clock reads at the start of batch ``warmup`` and of batch ``warmup + steps``, so the
    interval holds ``steps`` whole steps: fetching the batch, moving it, building the images, the
    step itself, the logging and every callback. On CUDA the device is synchronised at both
    readings. The fit must run at least ``warmup + steps + 1`` batches.
    """

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup = warmup
        self.steps = steps
        self.seconds: float | None = None
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Read the clock at the first and the last timed batch."""
        if batch_idx in (self.warmup, self.warmup + self.steps):
            synchronize(pl_module.device)
            now = time.perf_counter()
            if batch_idx == self.warmup:
                self._start = now
            else:
                self.seconds = now - self._start


class EpochReport(L.Callback):
    """Print one line per epoch: training and evaluation seconds, images/s, loss and error.

    For ``padam-fit`` runs: ``PYTHONPATH=benchmarks padam-fit fit ...
    --trainer.callbacks+=_timing.EpochReport``. Times are wall-clock (the device is synchronised
    at each reading); the first epoch includes one-time costs such as compilation. The numbers
    are also kept in :attr:`records`, one dict per epoch.

    Args:
        prefix: Printed at the start of each line.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.records: list[dict[str, float]] = []
        self._marks: dict[str, float] = {}
        self._fit_start = 0.0
        self._train_images = 0

    def _now(self, pl_module: L.LightningModule) -> float:
        synchronize(pl_module.device)
        return time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the settings in effect and start the clock of the whole fit."""
        settings = {
            "device": str(pl_module.device),
            "precision": str(trainer.precision),
            "channels_last": getattr(pl_module, "uses_channels_last", "n/a"),
            "compiled": getattr(pl_module, "is_compiled", "n/a"),
            "batch_size": getattr(getattr(trainer, "datamodule", None), "batch_size", "n/a"),
        }
        print(self.prefix + "settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
        self._fit_start = self._now(pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Mark the start of the epoch; report the last one's time including checkpointing."""
        now = self._now(pl_module)
        self._close_epoch(now)
        self._marks = {"train_start": now}
        self._train_images = 0

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Report the last epoch's time including checkpointing."""
        self._close_epoch(self._now(pl_module))

    def _close_epoch(self, now: float) -> None:
        # The checkpoint callbacks save after this callback's epoch-end hook, so an epoch's whole
        # cost is only known when the next one starts (or the fit ends).
        if self.records and "wall_seconds" not in self.records[-1]:
            wall = now - self._marks["train_start"]
            self.records[-1]["wall_seconds"] = wall
            epoch = int(self.records[-1]["epoch"])
            print(f"{self.prefix}epoch {epoch:3d}: {wall:7.2f} s with checkpointing", flush=True)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the training images."""
        self._train_images += int(batch[1].shape[0])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Mark the end of training and the start of evaluation."""
        if not trainer.sanity_checking and "train_start" in self._marks:
            self._marks["val_start"] = self._now(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Mark the end of evaluation."""
        if not trainer.sanity_checking and "val_start" in self._marks:
            self._marks["val_end"] = self._now(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the epoch's line (Lightning validates before this hook runs)."""
        end = self._now(pl_module)
        marks = self._marks
        train_end = marks.get("val_start", end)
        train_seconds = train_end - marks.get("train_start", end)
        val_seconds = marks.get("val_end", train_end) - marks.get("val_start", train_end)
        metrics = trainer.callback_metrics

        def metric(name: str) -> str:
            value = metrics.get(name)
            return f"{float(value):.4f}" if value is not None else "-"

        rate = self._train_images / train_seconds if train_seconds > 0 else float("nan")
        record = {
            "epoch": float(trainer.current_epoch),
            "train_seconds": train_seconds,
            "eval_seconds": val_seconds,
            "epoch_seconds": end - marks.get("train_start", end),
            "train_images": float(self._train_images),
        }
        record.update({k: float(v) for k, v in metrics.items() if k.startswith(("train/", "val/"))})
        self.records.append(record)
        print(
            f"{self.prefix}epoch {trainer.current_epoch:3d}: train {train_seconds:7.2f} s "
            f"({self._train_images:,} images, {rate:9,.0f} images/s), eval {val_seconds:6.2f} s, "
            f"epoch {end - marks.get('train_start', end):7.2f} s, "
            f"since start {end - self._fit_start:7.1f} s | "
            f"train/loss {metric('train/loss')} train/err {metric('train/err')} "
            f"val/loss {metric('val/loss')} val/err {metric('val/err')}",
            flush=True,
        )


if __name__ == "__main__":
    print("benchmarks/_timing.py holds shared helpers; nothing to run.")
