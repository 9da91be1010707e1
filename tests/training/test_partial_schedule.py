"""PartialSchedule: values at given epochs/steps, lr composition, resume, and its errors."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from padam_lightning.errors import UserError
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.partial_schedule import PartialSchedule, scheduled_value


class PartialSGD(torch.optim.SGD):
    """SGD with a ``partial`` entry in its groups: stands in for Padam (which owns the math)."""

    def __init__(self, params: Any, lr: float, partial: float = 0.125) -> None:
        super().__init__(params, lr=lr, momentum=0.9)
        for group in self.param_groups:
            group["partial"] = partial


class Recorder(L.LightningModule):
    """A linear model that records ``partial`` and ``lr`` as the optimizer sees them."""

    def __init__(self, optimizer: str = "partial_sgd", scheduler: str = "multistep") -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.optimizer_kind = optimizer
        self.scheduler_kind = scheduler
        self.per_epoch: dict[int, tuple[float, float]] = {}
        self.per_step: dict[int, tuple[float, float]] = {}

    def _group(self) -> dict[str, Any]:
        return self.trainer.optimizers[0].param_groups[0]

    def on_train_epoch_start(self) -> None:  # runs after the callbacks' hook
        group = self._group()
        self.per_epoch[self.current_epoch] = (group.get("partial", math.nan), group["lr"])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        group = self._group()
        self.per_step[self.global_step] = (group.get("partial", math.nan), group["lr"])
        inputs, targets = batch
        return nn.functional.cross_entropy(self.layer(inputs), targets)

    def configure_optimizers(self) -> Any:
        if self.optimizer_kind == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=0.1)
        else:
            optimizer = PartialSGD(self.parameters(), lr=0.1)
        if self.scheduler_kind == "none":
            return optimizer
        if self.scheduler_kind == "lambda":
            scheduler: Any = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5**e)
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2], gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(12, 4, generator=generator), torch.arange(12) % 2)
        return DataLoader(data, batch_size=4)


def _trainer(tmp_path: Path, max_epochs: int, **kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**settings, **kwargs})


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # total 5: epoch t has progress t/4; the last epoch (4) and later hold p_end.
        ("linear", [0.25, 0.203125, 0.15625, 0.109375, 0.0625, 0.0625]),
        (
            "cosine",
            [0.25]
            + [0.0625 + 0.1875 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (1, 2, 3)]
            + [0.0625, 0.0625],
        ),
        ("constant", [0.25] * 6),
    ],
)
def test_scheduled_values_at_each_epoch(shape: str, expected: list[float]) -> None:
    end = 0.25 if shape == "constant" else 0.0625
    values = [scheduled_value(t, start=0.25, end=end, shape=shape, total=5) for t in range(6)]
    assert values == pytest.approx(expected, abs=1e-15)
    assert values[-1] == expected[-1]  # the end value exactly, not up to rounding


def test_step_shape_moves_one_equal_stage_per_milestone() -> None:
    values = [
        scheduled_value(t, start=0.25, end=0.0625, shape="step", total=1, milestones=(2, 4))
        for t in range(6)
    ]
    assert values == [0.25, 0.25, 0.15625, 0.15625, 0.0625, 0.0625]


def test_epoch_schedule_sets_p_and_composes_lr_scale_with_multistep(tmp_path: Path) -> None:
    schedule = PartialSchedule(
        p_start=0.25, p_end=0.0625, shape="linear", lr_start_scale=0.1, lr_end_scale=1.0
    )
    module = Recorder()
    _trainer(tmp_path, 4, callbacks=[schedule], enable_checkpointing=False).fit(module)
    expected_p = [0.25, 0.25 - 0.1875 / 3, 0.25 - 2 * 0.1875 / 3, 0.0625]
    scale = [0.1 + 0.9 * t / 3 for t in range(4)]
    decay = [1.0, 1.0, 0.1, 0.1]  # MultiStepLR milestone 2
    for epoch in range(4):
        partial, lr = module.per_epoch[epoch]
        assert partial == pytest.approx(expected_p[epoch], abs=1e-15)
        assert lr == pytest.approx(0.1 * decay[epoch] * scale[epoch], rel=1e-12)


def test_step_schedule_follows_the_global_step_and_logs_it(tmp_path: Path) -> None:
    schedule = PartialSchedule(p_start=0.25, p_end=0.0, shape="linear", interval="step")
    module = Recorder(scheduler="none")
    trainer = _trainer(tmp_path, 2, callbacks=[schedule], enable_checkpointing=False)
    trainer.fit(module)
    total = 6  # 3 batches x 2 epochs
    assert sorted(module.per_step) == list(range(total))
    for step, (partial, lr) in module.per_step.items():
        assert partial == pytest.approx(0.25 * (1 - step / (total - 1)), abs=1e-15)
        assert lr == 0.1
    assert float(trainer.logged_metrics["optim/partial_step"]) == pytest.approx(0.0)


def _stop_after(epochs: int) -> L.Callback:
    class StopAfter(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch + 1 >= epochs:
                trainer.should_stop = True

    return StopAfter()


def _schedule() -> PartialSchedule:
    return PartialSchedule(
        p_start=0.25, p_end=0.0625, shape="cosine", lr_start_scale=0.5, lr_end_scale=2.0
    )


def test_resume_continues_with_the_values_of_an_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    straight = Recorder()
    _trainer(tmp_path / "a", 4, callbacks=[_schedule()], enable_checkpointing=False).fit(straight)

    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = Recorder()
    _trainer(tmp_path / "b", 4, callbacks=[_schedule(), checkpoint, _stop_after(2)]).fit(first)
    assert sorted(first.per_epoch) == [0, 1]
    resumed = Recorder()
    _trainer(tmp_path / "b", 4, callbacks=[_schedule()], enable_checkpointing=False).fit(
        resumed, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert sorted(resumed.per_epoch) == [2, 3]
    for epoch in (2, 3):
        assert resumed.per_epoch[epoch] == straight.per_epoch[epoch]  # exactly
    for step in resumed.per_step:
        assert resumed.per_step[step] == straight.per_step[step]
    for before, after in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)


class MemoryLogger(Logger):
    """Keeps every logged metric in memory: ``records`` is a list of ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def per_epoch(self, tag: str) -> dict[int, float]:
        """``{epoch: value}`` of an epoch-level tag (Lightning logs its ``epoch`` with it)."""
        return {
            round(metrics["epoch"]): metrics[tag] for _, metrics in self.records if tag in metrics
        }

    def per_step(self, tag: str) -> dict[int, float]:
        """``{global step: value}`` of a step-level tag."""
        return {
            step: metrics[tag]
            for step, metrics in self.records
            if step is not None and tag in metrics
        }


#: Batches per epoch of :func:`_fit_classifier`'s data (8 images, batch 2).
CLASSIFIER_STEPS_PER_EPOCH = 4


def _step_schedule() -> PartialSchedule:
    # Padam is configured with p 1/8, which the schedule never takes: a logged 1/8 is a bug.
    return PartialSchedule(p_start=0.25, p_end=0.0625, shape="linear", interval="step")


def _fit_classifier(
    root: Path, max_epochs: int, callbacks: list[L.Callback], ckpt_path: str | None = None
) -> tuple[ImageClassifier, MemoryLogger]:
    """A few steps of the real training module (wrn10_1, Padam p 1/8) on 8 random images."""
    torch.manual_seed(0)
    model = ImageClassifier(
        arch="wrn10_1",
        num_classes=2,
        optimizer=lambda params: Padam(params, lr=0.01, partial=0.125),
        compile=False,
        channels_last=False,
    )
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=generator), torch.arange(8) % 2)
    logger = MemoryLogger()
    trainer = _trainer(
        root,
        max_epochs,
        callbacks=callbacks,
        logger=logger,
        limit_val_batches=0,
        log_every_n_steps=1,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )
    trainer.fit(model, DataLoader(data, batch_size=2), ckpt_path=ckpt_path)
    return model, logger


def test_step_schedule_logs_the_first_steps_p_as_the_epochs_partial(tmp_path: Path) -> None:
    schedule = _step_schedule()
    _, logger = _fit_classifier(tmp_path, 3, [schedule])
    logged = logger.per_epoch("optim/partial")
    assert sorted(logged) == [0, 1, 2]
    assert logged[0] == 0.25  # p_start, not the optimizer's configured 1/8
    for epoch, value in logged.items():
        first_step = epoch * CLASSIFIER_STEPS_PER_EPOCH
        assert value == pytest.approx(schedule.partial_at(first_step), abs=1e-7)  # float32 log


def test_resumed_step_schedule_restores_p_exactly(tmp_path: Path) -> None:
    straight_model, straight = _fit_classifier(tmp_path / "a", 3, [_step_schedule()])

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit_classifier(tmp_path / "b", 3, [_step_schedule(), checkpoint, _stop_after(1)])
    resumed_model, resumed = _fit_classifier(
        tmp_path / "b", 3, [_step_schedule()], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )

    partial = straight.per_epoch("optim/partial")
    assert resumed.per_epoch("optim/partial") == {e: partial[e] for e in (1, 2)}
    assert partial[1] == pytest.approx(0.25 - 0.1875 * 4 / 11, abs=1e-7)  # step 4 of 12
    by_step = straight.per_step("optim/partial_step")
    assert resumed.per_step("optim/partial_step") == {
        s: by_step[s] for s in range(CLASSIFIER_STEPS_PER_EPOCH, 3 * CLASSIFIER_STEPS_PER_EPOCH)
    }
    for model in (straight_model, resumed_model):
        assert model.trainer.optimizers[0].param_groups[0]["partial"] == 0.0625
    for before, after in zip(straight_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_resume_with_a_changed_schedule_is_refused(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, 3, callbacks=[_schedule(), checkpoint, _stop_after(1)]).fit(Recorder())
    changed = PartialSchedule(
        p_start=0.25, p_end=0.125, shape="cosine", lr_start_scale=0.5, lr_end_scale=2.0
    )
    with pytest.raises(UserError, match=r"another schedule \(p_end 0.0625 -> 0.125"):
        _trainer(tmp_path, 3, callbacks=[changed], enable_checkpointing=False).fit(
            Recorder(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
        )
    # max_epochs decides total when it is not set: changing it on resume changes the schedule.
    with pytest.raises(UserError, match=r"total 3 -> 5"):
        _trainer(tmp_path, 5, callbacks=[_schedule()], enable_checkpointing=False).fit(
            Recorder(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
        )


def test_optimizer_without_partial_is_a_user_error(tmp_path: Path) -> None:
    schedule = PartialSchedule(p_start=0.25, p_end=0.0625)
    with pytest.raises(UserError, match=r"torch.optim.adam.Adam has none"):
        _trainer(tmp_path, 1, callbacks=[schedule], enable_checkpointing=False).fit(
            Recorder(optimizer="adam")
        )


def test_lr_scale_with_a_scheduler_that_resets_the_lr_is_refused(tmp_path: Path) -> None:
    scaled = PartialSchedule(p_start=0.25, p_end=0.0625, lr_start_scale=0.1)
    with pytest.raises(UserError, match=r"LambdaLR recomputes the lr"):
        _trainer(tmp_path, 1, callbacks=[scaled], enable_checkpointing=False).fit(
            Recorder(scheduler="lambda")
        )
    # Without an lr scale any scheduler is fine: the callback only writes p.
    module = Recorder(scheduler="lambda")
    plain = PartialSchedule(p_start=0.25, p_end=0.0625)
    _trainer(tmp_path, 2, callbacks=[plain], enable_checkpointing=False).fit(module)
    assert [module.per_epoch[e][1] for e in (0, 1)] == pytest.approx([0.1, 0.05])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p_start": 0.6, "p_end": 0.1}, "p_start must be in [0, 1/2]"),
        ({"p_start": 0.25}, "shape 'linear' needs p_end"),
        ({"p_start": 0.25, "p_end": 0.1, "shape": "exp"}, "shape must be one of"),
        ({"p_start": 0.25, "p_end": 0.1, "interval": "batch"}, "interval must be one of"),
        ({"p_start": 0.25, "p_end": 0.1, "shape": "step"}, "shape step needs milestones"),
        (
            {"p_start": 0.25, "p_end": 0.1, "shape": "step", "milestones": [5, 3]},
            "strictly increasing",
        ),
        ({"p_start": 0.25, "p_end": 0.1, "milestones": [5]}, "used by shape step only"),
        ({"p_start": 0.25, "p_end": 0.1, "lr_end_scale": 0}, "lr_end_scale must be > 0"),
        ({"p_start": 0.25, "p_end": 0.1, "shape": "constant"}, "shape constant keeps p_start"),
        ({"p_start": 0.25, "p_end": 0.1, "total": 0}, "total must be at least 1"),
    ],
)
def test_invalid_settings_are_user_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        PartialSchedule(**kwargs)
    assert message in str(caught.value)


def test_the_settings_are_the_constructor_arguments_kept_as_attributes() -> None:
    # config() is the one list of the settings (checkpoints, resume checks, the HParams record).
    schedule = PartialSchedule(p_start=0.25, p_end=0.1, shape="step", milestones=[3, 6])
    arguments = ["p_start", "p_end", "shape", "interval", "total", "milestones"]
    arguments += ["lr_start_scale", "lr_end_scale"]
    assert list(inspect.signature(PartialSchedule).parameters) == arguments
    assert list(schedule.config()) == arguments
    assert [getattr(schedule, name) for name in arguments] == [
        0.25, 0.1, "step", "epoch", None, (3, 6), 1.0, 1.0
    ]  # fmt: skip
