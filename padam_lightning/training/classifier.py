"""The LightningModule that trains an image classifier with an injected optimizer and schedule."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import Metric

from padam_lightning.data.sampling import PADDING_LABEL
from padam_lightning.errors import UserError
from padam_lightning.models import build_model
from padam_lightning.optim import Padam

STAGES = ("train", "val", "test")

#: Checkpoint key holding the run's optimizer classes (checked on resume, here and by padam-fit).
OPTIMIZER_CLASSES_KEY = "padam_lightning_optimizer_classes"

#: Checkpoint key holding the lr and p of the epoch in progress (logged at its end).
EPOCH_OPTIM_VALUES_KEY = "padam_lightning_epoch_optim_values"

#: What to do when a checkpoint cannot continue the run a command describes.
RESUME_HINT = (
    "A resumed run continues with the checkpoint's network, optimizer, schedules and data order: "
    "resume with the run's own config (its config.yaml), or start a new run without --ckpt_path "
    "to change them."
)

#: What to do when a checkpoint cannot be evaluated with the network and data a command describes.
EVALUATION_HINT = (
    "An evaluation loads the checkpoint's weights into the network this command configures, for "
    "the data it configures: evaluate with the run's own config (--config <run>/config.yaml), "
    "which names both."
)


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, e.g. ``padam_lightning.optim.padam.Padam``."""
    return f"{cls.__module__}.{cls.__qualname__}"


#: The modes ``torch.compile`` accepts (``compile_mode``); None is its default.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _triton_available() -> bool:
    """Whether torch.compile can generate GPU kernels here (it needs Triton for CUDA)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - very old or unusual torch builds
        return False
    return bool(has_triton())


#: ``trainer.precision`` values that need NVIDIA Transformer Engine, and what to use instead.
_TRANSFORMER_ENGINE_PRECISIONS = ("transformer-engine", "transformer-engine-float16")


def check_precision(precision: object) -> None:
    """Refuse a ``trainer.precision`` that Lightning accepts but this package cannot train with.

    Every other value Lightning accepts trains: ``32-true``/``32``, ``64-true``/``64``,
    ``16-true``, ``bf16-true``, ``bf16-mixed``/``bf16`` and ``16-mixed``/``16`` (which Lightning
    itself turns into ``bf16-mixed`` on the CPU, with a warning); the data module builds each
    batch in the precision's dtype.

    Raises:
        UserError: For ``transformer-engine*``: its precision plugin converts only linear and
            layer-norm layers (these networks are convolutional), needs the separately installed
            NVIDIA Transformer Engine library and a Hopper-class GPU.
    """
    if str(precision) in _TRANSFORMER_ENGINE_PRECISIONS:
        raise UserError(
            f"trainer.precision {precision} is not supported: Transformer Engine converts only "
            "linear layers (these networks are convolutional) and needs its own library and an "
            "NVIDIA Hopper GPU; use bf16-mixed (or 16-mixed on GPUs without bf16)."
        )


class WeightedMean(Metric):
    """The weighted mean of per-sample values, kept as two sums on the device.

    Unlike torchmetrics' ``MeanMetric`` (whose default NaN check reads a value back to the host
    at every update, and whose ``nan_strategy="disable"`` drops the weights), :meth:`update` is
    two on-device additions: it never waits for the device nor copies anything to it. The sums
    are reduced across DDP processes by torchmetrics when the epoch ends.
    """

    full_state_update = False
    total: torch.Tensor
    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Add per-sample ``values`` with ``weights`` (same shape; 0 leaves a sample out)."""
        self.total += (values * weights).sum()
        self.weight += weights.sum()

    def compute(self) -> torch.Tensor:
        """``sum(values * weights) / sum(weights)`` over everything since the last reset."""
        return self.total / self.weight


def _dynamo_counters() -> dict[str, int]:
    """torch.compile's process-wide counts: frames compiled, graphs, graph breaks, recompiles."""
    from torch._dynamo.utils import counters, guard_failures

    return {
        "frames": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "recompiles": _count_recompiles(guard_failures.values()),
    }


def _count_recompiles(failures_per_code: Iterable[Iterable[object]]) -> int:
    """Recompilations, from dynamo's guard failures (``"<frame>/<entry>: <reason>"`` strings).

    Each recompilation of a frame first checks all its cached entries and records one failure
    per entry, the oldest one (``<frame>/0``) always among them; so recompilations are counted
    by that entry's failures, not by all failures (which would count 1 + 2 + 3 for three).
    """
    return sum(
        1
        for failures in failures_per_code
        for failure in failures
        if str(failure).split(":", 1)[0].endswith("/0")
    )


def _recompile_reasons(limit: int = 3) -> list[str]:
    """The first ``limit`` distinct reasons dynamo recompiled (guard failures), one line each."""
    from torch._dynamo.utils import guard_failures

    reasons: list[str] = []
    for failures in guard_failures.values():
        for failure in failures:
            line = " ".join(str(failure).split())
            if line not in reasons:
                reasons.append(line)
    return reasons[:limit]


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
    partial exponent, ``optim/partial``; these are written at step = the epoch index (0, 1, ...),
    so TensorBoard draws them over epochs, as the paper does (a logged ``step`` is the x-axis
    Lightning gives a log call). Logged every ``trainer.log_every_n_steps`` steps, at the global
    step: ``train/loss_step``, the loss of that step, so a run shows progress minutes after its
    start, and Lightning's own ``epoch`` (the epoch of that step), so its TensorBoard card maps
    global steps to epochs. Validation and test metrics are exact
    over the split under DDP too (padding positions of a shard are weighed 0).

    No training step waits for the device: the metrics are sums kept on the device
    (:class:`WeightedMean`) and Lightning reads the per-step loss only at its logging steps. The
    module does not check the loss for NaN or infinity: add
    :class:`~padam_lightning.training.divergence.DivergenceGuard` to the trainer's callbacks
    (``padam-fit`` does), which does so without making a step wait for the device.

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
            per train/eval mode at the first steps; the batch dimension is dynamic, so the last,
            smaller batch of an epoch and the evaluation batches reuse the graphs). None (the
            default): on when training on a CUDA device where Triton is installed, off otherwise
            (on the CPU, compiling takes minutes per graph, and a step ran from 17% slower to
            34% faster, which pays off only in runs of hours; see docs/performance.md). When the
            forward pass fails to compile, an explicit ``True`` stops the run with a
            :class:`~padam_lightning.errors.UserError`; an automatic one warns with the reason
            and runs the network eagerly from then on (``is_compiled`` becomes False). A failure
            while compiling the backward pass stops the run either way. torch.compile's counters
            (graphs, recompiles and their reasons) are logged once, when training ends. The
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
                f"{stage}_metrics": nn.ModuleDict({"loss": WeightedMean(), "err": WeightedMean()})
                for stage in STAGES
            }
        )
        for metric in self._train_metrics():
            metric.persistent(True)  # a run resumed mid-epoch keeps the epoch's sums so far
        #: The epoch's ``optim/lr`` and ``optim/partial``, logged when the epoch ends.
        self._epoch_optim_values: dict[str, float] = {}
        # torch.compile's counters when the network was compiled (logged as differences).
        self._counters_at_compile: dict[str, int] | None = None
        #: torch.compile's counts over this module's runs (set when training ends), e.g.
        #: ``{"graphs": 2, "recompiles": 1, ...}``; None when the network was not compiled.
        self.compile_stats: dict[str, int] | None = None
        # Optimizer classes recorded in the checkpoint being resumed (checked in on_train_start).
        self._checkpoint_optimizers: list[str] | None = None
        self._check_optimizer()

    def _train_metrics(self) -> list[Metric]:
        train_metrics: Any = self.metrics["train_metrics"]
        return list(train_metrics.values())

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

    def setup(self, stage: str) -> None:
        """Refuse, before any step, a precision this package cannot train with.

        Raises:
            UserError: See :func:`check_precision`.
        """
        if self._trainer is not None:
            check_precision(self._trainer.precision)

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
        else:
            compile_network = self.compile_network
        if compile_network and not self.is_compiled:
            # In place (nn.Module.compile), not torch.compile(net): the parameters keep their
            # names, so a checkpoint loads the same with compilation on or off.
            self.net.compile(mode=self.compile_mode)
            self.is_compiled = True
            self._counters_at_compile = _dynamo_counters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of normalised images.

        Raises:
            UserError: If ``compile=True`` and torch.compile fails on the network.
        """
        if self.uses_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.is_compiled:
            return self.net(images)
        # One graph for every batch size: without this the last, smaller batch of an epoch
        # (80 of 50,000) and the evaluation batch (100) would each compile the network again.
        # ("maybe": a batch of 1 may still specialise, instead of failing the run.)
        torch._dynamo.maybe_mark_dynamic(images, 0)
        try:
            return self.net(images)
        except torch._dynamo.exc.TorchDynamoException as err:
            self._compile_failed(err)
        return self.net(images)

    def _compile_failed(self, err: Exception) -> None:
        """Report a failed compilation: stop if it was asked for, else go on eagerly.

        Raises:
            UserError: If ``compile=True`` was set explicitly.
        """
        reason = " ".join(str(err).split())[:300]
        if self.compile_network:
            raise UserError(
                f"torch.compile failed on the network ({type(err).__name__}: {reason}); train "
                "without it: --model.compile false"
            ) from err
        warnings.warn(
            f"torch.compile failed on the network, which now runs eagerly (uncompiled): "
            f"{type(err).__name__}: {reason}",
            stacklevel=2,
        )
        self.net._compiled_call_impl = None  # nn.Module.compile's hook: back to plain calls
        self.is_compiled = False

    def on_fit_end(self) -> None:
        """Log torch.compile's counters once per run: graphs compiled, recompiles and why."""
        if self._counters_at_compile is None:
            return
        now = _dynamo_counters()
        self.compile_stats = {k: now[k] - self._counters_at_compile.get(k, 0) for k in now}
        stats = self.compile_stats
        message = (
            f"torch.compile (network{'' if self.is_compiled else ', fell back to eager'}): "
            f"{stats['graphs']} graphs compiled from {stats['frames']} frames, "
            f"{stats['graph_breaks']} graph breaks, {stats['recompiles']} recompiles"
        )
        reasons = _recompile_reasons()
        if stats["recompiles"] and reasons:
            message += "; recompiled because: " + " | ".join(reasons)
        rank_zero_info(message)

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """The batch's mean loss; updates the stage's metrics over the counted samples.

        Labels equal to ``PADDING_LABEL`` (positions that pad a DDP evaluation shard) are
        ignored by the loss and weigh 0 in the metrics.
        """
        images, labels = batch
        logits = self(images)
        # Per sample (0 where the label is PADDING_LABEL, cross_entropy's ignore_index).
        losses = F.cross_entropy(logits, labels, reduction="none", ignore_index=PADDING_LABEL)
        counted = (labels != PADDING_LABEL).to(losses.dtype)
        # The mean over counted samples (a batch of padding only, possible in evaluation,
        # gives NaN here but adds nothing to the metrics).
        loss = losses.sum() / counted.sum()
        metrics: Any = self.metrics[f"{stage}_metrics"]
        metrics["loss"].update(losses.detach(), counted)
        errors = (logits.detach().argmax(dim=1) != labels).to(losses.dtype)
        metrics["err"].update(errors, counted)
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
        """One optimisation step's loss (a float32 scalar on the training device)."""
        loss = self._shared_step(batch, "train")
        # Read by Lightning only at its logging steps (every trainer.log_every_n_steps).
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and error on one evaluation batch."""
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and error on one test batch."""
        self._shared_step(batch, "test")

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        """Predicted classes of one batch of test images (``padam-fit predict``).

        Returns:
            ``{"pred": ..., "label": ...}``: int64 tensors of shape ``(B,)``, the arg-max class
            of each image and its true label, without the padding positions of a DDP shard.
        """
        images, labels = batch
        counted = labels != PADDING_LABEL
        pred = self(images).argmax(dim=1)
        return {"pred": pred[counted], "label": labels[counted]}

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums; note the learning rate and partial exponent it trains with.

        A run resumed mid-epoch skips this hook and goes on with the sums it saved; one resumed
        from an epoch's end (a best checkpoint, saved before Lightning reset them) starts afresh.
        """
        for metric in self._train_metrics():
            metric.reset()
        group = self.trainer.optimizers[0].param_groups[0]
        self._epoch_optim_values = {"optim/lr": float(group["lr"])}
        if "partial" in group:
            self._epoch_optim_values["optim/partial"] = float(group["partial"])

    def on_train_epoch_end(self) -> None:
        """Log the epoch's lr and p beside its loss, at the epoch's last step.

        Noted when the epoch starts (the epoch's scheduler step comes before this hook) and
        kept in checkpoints: a run resumed mid-epoch does not call ``on_train_epoch_start``.
        """
        for name, value in self._epoch_optim_values.items():
            self.log(name, value, on_step=False, on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the epoch's lr and p, and its training metrics summed over DDP processes.

        The training metrics are persistent (saved with the weights), so a run resumed mid-epoch
        goes on with the epoch's sums so far; under DDP each process holds its own part, so the
        file (written by process 0) gets the sum over all of them, and the other processes start
        from zero when they resume (:meth:`on_train_start`).
        """
        checkpoint[EPOCH_OPTIM_VALUES_KEY] = dict(self._epoch_optim_values)
        if self._trainer is not None and self.trainer.world_size > 1:
            prefix = "metrics.train_metrics."
            for key in [k for k in checkpoint["state_dict"] if k.startswith(prefix)]:
                total = checkpoint["state_dict"][key].clone()
                checkpoint["state_dict"][key] = self.trainer.strategy.reduce(total, reduce_op="sum")
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
        fitting = self._trainer is None or self.trainer.state.fn == TrainerFn.FITTING
        hint, what = (RESUME_HINT, "run") if fitting else (EVALUATION_HINT, "evaluation")
        if "arch" in saved and saved["arch"] != self.hparams["arch"]:
            raise UserError(
                f"the checkpoint is of a {saved['arch']} network, but this {what} asks for "
                f"{self.hparams['arch']}. {hint}"
            )
        if "num_classes" in saved and saved["num_classes"] != self.hparams["num_classes"]:
            raise UserError(
                f"the checkpoint's network has {saved['num_classes']} classes, but this {what}'s "
                f"data has {self.hparams['num_classes']}. {hint}"
            )
        self._checkpoint_optimizers = checkpoint.get(OPTIMIZER_CLASSES_KEY)
        self._epoch_optim_values = dict(checkpoint.get(EPOCH_OPTIM_VALUES_KEY, {}))

    def on_train_start(self) -> None:
        """Refuse to resume a run with another optimizer before its first step.

        Lightning loads any optimizer's state dict into any other (the state is keyed by
        parameter), so a Padam checkpoint resumed with SGD would only fail at the first step,
        deep inside the optimizer, or worse, train on with another method's state.

        Raises:
            UserError: If the checkpoint being resumed was trained with other optimizer classes.
        """
        if self.trainer.global_rank != 0:
            # The checkpoint's epoch sums are all processes' (on_save_checkpoint): counted once.
            for metric in self._train_metrics():
                metric.reset()
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
