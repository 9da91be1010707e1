"""The paper's networks: exact parameter counts, shapes, initialisation, names, precision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from padam_lightning.errors import UserError
from padam_lightning.models import MODEL_NAMES, WideResNet, build_model
from padam_lightning.models.resnet import BasicBlock
from padam_lightning.models.vgg import VGG_LAYOUTS


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- independent references: parameter counts from the architecture descriptions ---------------


def conv_bn(in_channels: int, out_channels: int, kernel: int, bias: bool = False) -> int:
    return (
        in_channels * out_channels * kernel * kernel
        + (out_channels if bias else 0)
        + 2 * out_channels
    )


def basic_block(in_channels: int, out_channels: int, stride: int) -> int:
    total = conv_bn(in_channels, out_channels, 3) + conv_bn(out_channels, out_channels, 3)
    if stride != 1 or in_channels != out_channels:
        total += conv_bn(in_channels, out_channels, 1)
    return total


def reference_vgg(name: str, num_classes: int) -> int:
    total, in_channels = 0, 3
    for entry in VGG_LAYOUTS[name]:
        if entry != "M":
            assert isinstance(entry, int)
            total += conv_bn(in_channels, entry, 3, bias=True)
            in_channels = entry
    return total + 512 * num_classes + num_classes


def reference_resnet(
    stem: int, widths: list[int], strides: list[int], blocks: list[int], num_classes: int
) -> int:
    total, in_channels = conv_bn(3, stem, 3), stem
    for width, stride, count in zip(widths, strides, blocks, strict=True):
        for block_stride in [stride] + [1] * (count - 1):
            total += basic_block(in_channels, width, block_stride)
            in_channels = width
    return total + in_channels * num_classes + num_classes


def reference_wrn(depth: int, width: int, num_classes: int) -> int:
    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]
    return reference_resnet(16 * width, widths, [1, 2, 2], [n] * 3, num_classes)


# -- the released experiments' networks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("vgg16", 14_728_266), ("resnet18", 11_173_962), ("wrn16_4", 2_777_674)],
)
def test_paper_networks_have_the_released_parameter_counts(name: str, expected: int) -> None:
    assert count_parameters(build_model(name, num_classes=10)) == expected


def test_reference_formulas_reproduce_the_released_counts() -> None:
    # The formulas below check the other variants; first they must agree with the known numbers.
    assert reference_vgg("vgg16", 10) == 14_728_266
    assert reference_resnet(64, [64, 128, 256, 512], [1, 2, 2, 2], [2, 2, 2, 2], 10) == 11_173_962
    assert reference_wrn(16, 4, 10) == 2_777_674


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_vgg_parameter_counts(name: str, num_classes: int) -> None:
    model = build_model(name, num_classes)
    assert count_parameters(model) == reference_vgg(name, num_classes)


@pytest.mark.parametrize(
    ("name", "blocks"), [("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3])]
)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet_parameter_counts(name: str, blocks: list[int], num_classes: int) -> None:
    expected = reference_resnet(64, [64, 128, 256, 512], [1, 2, 2, 2], blocks, num_classes)
    assert count_parameters(build_model(name, num_classes)) == expected


@pytest.mark.parametrize(
    ("depth", "width"), [(10, 1), (16, 1), (16, 4), (16, 8), (22, 2), (28, 10), (40, 1)]
)
def test_wide_resnet_parameter_counts_follow_the_released_rule(depth: int, width: int) -> None:
    model = build_model(f"wrn{depth}_{width}", num_classes=100)
    assert count_parameters(model) == reference_wrn(depth, width, 100)


def _first_block(stage: nn.Sequential) -> BasicBlock:
    block = stage[0]
    assert isinstance(block, BasicBlock)
    return block


def test_wide_resnet_layout() -> None:
    model = build_model("wrn16_4")
    assert isinstance(model, WideResNet)
    assert model.conv1.out_channels == 64  # stem of 16 * width channels, as released
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(stage) for stage in stages] == [2, 2, 2]
    firsts = [_first_block(stage) for stage in stages]
    assert [block.conv1.out_channels for block in firsts] == [64, 128, 256]
    assert [block.conv1.stride for block in firsts] == [(1, 1), (2, 2), (2, 2)]
    # Only the stride-2 blocks need a projection shortcut (the stem already has 64 channels).
    assert [len(block.shortcut) for block in firsts] == [0, 2, 2]


# -- forward passes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*MODEL_NAMES, "wrn16_4", "wrn10_1"])
def test_output_shape_for_a_two_image_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "wrn16_4"])
def test_channels_last_and_bf16_autocast_on_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(images)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(images.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)
    assert mixed.dtype == torch.bfloat16
    assert mixed.shape == (2, 10)
    # bf16 keeps about 3 significant digits; the logits must still track the fp32 ones.
    assert (mixed.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_bf16_autocast_backward_on_cpu() -> None:
    torch.manual_seed(0)
    model = build_model("wrn10_1").to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# -- initialisation ----------------------------------------------------------------------------


def test_wide_resnet_initialisation_statistics() -> None:
    torch.manual_seed(0)
    model = build_model("wrn16_4")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 2 * 2 + 2  # stem, two convs per block, two projections
    for conv in convs:
        weight = conv.weight.detach()
        expected_std = math.sqrt(
            2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels)
        )
        # The stem, the smallest conv, has 1,728 weights: its sample std is within ~2% of the true.
        assert weight.std().item() == pytest.approx(expected_std, rel=0.08)
        assert abs(weight.mean().item()) < 0.15 * expected_std
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_wide_resnet_initialisation_differs_from_pytorch_default() -> None:
    # The check above must be able to fail: PyTorch's default conv init has a different scale.
    torch.manual_seed(0)
    default_conv = nn.Conv2d(64, 64, 3, bias=False)
    expected_std = math.sqrt(2.0 / (9 * 64))
    assert default_conv.weight.std().item() != pytest.approx(expected_std, rel=0.08)


# -- names -------------------------------------------------------------------------------------


def test_model_names() -> None:
    assert set(MODEL_NAMES) == {"vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34"}


@pytest.mark.parametrize("name", ["vgg17", "resnet50", "wrn16", "wrn16_4x", "WRN16_4", ""])
def test_unknown_name_lists_the_valid_names(name: str) -> None:
    with pytest.raises(UserError) as raised:
        build_model(name)
    message = str(raised.value)
    assert repr(name) in message
    for valid in MODEL_NAMES:
        assert valid in message
    assert "wrn{depth}_{width}" in message


@pytest.mark.parametrize("name", ["wrn15_4", "wrn4_1", "wrn12_2"])
def test_wide_resnet_depth_must_be_6n_plus_4(name: str) -> None:
    with pytest.raises(UserError, match=r"6 \* n \+ 4"):
        build_model(name)


def test_wide_resnet_width_and_class_count_must_be_positive() -> None:
    with pytest.raises(UserError, match="width"):
        build_model("wrn16_0")
    with pytest.raises(UserError, match="num_classes"):
        build_model("vgg16", num_classes=0)


def test_a_zero_width_message_leads_into_the_valid_names() -> None:
    with pytest.raises(UserError) as raised:
        build_model("wrn16_0")
    assert str(raised.value).startswith(
        "Wide ResNet width must be at least 1, got 'wrn16_0'. Valid names: vgg11, "
    )


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("wrn016_04", "wrn16_4"),  # would train WRN-16-4 under a second run-folder name
        ("wrn16_04", "wrn16_4"),
        ("wrn010_1", "wrn10_1"),
        ("WRN-16-4", "wrn16_4"),  # the paper's spelling
        ("wrn_28_10", "wrn28_10"),
        ("wrn16-4", "wrn16_4"),
        ("VGG16", "vgg16"),
        ("resnet18 ", "resnet18"),
    ],
)
def test_another_spelling_of_a_network_is_refused_naming_its_name(name: str, meant: str) -> None:
    with pytest.raises(UserError, match=f"Unknown model '{name}' \\(did you mean {meant}\\?\\)"):
        build_model(name)


@pytest.mark.parametrize("name", ["wrn16_00", "wrn0_4", "resnet7", "wrn16_"])
def test_no_suggestion_where_no_valid_name_is_meant(name: str) -> None:
    with pytest.raises(UserError) as raised:
        build_model(name)
    assert "did you mean" not in str(raised.value)
