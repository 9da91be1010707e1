"""The LightningModule that trains an image classifier with an injected optimizer and schedule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from padam_lightning.errors import TrainingDivergedError, UserError
from padam_lightning.models import build_model
from padam_lightning.optim import Padam
from padam_lightning.training.resume import OPTIMIZER_CLASSES_KEY, RESUME_HINT, qualified_name

STAGES = ("train", "val", "test")

#: The modes ``torch.compile`` accepts (``compile_mode``); None is its default.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _triton_available() -> bool:
    """Whether torch.compile can generate GPU kernels here (it needs Triton for CUDA)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - very old or unusual torch builds
        return False
    return bool(has_triton())


#: The paper's Padam settings, used when no optimizer is configured (also padam-fit's default).
DEFAULT_OPTIMIZER_ARGS: dict[str, float] = {"lr": 0.1, "partial": 0.125, "weight_decay": 5e-4}


def _default_optimizer(params: Iterable[Any]) -> torch.optim.Optimizer:
    """Padam with the paper's settings (lr 0.1, p 1/8, weight decay 5e-4)."""
    args = DEFAULT_OPTIMIZER_ARGS
    return Padam(params, lr=args["lr"], partial=args["partial"], weight_decay=args["weight_decay"])


class ImageClassifier(L.LightningModule):
    """A CIFAR classifier trained with cross-entropy: the training logic of the paper's experiments.

    The network comes from :func:`padam_lightning.models.build_model`; the optimizer and the
    learning-rate schedule are injected as callables (what ``LightningCLI`` builds from the
    ``model.optimizer`` / ``model.scheduler`` config sections), so ``configure_optimizers`` is the
    one place they are created, with or without the CLI.

    Logged once per epoch: ``train/loss``, ``train/err`` (top-1 error, a fraction), ``val/loss``,
    ``val/err`` (``test/*`` under ``padam-fit test``), ``optim/lr`` and, for optimizers with a
    partial exponent, ``optim/partial``.

    Args:
        arch: Network name for :func:`~padam_lightning.models.build_model`, e.g. ``vgg16``,
            ``resnet18``, ``wrn16_4``.
        num_classes: Number of classes (linked from the data module by the CLI).
        optimizer: Callable that takes the parameters and returns the optimizer, e.g.
            ``functools.partial(Padam, lr=0.1)``. Default: Padam, lr 0.1, p 1/8, weight decay 5e-4.
        scheduler: Callable that takes the optimizer and returns an epoch-wise learning-rate
            scheduler (e.g. ``MultiStepLR``). ``None`` keeps the learning rate constant.
        channels_last: Store the network's weights and the input batches in channels-last memory
            format (tensor-core convolutions with mixed precision on GPUs, AMX/oneDNN bf16
            convolutions on CPUs). None (the default): on when training on a CUDA device or in
            bf16 precision, off otherwise (fp32 on the CPU, where it is not consistently
            faster). Outputs are the same up to round-off either way.
        compile: Compile the network with ``torch.compile`` (a one-time cost of about a minute
            per shape and train/eval mode at the first steps). None (the default): on when
            training on a CUDA device where Triton is installed, off otherwise (on the CPU,
            compiling takes minutes per graph, and a step ran from 17% slower to 34% faster,
            which pays off only in runs of hours; see docs/performance.md); when on
            automatically, a compilation failure falls back to eager execution with a warning
            (``torch._dynamo.config.suppress_errors``). The
            network is compiled in place, so checkpoints are the same with and without it.
        compile_mode: ``torch.compile``'s ``mode`` (one of :data:`COMPILE_MODES`; None is its
            default), e.g. ``max-autotune-no-cudagraphs``.

    Raises:
        UserError: If ``compile_mode`` is not a torch.compile mode, or an optimizer or scheduler
            setting is invalid.
    """

    def __init__(
        self,
        arch: str = "wrn16_4",
        num_classes: int = 10,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        channels_last: bool | None = None,
        compile: bool | None = None,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise UserError(
                f"model.compile_mode must be one of {', '.join(COMPILE_MODES)} (or null for "
                f"torch.compile's default), got {compile_mode!r}."
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = build_model(arch, num_classes=num_classes)
        self.optimizer_factory: OptimizerCallable = optimizer or _default_optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        self.compile_network = compile  # (``self.compile`` is nn.Module's method)
        self.compile_mode = compile_mode
        # What is in effect; the None settings are resolved in configure_model, on the device.
        self.uses_channels_last = False
        self.is_compiled = False
        if channels_last:
            self._use_channels_last()
        # Mean loss and top-1 error per stage: torchmetrics reduces them across DDP processes.
        # (Keys get a suffix because nn.Module already has an attribute called ``train``.)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict({"loss": MeanMetric(), "err": MeanMetric()})
                for stage in STAGES
            }
        )
        # (loss, step, epoch, batch) of a training step whose loss has not been checked yet.
        self._unchecked_loss: tuple[torch.Tensor, int, int, int] | None = None
        # Optimizer classes recorded in the checkpoint being resumed (checked in on_train_start).
        self._checkpoint_optimizers: list[str] | None = None
        self._check_optimizer()

    def _check_optimizer(self) -> None:
        """Build the optimizer once on the real parameters so bad hyperparameters fail now."""
        try:
            optimizer = self.optimizer_factory(self.net.parameters())
            scheduler = None
            if self.scheduler_factory is not None:
                scheduler = self.scheduler_factory(optimizer)
        except (ValueError, TypeError) as err:
            raise UserError(f"invalid optimizer or scheduler setting: {err}") from err
        # torch accepts any gamma; a negative one fails only at the first decay, mid-run.
        gamma = getattr(scheduler, "gamma", None)
        if isinstance(gamma, int | float) and gamma <= 0:
            raise UserError(
                f"invalid scheduler setting: gamma is {gamma}, but {type(scheduler).__name__} "
                "multiplies the learning rate by gamma, so it must be > 0 (the paper uses 0.1)."
            )

    def _use_channels_last(self) -> None:
        self.net = self.net.to(memory_format=torch.channels_last)
        self.uses_channels_last = True

    def _training_device(self) -> torch.device:
        """The device the trainer will run on (configure_model runs before the move)."""
        trainer = self._trainer
        return trainer.strategy.root_device if trainer is not None else self.device

    def _training_precision(self) -> str:
        """The trainer's precision setting, e.g. ``bf16-mixed`` ("" without a trainer)."""
        trainer = self._trainer
        return str(trainer.precision) if trainer is not None else ""

    def configure_model(self) -> None:
        """Apply the automatic channels-last and compile settings for the training device.

        Lightning calls this in every process before each fit, validate or test, so it is
        idempotent: the layout is changed and the network compiled at most once.
        """
        cuda = self._training_device().type == "cuda"
        if self.channels_last is None:
            channels_last = cuda or self._training_precision().startswith("bf16")
        else:
            channels_last = self.channels_last
        if channels_last and not self.uses_channels_last:
            self._use_channels_last()
        if self.compile_network is None:
            compile_network = cuda and _triton_available()
            if compile_network:
                # Automatic compilation must never stop a run: where a compiler is missing or
                # fails, dynamo then warns and runs the network eagerly instead of raising.
                torch._dynamo.config.suppress_errors = True
        else:
            compile_network = self.compile_network
        if compile_network and not self.is_compiled:
            # In place (nn.Module.compile), not torch.compile(net): the parameters keep their
            # names, so a checkpoint loads the same with compilation on or off.
            self.net.compile(mode=self.compile_mode)
            self.is_compiled = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of normalised images."""
        if self.uses_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metrics: Any = self.metrics[f"{stage}_metrics"]
        batch_size = labels.numel()
        metrics["loss"].update(loss.detach(), weight=batch_size)
        metrics["err"].update((logits.detach().argmax(dim=1) != labels).float())
        if metrics["loss"].update_count == 1:
            # Handed to Lightning once per epoch, at the first update after its epoch-end reset,
            # not every step: Lightning keeps the Metric object and computes, syncs and resets
            # it when the epoch ends, so the values are the same, while each self.log of a
            # Metric costs about a millisecond of Python (it moves the metric to the device),
            # which is a large part of a whole training step on a GPU.
            for name in ("loss", "err"):
                self.log(
                    f"{stage}/{name}", metrics[name], on_step=False, on_epoch=True, prog_bar=True
                )
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        """One optimisation step's loss; stops training at the first non-finite loss.

        On the CPU the loss is checked at once. On an accelerator, reading it back every step
        would stall the device, so each step checks the previous step's loss (long finished by
        then): training stops one step later, and no checkpoint of diverged weights is written
        (see :meth:`on_save_checkpoint` and :meth:`on_train_epoch_end`).
        """
        self._raise_if_diverged()
        loss = self._shared_step(batch, "train")
        self._unchecked_loss = (loss.detach(), self.global_step, self.current_epoch, batch_idx)
        if loss.device.type == "cpu":
            self._raise_if_diverged()
        return loss

    def _raise_if_diverged(self) -> None:
        """Raise if the last unchecked training loss is NaN or infinite."""
        if self._unchecked_loss is None:
            return
        loss, step, epoch, batch_idx = self._unchecked_loss
        self._unchecked_loss = None
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at step {step} (epoch {epoch}, batch "
                f"{batch_idx}). The usual cause is a learning rate too large for this optimizer "
                "(Adam-like methods want ~1e-3, Padam and SGD ~0.1) or fp16 overflow. Lower "
                "model.optimizer.init_args.lr (or use bf16-mixed / 32-true precision) and start "
                "the run again: a resumed run keeps the optimizer settings stored in its "
                "checkpoint. The checkpoint of the last completed epoch was kept."
            )

    def on_train_epoch_end(self) -> None:
        """Check the epoch's last loss before the epoch's checkpoint is written."""
        self._raise_if_diverged()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and error on one evaluation batch."""
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and error on one test batch."""
        self._shared_step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Log the learning rate and partial exponent used during this epoch."""
        group = self.trainer.optimizers[0].param_groups[0]
        self.log("optim/lr", float(group["lr"]), on_step=False, on_epoch=True)
        if "partial" in group:
            self.log("optim/partial", float(group["partial"]), on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write diverged weights over the last good checkpoint; record the optimizer."""
        bad = [name for name, p in self.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDivergedError(
                f"parameters became non-finite by step {self.global_step} (first: {bad[0]}); "
                "not saving this checkpoint, so the last good one stays intact. Lower the "
                "learning rate and start the run again."
            )
        if self._trainer is not None:
            checkpoint[OPTIMIZER_CLASSES_KEY] = [
                qualified_name(type(optimizer)) for optimizer in self.trainer.optimizers
            ]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another network before its weights are loaded.

        Raises:
            UserError: If the checkpoint's architecture or class count differs from this model's.
        """
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("arch", "num_classes"):
            if key in saved and saved[key] != self.hparams[key]:
                raise UserError(
                    f"the checkpoint holds a {key} of {saved[key]!r}, but this run has "
                    f"{self.hparams[key]!r}. {RESUME_HINT}"
                )
        self._checkpoint_optimizers = checkpoint.get(OPTIMIZER_CLASSES_KEY)

    def on_train_start(self) -> None:
        """Refuse to resume a run with another optimizer before its first step.

        Lightning loads any optimizer's state dict into any other (the state is keyed by
        parameter), so a Padam checkpoint resumed with SGD would only fail at the first step,
        deep inside the optimizer, or worse, train on with another method's state.

        Raises:
            UserError: If the checkpoint being resumed was trained with other optimizer classes.
        """
        saved, self._checkpoint_optimizers = self._checkpoint_optimizers, None
        current = [qualified_name(type(optimizer)) for optimizer in self.trainer.optimizers]
        if saved is not None and saved != current:
            raise UserError(
                f"the checkpoint was trained with {', '.join(saved)}, but this run's optimizer "
                f"is {', '.join(current)}. {RESUME_HINT}"
            )

    def configure_optimizers(self) -> Any:
        """The injected optimizer and, when configured, its epoch-wise schedule."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1},
        }
