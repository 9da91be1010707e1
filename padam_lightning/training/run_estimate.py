"""Tell a user training on the CPU how long the run will take, measured after its first steps.

``make fit`` trains WRN-16-4 for 200 epochs, a run sized for a GPU: on a 2-core CPU one epoch
takes about 38 minutes. :class:`RunTimeEstimate` times the first training steps of a CPU run and
prints one line with the network, the epochs, the measured time per step and what that means for
an epoch and the whole run; when the run would take hours it names the CPU-scale config instead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

#: Runs estimated to take less than this (seconds) get no message: tests, smoke runs, demos.
MIN_REPORTED_RUN_S = 120.0
#: Runs estimated to take at least this (seconds) on a CPU are called GPU-sized, with the
#: CPU-scale alternative named.
GPU_SIZED_RUN_S = 3600.0
#: The size of that alternative (WRN-10-1: 78k parameters; 10 epochs): runs no larger than it
#: are not told to run it, however long they take on a busy CPU.
CPU_SCALE_PARAMETERS = 100_000
CPU_SCALE_EPOCHS = 10
#: What to run instead of a GPU-sized config on a CPU (``configs/cpu.yaml``, ``make fit-cpu``).
CPU_ALTERNATIVE = (
    "For a CPU-scale run use `make fit-cpu` (padam-fit fit --config configs/cpu.yaml: WRN-10-1 on "
    "CIFAR-10, 10 epochs with the paper's lr decay compressed; it prints its own estimate too)."
)


def format_duration(seconds: float) -> str:
    """A duration in the unit a person would use: ``45 s``, ``38 min``, ``127 hours``.

    Args:
        seconds: The duration in seconds (>= 0).
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    return f"{hours:.1f} hours" if hours < 10 else f"{hours:.0f} hours"


def _count(number: int, noun: str, plural: str | None = None) -> str:
    """``1 step``, ``3 steps``, ``100 evaluation batches``."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


class RunTimeEstimate(L.Callback):
    """Print a measured estimate of an epoch's and the run's duration on the CPU, once.

    The rule: on the CPU only (GPU steps are timed wrongly by compilation and asynchronous
    kernels), after the warm-up steps, the callback times whole training iterations (from one
    ``on_train_batch_end`` to the next, so data, forward, backward, optimizer step and logging)
    until it has ``min_steps`` of them and ``min_seconds`` measured, or ``max_steps``, or the first
    epoch with a timed step ends (short epochs). Evaluation
    is timed from the sanity-check batches before training (forward passes on the test split);
    without those (``num_sanity_val_steps: 0``) the estimate covers the training steps only and
    says so. The estimate is then::

        epoch = steps per epoch * median step time + evaluation batches * median eval batch time
        run   = the remaining epochs (or ``max_steps``) at that rate

    A run estimated under :data:`MIN_REPORTED_RUN_S` prints nothing; one of at least
    :data:`GPU_SIZED_RUN_S` also gets the advice to run ``configs/cpu.yaml`` instead, unless it is
    no larger than that (at most :data:`CPU_SCALE_PARAMETERS` parameters and
    :data:`CPU_SCALE_EPOCHS` epochs: then the CPU is merely slow or busy). Printed
    through the progress bar when there is one (so the bar is not torn), else with
    ``rank_zero_info``; only process 0 prints.

    Args:
        warmup_steps: Training steps not timed (one-time costs: compiling a fused optimizer or a
            network, allocator growth, first-touch of the data on the device).
        min_steps: Fewest timed steps before estimating.
        min_seconds: Fewest seconds of timed steps before estimating (unless ``max_steps`` come
            first), so that fast steps are averaged over a stable stretch.
        max_steps: Estimate after this many timed steps at the latest.
    """

    def __init__(
        self,
        warmup_steps: int = 2,
        min_steps: int = 3,
        min_seconds: float = 15.0,
        max_steps: int = 20,
    ) -> None:
        self.warmup_steps = warmup_steps
        self.min_steps = min_steps
        self.min_seconds = min_seconds
        self.max_steps = max_steps
        self._step_times: list[float] = []
        self._eval_times: list[float] = []
        self._steps_seen = 0
        self._last_end: float | None = None
        self._eval_start: float | None = None
        self._done = False
        #: The message printed (None until then, or when the rule said nothing): for tests.
        self.message: str | None = None

    @staticmethod
    def _on_cpu(trainer: L.Trainer) -> bool:
        return trainer.strategy.root_device.type == "cpu"

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Start timing an evaluation batch of the sanity check."""
        if trainer.sanity_checking:
            self._eval_start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Record an evaluation batch's time (sanity check only: it comes before training)."""
        if trainer.sanity_checking and self._eval_start is not None:
            self._eval_times.append(time.perf_counter() - self._eval_start)
            self._eval_start = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Do not count the evaluation and epoch change between two epochs as a step."""
        self._last_end = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Time the iteration that just ended; estimate once enough are timed."""
        if self._done:
            return
        if not self._on_cpu(trainer):
            self._done = True
            return
        now = time.perf_counter()
        self._steps_seen += 1
        if self._last_end is not None and self._steps_seen > self.warmup_steps:
            self._step_times.append(now - self._last_end)
        self._last_end = now
        timed = len(self._step_times)
        if timed >= self.max_steps or (
            timed >= self.min_steps and sum(self._step_times) >= self.min_seconds
        ):
            self._report(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """An epoch shorter than the measuring stretch: estimate from the steps timed in it."""
        if not self._done and self._step_times:
            self._report(trainer, pl_module)

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done = True
        self.message = self.describe(trainer, pl_module)
        if self.message is None:
            return
        bar = trainer.progress_bar_callback
        if bar is not None and getattr(bar, "is_enabled", False):
            if trainer.is_global_zero:
                bar.print(self.message)
        else:
            rank_zero_info(self.message)

    def describe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        """The message for the steps timed so far, or None when the rule says nothing.

        Returns:
            One paragraph, e.g. ``padam-fit: training wrn16_4 (2.78M parameters) for 200
            epochs on the CPU: 5.8 s per step (median of 4 steps), so an epoch (391 steps and 100
            evaluation batches) takes ~40 min and the run ~133 hours. ...``
        """
        step_s = statistics.median(self._step_times)
        steps_per_epoch = trainer.num_training_batches
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            return None  # an iterable of unknown length: no epoch to speak of
        eval_batches = sum(trainer.num_val_batches) if trainer.num_val_batches else 0
        eval_s = statistics.median(self._eval_times) if self._eval_times else None
        every = trainer.check_val_every_n_epoch or 1
        eval_epoch_s = eval_batches * eval_s / every if eval_s is not None and eval_batches else 0.0
        epoch_s = steps_per_epoch * step_s + eval_epoch_s

        done_steps = trainer.global_step
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        remaining_steps = None
        if max_epochs is not None:
            remaining_steps = max(max_epochs * steps_per_epoch - done_steps, 0)
        if trainer.max_steps and trainer.max_steps > 0:
            by_steps = max(trainer.max_steps - done_steps, 0)
            remaining_steps = (
                by_steps if remaining_steps is None else min(remaining_steps, by_steps)
            )
        if remaining_steps is None:
            return None  # no end configured
        run_s = remaining_steps * step_s + remaining_steps / steps_per_epoch * eval_epoch_s
        if run_s < MIN_REPORTED_RUN_S:
            return None

        arch = getattr(pl_module, "hparams", {}).get("arch", type(pl_module).__name__)
        parameters = sum(p.numel() for p in pl_module.parameters())
        if max_epochs is not None:
            length = _count(int(max_epochs), "epoch")
        else:
            length = _count(int(trainer.max_steps), "step")
        timed = _count(len(self._step_times), "step")
        if eval_s is not None and eval_batches:
            batches = _count(int(eval_batches), "evaluation batch", "evaluation batches")
            contents = f"{_count(steps_per_epoch, 'step')} and {batches}"
            evaluation = ""
        else:
            contents = _count(steps_per_epoch, "step")
            evaluation = " (training steps only: the evaluation was not timed)"
        resumed = " remaining" if done_steps > self._steps_seen else ""  # a resumed run
        message = (
            f"padam-fit: training {arch} ({parameters / 1e6:.2f}M parameters) for {length} on the "
            f"CPU: {step_s:.2f} s per step (median of {timed}), so an epoch "
            f"({contents}) takes ~{format_duration(epoch_s)} and the{resumed} run "
            f"~{format_duration(run_s)}{evaluation}."
        )
        larger = parameters > CPU_SCALE_PARAMETERS or (max_epochs or 0) > CPU_SCALE_EPOCHS
        if run_s >= GPU_SIZED_RUN_S and larger:
            message += f" This config is sized for a GPU. {CPU_ALTERNATIVE}"
        return message
