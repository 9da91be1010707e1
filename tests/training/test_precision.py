"""Every ``trainer.precision`` Lightning accepts trains on the batches it should, or is refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from padam_lightning.cli import main
from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import UserError
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import ImageClassifier, check_precision


class DtypeRecorder(ImageClassifier):
    """A tiny convolutional classifier that records the dtypes its steps see."""

    def __init__(self) -> None:
        super().__init__(arch="wrn10_1", optimizer=lambda p: Padam(p, lr=0.01))
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=4),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 10),
        )
        self.seen: dict[str, tuple[torch.dtype, torch.dtype]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        images, _ = batch
        self.seen["train"] = (images.dtype, self(images).dtype)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, _ = batch
        self.seen["val"] = (images.dtype, self(images).dtype)
        super().validation_step(batch, batch_idx)


# (input batch dtype, logits dtype, parameter dtype) on the CPU. 16-mixed is bf16-mixed there:
# Lightning itself switches (with a warning), since CPUs have no fp16 autocast.
EXPECTED = {
    "32-true": (torch.float32, torch.float32, torch.float32),
    "64-true": (torch.float64, torch.float64, torch.float64),
    "16-true": (torch.float16, torch.float16, torch.float16),
    "bf16-true": (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    "bf16-mixed": (torch.float32, torch.bfloat16, torch.float32),
    "16-mixed": (torch.float32, torch.bfloat16, torch.float32),
    # The legacy names Lightning still accepts.
    "32": (torch.float32, torch.float32, torch.float32),
    "64": (torch.float64, torch.float64, torch.float64),
    "16": (torch.float32, torch.bfloat16, torch.float32),
    "bf16": (torch.float32, torch.bfloat16, torch.float32),
    32: (torch.float32, torch.float32, torch.float32),
    64: (torch.float64, torch.float64, torch.float64),
    16: (torch.float32, torch.bfloat16, torch.float32),
}


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.filterwarnings("ignore:.*16-mixed.*is not supported")
@pytest.mark.filterwarnings("ignore:.*precision=16")
@pytest.mark.parametrize("precision", list(EXPECTED), ids=[repr(p) for p in EXPECTED])
def test_each_accepted_precision_trains_on_batches_of_its_dtype(
    precision: Any, tmp_path: Path
) -> None:
    batch_dtype, logits_dtype, parameter_dtype = EXPECTED[precision]
    model = DtypeRecorder()
    data = CIFARDataModule(
        dataset="synthetic", batch_size=16, synthetic_train_size=32, synthetic_test_size=16
    )
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert model.seen["train"] == (batch_dtype, logits_dtype)
    assert model.seen["val"] == (batch_dtype, logits_dtype)
    assert {p.dtype for p in model.net.parameters()} == {parameter_dtype}
    assert trainer.global_step == 2
    for name in ("train/loss", "val/loss", "val/err"):
        assert math.isfinite(float(trainer.callback_metrics[name])), name


@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_transformer_engine_is_refused_with_what_to_use(precision: str) -> None:
    with pytest.raises(UserError, match=r"transformer-engine.*use bf16-mixed"):
        check_precision(precision)


def test_transformer_engine_is_refused_by_padam_fit_in_one_line(
    tiny_fit_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*tiny_fit_args, "--trainer.precision", "transformer-engine"])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert err.count("padam-fit: error:") == 1 and "use bf16-mixed" in err, err
    assert "Traceback" not in err
