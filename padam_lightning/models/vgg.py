"""VGG networks with batch normalisation, sized for 32x32 CIFAR images.

The layout is the one the Padam paper's code released (kuangliu/pytorch-cifar style): every 3x3
convolution (with bias) is followed by BatchNorm and ReLU, ``"M"`` is a 2x2 max-pool, and after five
pools a 32x32 image is a 512-channel 1x1 map that one linear layer classifies. VGG-16 for 10
classes has 14,728,266 parameters.
"""

from collections.abc import Sequence
from typing import Final

import torch
from torch import nn

# fmt: off
#: Output channels of each convolution, with ``"M"`` for a 2x2 max-pool.
VGG_LAYOUTS: Final[dict[str, tuple[int | str, ...]]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
# fmt: on


def _make_features(layout: Sequence[int | str]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in layout:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif isinstance(entry, int):
            layers += [
                nn.Conv2d(in_channels, entry, kernel_size=3, padding=1),
                nn.BatchNorm2d(entry),
                nn.ReLU(inplace=True),
            ]
            in_channels = entry
        else:
            raise ValueError(f"VGG layout entries are channel counts or 'M', got {entry!r}")
    # The released code ends with AvgPool2d(kernel_size=1, stride=1), an identity; it is left out.
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG with BatchNorm for 3x32x32 inputs and a single linear classifier.

    Args:
        layout: Convolution output channels in order, with ``"M"`` for a 2x2 max-pool. It must
            contain five pools and end with 512 channels so that a 32x32 input becomes 512 features.
        num_classes: Number of output logits.
    """

    def __init__(self, layout: Sequence[int | str], num_classes: int = 10) -> None:
        super().__init__()
        self.features = _make_features(layout)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for images of shape ``(N, 3, 32, 32)``."""
        return self.classifier(torch.flatten(self.features(images), 1))


def vgg11(num_classes: int = 10) -> VGG:
    """VGG-11 with BatchNorm."""
    return VGG(VGG_LAYOUTS["vgg11"], num_classes)


def vgg13(num_classes: int = 10) -> VGG:
    """VGG-13 with BatchNorm."""
    return VGG(VGG_LAYOUTS["vgg13"], num_classes)


def vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 with BatchNorm, the paper's VGG network (14,728,266 parameters for 10 classes)."""
    return VGG(VGG_LAYOUTS["vgg16"], num_classes)


def vgg19(num_classes: int = 10) -> VGG:
    """VGG-19 with BatchNorm."""
    return VGG(VGG_LAYOUTS["vgg19"], num_classes)
