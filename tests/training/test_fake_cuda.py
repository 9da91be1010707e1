"""A whole training step on fake CUDA tensors: no waits for the device, no stray transfers.

``FakeTensorMode`` runs every operation on shapes, dtypes and devices only, without a GPU, and
raises on any read of a value back to the host (a Python ``if`` on a CUDA tensor, ``.item()``,
``float()``), which on a real GPU would make the step wait for the device. An op that mixes a
CUDA tensor with a CPU tensor (other than a 0-dim scalar) raises too. A dispatch mode on top
records every copy between devices, so the test also fails on per-step host-to-device copies.

What runs on fake CUDA: the data module's batch (``make_batch`` and ``on_after_batch_transfer``
with a trainer's precision plugin), ``ImageClassifier.training_step`` with Lightning's
``self.log`` and the torchmetrics updates, ``DivergenceGuard``'s batch hooks (the loss's
asynchronous copy and check), and Padam's step on the for-loop (``foreach=False``)
and multi-tensor (default) paths. Not run here, because they cannot be without a GPU:

- the backward pass: the autograd engine asks the CUDA driver for the device's context
  ("hasPrimaryContext expects a valid device index"), so gradients are set as fake tensors of
  the parameters' shape and device instead;
- Padam's fused path: it is ``torch.compile``, whose Inductor backend queries the driver to
  generate kernels ("Found no NVIDIA driver").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import TrainingDivergedError
from padam_lightning.optim import Padam
from padam_lightning.training import divergence
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.divergence import DivergenceGuard

BATCH = 8


class TransferLog(TorchDispatchMode):
    """Records every op whose output is on another device type than one of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.transfers: list[tuple[str, str, str, bool]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        for result in out if isinstance(out, tuple | list) else [out]:
            if not isinstance(result, torch.Tensor):
                continue
            for tensor in inputs:
                if tensor.device.type != result.device.type:
                    self.transfers.append(
                        (
                            str(func),
                            tensor.device.type,
                            result.device.type,
                            bool(kwargs.get("non_blocking", False)),
                        )
                    )
        return out


class BusyDevice:
    """A CUDA event that never completes: a step that waits for it fails the test."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        raise AssertionError("the training step waited for the device")


@contextmanager
def forward_context(trainer: L.Trainer) -> Iterator[None]:
    """The precision plugin's forward context, with CUDA autocast on though there is no GPU.

    torch.autocast disables itself (with a warning) when it is created where CUDA is not
    available; once it is on, the autocast dispatch works on fake CUDA tensors as on real ones.
    (Only its creation sees CUDA as available: fake tensors then copy as if to a real device.)
    """
    with ExitStack() as stack:
        with (
            mock.patch.object(torch.cuda, "is_available", return_value=True),
            mock.patch.object(torch.cuda, "is_bf16_supported", return_value=True),
        ):
            stack.enter_context(trainer.precision_plugin.forward_context())
        yield


def _trainer(precision: str) -> L.Trainer:
    """A trainer whose loop state ``training_step`` and ``on_after_batch_transfer`` read."""
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    if precision == "bf16-mixed":
        # The plugin Lightning builds for a CUDA accelerator (this trainer's is the CPU's).
        trainer.strategy.precision_plugin = MixedPrecision("bf16-mixed", device="cuda")
    trainer.state.fn = "fit"  # type: ignore[assignment]
    trainer.training = True
    return trainer


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
@pytest.mark.parametrize(
    ("precision", "optimizer_options"),
    [
        ("32-true", {}),  # Padam's default: the multi-tensor (foreach) path
        ("32-true", {"foreach": False}),  # the for-loop path
        ("bf16-mixed", {}),
    ],
    ids=["foreach", "for-loop", "bf16-mixed"],
)
def test_a_training_step_on_fake_cuda_never_waits_for_the_device(
    precision: str, optimizer_options: dict[str, Any]
) -> None:
    data = CIFARDataModule(
        dataset="synthetic", batch_size=BATCH, synthetic_train_size=16, synthetic_test_size=8
    )
    data.setup("fit")
    model = ImageClassifier(arch="wrn10_1")
    trainer = _trainer(precision)
    model.trainer = trainer
    data.trainer = trainer
    model._current_fx_name = "training_step"  # what Lightning's loop sets around the hook
    # Lightning builds a logged key's result object the first time (a deepcopy that fake
    # tensors do not support); in a run that happens once, at the first step.
    trainer.fit_loop.epoch_loop._results.batch_size = BATCH
    model.log("train/loss_step", torch.tensor(0.0), on_step=True, on_epoch=False)

    guard = DivergenceGuard()
    transfers = TransferLog()
    with (
        mock.patch.object(divergence, "_record_event", lambda device: BusyDevice()),
        FakeTensorMode(allow_non_fake_inputs=True),
    ):
        model = model.to("cuda")
        optimizer = Padam(model.parameters(), lr=0.1, **optimizer_options)
        per_step = []
        for step in range(3):
            indices = torch.arange(BATCH).to("cuda")  # what the loader's batch is after transfer
            with transfers:
                images, labels = data.on_after_batch_transfer(indices, 0)
                guard.on_train_batch_start(trainer, model, (images, labels), step)
                with forward_context(trainer):
                    loss = model.training_step((images, labels), step)
                    if precision == "bf16-mixed":
                        assert model.net(images).dtype == torch.bfloat16  # autocast is on
                # No backward on fake CUDA without a GPU (see the module docstring).
                for parameter in model.parameters():
                    parameter.grad = torch.ones_like(parameter)
                optimizer.step()
                optimizer.zero_grad()
                # What Lightning hands the callbacks: a detached copy of the step's loss.
                outputs = {"loss": loss.detach().clone()}
                guard.on_train_batch_end(trainer, model, outputs, (images, labels), step)
            per_step.append(transfers.transfers)
            transfers.transfers = []
            assert images.device.type == labels.device.type == loss.device.type == "cuda"
            assert images.dtype == torch.float32 and loss.dtype == torch.float32
        assert all(p.device.type == "cuda" for p in model.parameters())
        state = [v for s in optimizer.state.values() for v in s.values()]
        assert all(v.device.type == "cuda" for v in state if v.dim() > 0)

    # The first step moves the split to the device and builds the logged metrics there, once.
    # Every later step copies one thing: its loss, to the host, without blocking, for the
    # divergence check (read once the device has finished, which here it never does).
    for step_transfers in per_step[1:]:
        assert step_transfers == [("aten._to_copy.default", "cuda", "cpu", True)]
    assert len(guard._pending) == 3, "the busy device's losses were read"


class Event:
    """A stand-in CUDA event that completes when the test says so."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


def test_the_divergence_guard_reads_a_loss_only_once_its_copy_has_arrived() -> None:
    events: list[Event] = []

    def record(device: torch.device) -> Event:
        events.append(Event())
        return events[-1]

    check = DivergenceGuard()
    # A loss on a (fake) accelerator: copied without blocking, its event recorded.
    with (
        mock.patch.object(divergence, "_record_event", record),
        mock.patch.object(torch.Tensor, "to", lambda self, *a, **k: self),
        mock.patch.object(torch.Tensor, "device", torch.device("cuda")),
    ):
        check.defer(torch.tensor(1.5), step=10, epoch=2, batch_idx=0)
        check.defer(torch.tensor(float("inf")), step=11, epoch=2, batch_idx=1)
    check.check()  # the device is still busy with both steps: nothing is read, nothing waits
    assert not any(event.waited for event in events)
    events[0].done = True
    check.check()  # step 10 is finite; step 11 has not arrived yet
    with pytest.raises(TrainingDivergedError, match=r"became inf at step 11 \(epoch 2, batch 1\)"):
        check.check(wait=True)  # before a checkpoint: waits for every pending step
    assert events[1].waited
