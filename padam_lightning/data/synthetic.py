"""CIFAR-shaped synthetic data with a learnable class signal: no files, no network.

Each class has a prototype image: a base colour plus a coarse 4x4 grid of colour offsets, scaled
up to 32x32. A sample is its class prototype plus Gaussian pixel noise, rounded to uint8. The
class is visible both in the mean colour and in the coarse pattern, so a linear probe separates
the classes well and a small network learns them within an epoch or two, while the noise keeps the
task from being trivial. Everything is drawn from generators with fixed seeds, so the data is the
same on every machine and in every process.
"""

from typing import Final

import torch
import torch.nn.functional as F

from padam_lightning.data.splits import ImageSplit

#: Seed of the prototypes; the train and test samples use the next two seeds.
SYNTHETIC_SEED: Final = 20180606
_NOISE_STD: Final = 40.0


def _prototypes(num_classes: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    colours = 64 + 128 * torch.rand(num_classes, 3, 1, 1, generator=generator)
    grid = 48 * (2 * torch.rand(num_classes, 3, 4, 4, generator=generator) - 1)
    return colours + F.interpolate(grid, size=(32, 32), mode="nearest")


def _samples(prototypes: torch.Tensor, num_samples: int, seed: int) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    num_classes = prototypes.shape[0]
    # Balanced classes in a shuffled order.
    labels = (torch.arange(num_samples) % num_classes)[
        torch.randperm(num_samples, generator=generator)
    ]
    noise = _NOISE_STD * torch.randn(num_samples, 3, 32, 32, generator=generator)
    images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
    return ImageSplit(images, labels)


def make_synthetic_splits(
    train_size: int, test_size: int, num_classes: int
) -> tuple[ImageSplit, ImageSplit]:
    """Generate the synthetic train and test splits.

    The train split does not depend on ``test_size`` and vice versa.

    Args:
        train_size: Number of training images.
        test_size: Number of test images.
        num_classes: Number of classes; labels are balanced to within one sample.

    Returns:
        ``(train, test)``, each with uint8 images ``N x 3 x 32 x 32`` and int64 labels.
    """
    prototypes = _prototypes(num_classes)
    train = _samples(prototypes, train_size, SYNTHETIC_SEED + 1)
    test = _samples(prototypes, test_size, SYNTHETIC_SEED + 2)
    return train, test
