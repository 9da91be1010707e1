"""A schedule for Padam's partial exponent p (and optionally the learning rate) over training.

Padam interpolates between SGD with momentum (p = 0) and AMSGrad (p = 1/2). The reproduction
study of the paper proposes moving along that line during training: start adaptive (p near 1/4,
small learning rate, fast early progress), end close to SGD (p near 1/16, larger learning rate,
better generalisation). :class:`PartialSchedule` does that as a Lightning callback::

    trainer:
      callbacks:
        - class_path: padam_lightning.training.partial_schedule.PartialSchedule
          init_args: {p_start: 0.25, p_end: 0.0625, shape: linear, lr_start_scale: 0.1}

Values are a pure function of the epoch (``interval: epoch``, set at the start of each epoch) or
of the optimizer step (``interval: step``, set before each batch, and the epoch's first step's
already at the start of the epoch, where the training module logs ``optim/partial``), so a run
resumed with ``--ckpt_path last`` continues with exactly the values of an uninterrupted run. The
first epoch (step) uses the start value and epoch (step) ``total - 1`` the end value; after that
the end value holds. Shapes, with progress ``f = min(t / (total - 1), 1)``:

- ``constant``: ``p_start`` throughout.
- ``linear``: ``p_start + (p_end - p_start) * f``.
- ``cosine``: ``p_start + (p_end - p_start) * (1 - cos(pi * f)) / 2``.
- ``step``: piecewise constant; after passing ``k`` of the ``n`` ``milestones`` (epochs or steps,
  like ``MultiStepLR``) the value is ``p_start + (p_end - p_start) * k / n``.

Learning rate. The learning-rate scheduler owns ``group["lr"]``. With ``lr_start_scale`` /
``lr_end_scale`` the callback multiplies the group's learning rate by the scale's change since the
last time it was applied (a factor baked into the lr, kept in the callback's checkpoint state).
Multiplicative schedulers (``MultiStepLR``, ``StepLR``, ``ExponentialLR``) compute each new lr
from the current one, so the two compose: ``lr(t) = base_lr * scheduler_factor(t) * scale(t)``.
Schedulers that recompute the lr from their base value (``LambdaLR``, ``OneCycleLR``,
``CosineAnnealingLR``...) would erase the factor, so that combination is refused with an error.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal, get_args

import lightning as L
import torch

from padam_lightning.errors import UserError

Shape = Literal["constant", "linear", "cosine", "step"]
Interval = Literal["epoch", "step"]

SHAPES: tuple[str, ...] = get_args(Shape)
INTERVALS: tuple[str, ...] = get_args(Interval)

#: Schedulers whose new lr is the current ``group["lr"]`` times a factor, so a scale composes.
MULTIPLICATIVE_SCHEDULERS = (
    torch.optim.lr_scheduler.MultiStepLR,
    torch.optim.lr_scheduler.StepLR,
    torch.optim.lr_scheduler.ExponentialLR,
)

#: Padam's exponent range: 0 is SGD with momentum, 1/2 is AMSGrad.
P_MIN, P_MAX = 0.0, 0.5


def scheduled_value(
    t: int,
    *,
    start: float,
    end: float,
    shape: str,
    total: int,
    milestones: tuple[int, ...] = (),
) -> float:
    """The value of a ``start -> end`` schedule at epoch or step ``t`` (0-based).

    Args:
        t: Epoch index or optimizer step count.
        start: Value at ``t = 0``.
        end: Value from ``t = total - 1`` on (for ``step``: after the last milestone).
        shape: ``constant``, ``linear``, ``cosine`` or ``step``.
        total: Length of the schedule in epochs or steps (unused by ``constant`` and ``step``).
        milestones: Increasing epochs or steps at which a ``step`` schedule moves one stage on.

    Returns:
        The scheduled value.
    """
    if shape == "constant":
        return start
    if shape == "step":
        passed = sum(1 for milestone in milestones if t >= milestone)
        if passed == len(milestones):
            return end
        return start + (end - start) * passed / len(milestones)
    fraction = min(t / max(total - 1, 1), 1.0)
    if fraction >= 1.0:
        return end
    if shape == "linear":
        return start + (end - start) * fraction
    if shape == "cosine":
        return start + (end - start) * (1.0 - math.cos(math.pi * fraction)) / 2.0
    raise ValueError(f"unknown shape {shape!r}")


class PartialSchedule(L.Callback):
    """Change Padam's partial exponent ``p`` (and optionally scale the lr) during training.

    It writes ``group["partial"]`` of every parameter group of every optimizer (and, when an lr
    scale is set, multiplies ``group["lr"]``; see the module docstring for how that composes with
    the lr scheduler). The training module logs ``optim/partial`` and ``optim/lr`` once per epoch;
    with ``interval="step"`` this callback also logs ``optim/partial_step`` at every step.

    Args:
        p_start: ``p`` at the first epoch (step), in [0, 1/2].
        p_end: ``p`` at the end of the schedule, in [0, 1/2]. Required except for ``constant``.
        shape: ``constant``, ``linear``, ``cosine`` or ``step``.
        interval: ``epoch`` (values change at the start of each epoch) or ``step`` (before each
            optimizer step).
        total: Schedule length in epochs or steps. Default: ``trainer.max_epochs`` for epochs,
            ``trainer.estimated_stepping_batches`` for steps.
        milestones: For ``shape="step"``: increasing epochs (steps) at which the value moves one
            equal stage from ``p_start`` towards ``p_end``.
        lr_start_scale: Factor on the scheduler's learning rate at the start (> 0).
        lr_end_scale: Factor on the scheduler's learning rate at the end (> 0); follows the same
            shape and milestones as ``p``.

    Raises:
        UserError: On an invalid setting, an optimizer without a ``partial`` hyperparameter, an
            lr scale combined with a non-multiplicative scheduler, or a resume whose schedule
            differs from the one the checkpoint was trained with.
    """

    def __init__(
        self,
        p_start: float,
        p_end: float | None = None,
        shape: Shape = "linear",
        interval: Interval = "epoch",
        total: int | None = None,
        milestones: list[int] | None = None,
        lr_start_scale: float = 1.0,
        lr_end_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if shape not in SHAPES:
            raise UserError(f"PartialSchedule: shape must be one of {SHAPES}, got {shape!r}.")
        if interval not in INTERVALS:
            raise UserError(
                f"PartialSchedule: interval must be one of {INTERVALS}, got {interval!r}."
            )
        if p_end is None:
            if shape != "constant":
                raise UserError(
                    f"PartialSchedule: shape {shape!r} needs p_end (the final p); "
                    "use shape: constant for a fixed p."
                )
            p_end = p_start
        for name, value in (("p_start", p_start), ("p_end", p_end)):
            if not P_MIN <= value <= P_MAX:
                raise UserError(
                    f"PartialSchedule: {name} must be in [0, 1/2] (0 is SGD with momentum, "
                    f"1/2 is AMSGrad), got {value}."
                )
        if shape == "constant" and (p_end != p_start or lr_end_scale != lr_start_scale):
            raise UserError(
                "PartialSchedule: shape constant keeps p_start and lr_start_scale; "
                "set p_end and lr_end_scale equal to them or choose another shape."
            )
        if total is not None and total < 1:
            raise UserError(f"PartialSchedule: total must be at least 1, got {total}.")
        if shape == "step":
            if not milestones:
                raise UserError(
                    "PartialSchedule: shape step needs milestones (epochs or steps at which the "
                    "value moves on), e.g. milestones: [100]."
                )
            if any(m < 1 for m in milestones) or any(
                b <= a for a, b in itertools.pairwise(milestones)
            ):
                raise UserError(
                    "PartialSchedule: milestones must be positive and strictly increasing, "
                    f"got {milestones}."
                )
        elif milestones:
            raise UserError(
                f"PartialSchedule: milestones are used by shape step only, not {shape!r}; "
                "remove them or set shape: step."
            )
        for name, value in (("lr_start_scale", lr_start_scale), ("lr_end_scale", lr_end_scale)):
            if not value > 0:
                raise UserError(f"PartialSchedule: {name} must be > 0, got {value}.")
        self.p_start = float(p_start)
        self.p_end = float(p_end)
        self.shape: str = shape
        self.interval: str = interval
        self.total = total
        self.milestones: tuple[int, ...] = tuple(int(m) for m in milestones or ())
        self.lr_start_scale = float(lr_start_scale)
        self.lr_end_scale = float(lr_end_scale)
        self._resolved_total: int | None = total
        # The lr scale currently multiplied into group["lr"] (1.0: none yet).
        self._applied_lr_scale = 1.0
        self._loaded_config: dict[str, Any] | None = None

    @property
    def scales_lr(self) -> bool:
        """Whether the schedule changes the learning rate."""
        return self.lr_start_scale != 1.0 or self.lr_end_scale != 1.0

    def partial_at(self, t: int) -> float:
        """``p`` at epoch or step ``t`` (needs ``total`` resolved, i.e. during training)."""
        return self._value(t, self.p_start, self.p_end)

    def lr_scale_at(self, t: int) -> float:
        """Factor on the scheduler's lr at epoch or step ``t``."""
        return self._value(t, self.lr_start_scale, self.lr_end_scale)

    def _value(self, t: int, start: float, end: float) -> float:
        total = self._resolved_total
        if total is None:
            raise RuntimeError("PartialSchedule: total is resolved when training starts")
        return scheduled_value(
            t, start=start, end=end, shape=self.shape, total=total, milestones=self.milestones
        )

    def config(self) -> dict[str, Any]:
        """The schedule's settings (with ``total`` as resolved), stored in checkpoints.

        Its keys are the constructor's arguments, each kept as an attribute of that name (the
        HParams record of :mod:`~padam_lightning.training.tensorboard` reads them by these keys).
        """
        return {
            "p_start": self.p_start,
            "p_end": self.p_end,
            "shape": self.shape,
            "interval": self.interval,
            "total": self._resolved_total,
            "milestones": list(self.milestones),
            "lr_start_scale": self.lr_start_scale,
            "lr_end_scale": self.lr_end_scale,
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resolve ``total``, check the optimizer and scheduler, and check a resumed schedule."""
        if self.total is None:
            if self.interval == "epoch":
                if trainer.max_epochs is None or trainer.max_epochs < 1:
                    raise UserError(
                        "PartialSchedule: set total (epochs) when trainer.max_epochs is not set."
                    )
                self._resolved_total = int(trainer.max_epochs)
            else:
                steps = trainer.estimated_stepping_batches
                if not math.isfinite(steps):
                    raise UserError(
                        "PartialSchedule: set total (steps); the trainer's number of steps is "
                        "unbounded."
                    )
                self._resolved_total = int(steps)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if "partial" not in group:
                    raise UserError(
                        "PartialSchedule needs an optimizer with a partial exponent "
                        "(padam_lightning.optim.Padam, model.optimizer.class_path); "
                        f"{type(optimizer).__module__}.{type(optimizer).__name__} has none. "
                        "Remove the callback or switch the optimizer to Padam."
                    )
        if self.scales_lr:
            for scheduler_config in trainer.lr_scheduler_configs:
                scheduler = scheduler_config.scheduler
                if not isinstance(scheduler, MULTIPLICATIVE_SCHEDULERS):
                    names = ", ".join(cls.__name__ for cls in MULTIPLICATIVE_SCHEDULERS)
                    raise UserError(
                        "PartialSchedule: an lr scale (lr_start_scale/lr_end_scale) composes only "
                        f"with multiplicative lr schedulers ({names}) or none; "
                        f"{type(scheduler).__name__} recomputes the lr from its base value and "
                        "would erase the scale. Use one of those schedulers, or set both lr "
                        "scales to 1."
                    )
        if self._loaded_config is not None:
            reason = self._changes_from(self._loaded_config, self.config())
            if reason is not None:
                raise UserError(
                    f"{reason}. Resume with the original settings, or start a new run without "
                    "--ckpt_path."
                )

    @staticmethod
    def _changes_from(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
        """A line naming the settings that differ between two :meth:`config` results."""
        changed = {
            key: (saved.get(key), value)
            for key, value in current.items()
            if saved.get(key) != value
        }
        if not changed:
            return None
        details = ", ".join(
            f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items())
        )
        return (
            f"PartialSchedule: the checkpoint was trained with another schedule ({details}; "
            "total follows trainer.max_epochs when not set)"
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set this epoch's values (epoch interval) or those of its first step (step interval).

        The training module logs ``optim/partial`` in its own ``on_train_epoch_start``, which
        Lightning calls after this one: setting the first step's values here too makes that the
        value the epoch starts with, not the optimizer's configured ``p`` (first epoch) or the
        previous step's (later epochs). Applying a step's values twice changes nothing.
        """
        if self.interval == "epoch":
            self._apply(trainer, trainer.current_epoch)
        else:
            self._apply(trainer, trainer.global_step)  # the epoch's first step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Set this step's values and log ``optim/partial_step`` (step interval)."""
        if self.interval == "step":
            partial = self._apply(trainer, trainer.global_step)
            pl_module.log("optim/partial_step", partial, on_step=True, on_epoch=False)

    def _apply(self, trainer: L.Trainer, t: int) -> float:
        partial = self.partial_at(t)
        lr_factor = 1.0
        if self.scales_lr:
            scale = self.lr_scale_at(t)
            # Multiply by the change of scale only: the scheduler's own factor stays in the lr.
            lr_factor = scale / self._applied_lr_scale
            self._applied_lr_scale = scale
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["partial"] = partial
                if lr_factor != 1.0:
                    group["lr"] = group["lr"] * lr_factor
        return partial

    def state_dict(self) -> dict[str, Any]:
        """The settings (to detect a changed config on resume) and the applied lr scale."""
        return {"config": self.config(), "applied_lr_scale": self._applied_lr_scale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the applied lr scale; the settings are compared when training starts."""
        self._loaded_config = dict(state_dict["config"])
        self._applied_lr_scale = float(state_dict["applied_lr_scale"])
