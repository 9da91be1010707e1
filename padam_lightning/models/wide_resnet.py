"""Wide ResNets for 32x32 CIFAR images, as released with the Padam paper (WRN-16-4).

The released network differs from Zagoruyko & Komodakis' pre-activation WRN: it is a CIFAR ResNet
of post-activation basic blocks whose stem and three stages are all scaled by the width factor.
``WRN-depth-width`` has ``n = (depth - 4) / 6`` blocks per stage, a 3x3 stem of ``16 * width``
channels, stages of ``16, 32, 64 * width`` channels with strides 1, 2, 2, 1x1 convolution plus
BatchNorm shortcuts where the shape changes, an 8x8 average pool and a linear head. Convolutions
are initialised from N(0, sqrt(2 / (k * k * out_channels))), BatchNorm to weight 1 and bias 0.
WRN-16-4 for 10 classes has 2,777,674 parameters.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from padam_lightning.errors import UserError
from padam_lightning.models.resnet import make_stage


def blocks_per_stage(depth: int) -> int:
    """Return the number of basic blocks per stage of a WRN of this depth.

    Raises:
        UserError: If ``depth`` is not of the form ``6 * n + 4`` with ``n >= 1``.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise UserError(
            f"Wide ResNet depth must be 6 * n + 4 with n >= 1 blocks per stage "
            f"(10, 16, 22, 28, 34, 40, ...), got {depth}."
        )
    return (depth - 4) // 6


def init_wide_resnet(model: nn.Module) -> None:
    """Initialise as the released code does: He-normal convolutions (fan-out), BatchNorm 1 and 0.

    Linear layers keep PyTorch's default initialisation, as in the released code.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class WideResNet(nn.Module):
    """The released WRN-depth-width: 3x3 stem, three stages of basic blocks, 8x8 pool, linear head.

    Args:
        depth: Network depth, ``6 * n + 4`` for ``n`` blocks per stage (16 gives 2).
        width: Width factor multiplying every channel count (4 gives 64, 128, 256).
        num_classes: Number of output logits.

    Raises:
        UserError: If ``depth`` is not ``6 * n + 4`` or ``width`` is below 1.
    """

    def __init__(self, depth: int = 16, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        num_blocks = blocks_per_stage(depth)
        if width < 1:
            raise UserError(f"Wide ResNet width must be a positive integer, got {width}.")
        stem, widths = 16 * width, (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.layer1 = make_stage(stem, widths[0], num_blocks, stride=1)
        self.layer2 = make_stage(widths[0], widths[1], num_blocks, stride=2)
        self.layer3 = make_stage(widths[1], widths[2], num_blocks, stride=2)
        self.fc = nn.Linear(widths[2], num_classes)
        init_wide_resnet(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images of shape ``(N, 3, 32, 32)``."""
        out = F.relu(self.bn1(self.conv1(images)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # For 32x32 inputs the map is 8x8 here: the released AvgPool2d(8) is a global mean.
        out = F.adaptive_avg_pool2d(out, 1)
        return self.fc(torch.flatten(out, 1))


def wide_resnet(depth: int, width: int, num_classes: int = 10) -> WideResNet:
    """WRN-depth-width; ``wide_resnet(16, 4)`` is the paper's WRN-16-4."""
    return WideResNet(depth, width, num_classes)
