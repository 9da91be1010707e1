"""ResNets for 32x32 CIFAR images, as released with the Padam paper.

The CIFAR variant of He et al.'s ResNet: a 3x3 stem of 64 channels with no max-pool, four stages of
post-activation basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), a 1x1 convolution
plus BatchNorm on the shortcut wherever the shape changes, global average pooling and a linear
head. ResNet-18 for 10 classes has 11,173,962 parameters.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: conv-BN-ReLU-conv-BN, add, ReLU.

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of both convolutions and of the output.
        stride: Stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # An empty Sequential is the identity; a projection is needed only where the shape changes.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """Build ``num_blocks`` basic blocks; only the first one changes stride and width."""
    strides = [stride] + [1] * (num_blocks - 1)
    blocks = []
    for block_stride in strides:
        blocks.append(BasicBlock(in_channels, out_channels, block_stride))
        in_channels = out_channels
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """CIFAR ResNet with basic blocks: 3x3 stem, four stages, global average pool, linear head.

    Args:
        blocks_per_stage: Number of basic blocks in each of the four stages.
        num_classes: Number of output logits.
    """

    stage_channels: tuple[int, ...] = (64, 128, 256, 512)
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)

    def __init__(self, blocks_per_stage: Sequence[int], num_classes: int = 10) -> None:
        super().__init__()
        if len(blocks_per_stage) != len(self.stage_channels):
            raise ValueError(f"ResNet has 4 stages, got blocks_per_stage={list(blocks_per_stage)}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        in_channels = 64
        for channels, stride, num_blocks in zip(
            self.stage_channels, self.stage_strides, blocks_per_stage, strict=True
        ):
            stages.append(make_stage(in_channels, channels, num_blocks, stride))
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images of shape ``(N, 3, 32, 32)``."""
        out = F.relu(self.bn1(self.conv1(images)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # For 32x32 inputs the map is 4x4 here: the released avg_pool2d(out, 4) is a global mean.
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


def resnet18(num_classes: int = 10) -> ResNet:
    """ResNet-18, the paper's ResNet (11,173,962 parameters for 10 classes)."""
    return ResNet([2, 2, 2, 2], num_classes)


def resnet34(num_classes: int = 10) -> ResNet:
    """ResNet-34."""
    return ResNet([3, 4, 6, 3], num_classes)
