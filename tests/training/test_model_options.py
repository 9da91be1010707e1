"""ImageClassifier's speed options change how the network runs, never what it computes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import UserError
from padam_lightning.training import classifier as classifier_module
from padam_lightning.training.classifier import ImageClassifier


def twin(reference: ImageClassifier, **options: object) -> ImageClassifier:
    """A classifier with ``options`` and the same weights as ``reference``."""
    model = ImageClassifier(arch=reference.hparams["arch"], **options)  # type: ignore[arg-type]
    model.load_state_dict(reference.state_dict())
    return model


def images(count: int = 4) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["wrn10_1", "vgg11"])
def test_channels_last_gives_the_default_outputs_and_gradients(arch: str) -> None:
    torch.manual_seed(0)
    default = ImageClassifier(arch=arch, channels_last=False)
    fast = twin(default, channels_last=True)
    assert fast.uses_channels_last and not default.uses_channels_last
    conv_weights = [p for p in fast.net.parameters() if p.dim() == 4]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
    batch, labels = images(), torch.tensor([0, 1, 2, 3])
    for model in (default, fast):
        F.cross_entropy(model(batch), labels).backward()
    torch.testing.assert_close(fast(batch), default(batch), rtol=1e-5, atol=1e-5)
    for (name, p_fast), p_default in zip(
        fast.named_parameters(), default.parameters(), strict=True
    ):
        torch.testing.assert_close(p_fast.grad, p_default.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_automatic_settings_follow_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # None means: on for CUDA (compile only where Triton can generate kernels), off on the CPU
    # (channels-last also on for bf16 on the CPU, where oneDNN runs bf16 convolutions in it).
    cpu = ImageClassifier(arch="wrn10_1")
    cpu.configure_model()
    assert not cpu.uses_channels_last and not cpu.is_compiled
    monkeypatch.setattr(ImageClassifier, "_training_precision", lambda self: "bf16-mixed")
    cpu_bf16 = ImageClassifier(arch="wrn10_1")
    cpu_bf16.configure_model()
    assert cpu_bf16.uses_channels_last and not cpu_bf16.is_compiled
    monkeypatch.setattr(ImageClassifier, "_training_precision", lambda self: "32-true")

    monkeypatch.setattr(ImageClassifier, "_training_device", lambda self: torch.device("cuda"))
    for triton, compiled in ((False, False), (True, True)):
        monkeypatch.setattr(classifier_module, "_triton_available", lambda t=triton: t)
        model = ImageClassifier(arch="wrn10_1")
        model.configure_model()
        assert model.uses_channels_last and model.is_compiled == compiled
        # No process-wide switch that would hide a failed compile of anything else.
        assert not torch._dynamo.config.suppress_errors
    # Explicit settings win over the device.
    pinned = ImageClassifier(arch="wrn10_1", channels_last=False, compile=False)
    pinned.configure_model()
    assert not pinned.uses_channels_last and not pinned.is_compiled


def test_configure_model_is_idempotent() -> None:
    model = ImageClassifier(arch="wrn10_1", channels_last=True, compile=True)
    model.configure_model()
    compiled_call = model.net._compiled_call_impl
    model.configure_model()  # Lightning calls it again for validate/test in the same process
    assert model.net._compiled_call_impl is compiled_call


def test_compiled_network_gives_the_same_outputs_and_checkpoint_keys() -> None:
    torch.manual_seed(0)
    eager = ImageClassifier(arch="wrn10_1", compile=False).eval()
    compiled = twin(eager, compile=True).eval()
    compiled.configure_model()
    assert compiled.is_compiled
    with torch.no_grad():
        torch.testing.assert_close(compiled(images(2)), eager(images(2)), rtol=1e-5, atol=1e-5)
    # Compiled in place: a checkpoint of a compiled run loads into an uncompiled model as is.
    assert list(compiled.state_dict()) == list(eager.state_dict())
    ImageClassifier(arch="wrn10_1", compile=False).load_state_dict(compiled.state_dict())


def test_unknown_compile_mode_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(UserError, match=r"compile_mode must be one of default, reduce-overhead"):
        ImageClassifier(arch="wrn10_1", compile_mode="fastest")


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.parametrize(("precision", "channels_last"), [("32-true", False), ("bf16-mixed", True)])
def test_a_cpu_fit_picks_channels_last_by_precision(
    precision: str, channels_last: bool, tmp_path: Path
) -> None:
    data = CIFARDataModule(dataset="synthetic", batch_size=8, synthetic_train_size=16)
    model = ImageClassifier(arch="wrn10_1")
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,  # type: ignore[arg-type]
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert model.uses_channels_last == channels_last and not model.is_compiled
    conv = next(p for p in model.net.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
