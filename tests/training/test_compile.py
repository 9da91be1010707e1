"""torch.compile of the network: one graph per mode for every batch size, and failures reported."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import UserError
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import ImageClassifier


class TinyCompiledClassifier(ImageClassifier):
    """ImageClassifier around a linear net with batch norm (train and eval graphs differ).

    Compiling it on the CPU takes seconds, where a convolutional network takes minutes.
    """

    def __init__(self, compile: bool | None = True) -> None:
        super().__init__(arch="wrn10_1", compile=compile, optimizer=lambda p: Padam(p, lr=0.1))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), nn.BatchNorm1d(10))


def _fit(model: ImageClassifier, tmp_path: Path, epochs: int) -> None:
    # 40 training images in batches of 16 (the last one 8); 20 test images in 16 + 4.
    data = CIFARDataModule(
        dataset="synthetic",
        batch_size=16,
        eval_batch_size=16,
        synthetic_train_size=40,
        synthetic_test_size=20,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)


@pytest.mark.slow  # compiles two graphs: about 30 s on 2 CPU cores, minutes when they are busy
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_smaller_batches_reuse_the_compiled_graphs_and_the_counts_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch._dynamo.reset()
    model = TinyCompiledClassifier()
    with caplog.at_level(logging.INFO):
        _fit(model, tmp_path, epochs=2)
    assert model.is_compiled
    assert model.compile_stats is not None
    # One graph for training, one for evaluation (batch norm differs), over batches of 16 and 8
    # and evaluation batches of 16 and 4, in both epochs. With a static batch dimension the
    # last batches compiled a third graph (dynamo then retries with a dynamic one).
    assert model.compile_stats["graphs"] == 2, model.compile_stats
    assert model.compile_stats["recompiles"] == 1  # training mode -> evaluation mode
    lines = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "2 graphs compiled" in lines[0] and "1 recompiles" in lines[0]
    # Evaluation runs under no_grad: the recompile's reason is the changed grad mode.
    assert "recompiled because:" in lines[0] and "grad_mode" in lines[0]


def _broken_backend(graph: Any, example_inputs: Any) -> Any:
    raise RuntimeError("no compiler here")


def test_a_requested_compile_that_fails_stops_with_one_line() -> None:
    torch._dynamo.reset()
    model = TinyCompiledClassifier(compile=True)
    model.net.compile(backend=_broken_backend)
    model.is_compiled = True
    with pytest.raises(UserError, match=r"torch.compile failed.*no compiler here.*--model.compile"):
        model(torch.randn(4, 3, 32, 32))
    assert not torch._dynamo.config.suppress_errors


def test_an_automatic_compile_that_fails_warns_and_runs_eagerly() -> None:
    torch._dynamo.reset()
    model = TinyCompiledClassifier(compile=None).eval()
    model.net.compile(backend=_broken_backend)
    model.is_compiled = True
    images = torch.randn(4, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"torch.compile failed on the network.*no compiler"):
        logits = model(images)
    assert not model.is_compiled  # what really runs
    eager = TinyCompiledClassifier(compile=False).eval()
    eager.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits, eager(images))
    model(images)  # no second attempt, no second warning


def test_recompiles_are_counted_once_each() -> None:
    from torch._dynamo.utils import counters, guard_failures

    from padam_lightning.training.classifier import _count_recompiles

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    compiled = torch.compile(double, backend="eager", dynamic=False)
    frames_before = counters["frames"]["ok"]  # process-wide: other tests compile too
    for size in (3, 4, 5, 6):  # a new static shape each time: three recompilations
        compiled(torch.ones(size))
    assert counters["frames"]["ok"] - frames_before == 4  # the first compilation and three more
    assert _count_recompiles([guard_failures[double.__code__]]) == 3
