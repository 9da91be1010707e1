"""Whole-batch image augmentation and normalisation as tensor operations.

These are the paper's training transforms (torchvision's ``RandomCrop(32, padding=4)`` followed by
``RandomHorizontalFlip()``, then ``ToTensor()`` and ``Normalize(mean, std)``), rewritten to act on a
whole uint8 batch on whatever device it lives on, with the random choices passed in as tensors so
that the caller decides where they come from. Nothing here loops over images in Python.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Zero padding on each side before the random 32x32 crop, as in the paper.
CROP_PADDING = 4


def draw_augmentation(
    num_samples: int, generator: torch.Generator, padding: int = CROP_PADDING
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a crop offset and a flip bit for each of ``num_samples`` samples.

    Args:
        num_samples: How many samples to draw for (the whole split, indexed by sample index).
        generator: The CPU generator to draw from; its seed decides the augmentation.
        padding: The crop padding; offsets are uniform in ``0 .. 2 * padding`` on each axis.

    Returns:
        ``offsets`` (int64, ``num_samples x 2``: row then column of the crop's top-left corner in
        the padded image) and ``flips`` (bool, ``num_samples``).
    """
    offsets = torch.randint(0, 2 * padding + 1, (num_samples, 2), generator=generator)
    flips = torch.randint(0, 2, (num_samples,), generator=generator).bool()
    return offsets, flips


def pad_crop(
    images: torch.Tensor, offsets: torch.Tensor, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Zero-pad every image by ``padding`` pixels and cut out a crop of the original size.

    Args:
        images: ``N x C x H x W`` images of any dtype.
        offsets: ``N x 2`` integer offsets (row, column) of each crop's top-left corner in the
            padded image, each in ``0 .. 2 * padding``.
        padding: Zero padding added on every side.

    Returns:
        ``N x C x H x W`` crops, same dtype and device as ``images``.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = offsets.to(device=images.device, dtype=torch.long)
    # Gather rows, then columns, with per-sample index grids: two gathers instead of a Python loop.
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # N x H
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # N x W
    row_index = rows[:, None, :, None].expand(n, c, h, w + 2 * padding)
    picked_rows = torch.gather(padded, 2, row_index)
    col_index = cols[:, None, None, :].expand(n, c, h, w)
    return torch.gather(picked_rows, 3, col_index)


def horizontal_flip(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose flip bit is set.

    Args:
        images: ``N x C x H x W`` images.
        flips: ``N`` booleans, True where the image is mirrored.

    Returns:
        The images, with the selected ones mirrored.
    """
    flips = flips.to(device=images.device, dtype=torch.bool)
    return torch.where(flips[:, None, None, None], images.flip(3), images)


def normalize(
    images: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """Convert uint8 images to float32 in [0, 1] and standardise each channel.

    The operations are those of torchvision's ``ToTensor`` then ``Normalize``, in the same order,
    so the results agree with them to the last bit.

    Args:
        images: ``N x 3 x H x W`` uint8 images.
        mean: Per-channel mean of the [0, 1] images. Pass a float32 tensor already on the images'
            device to avoid a host-to-device copy per call.
        std: Per-channel standard deviation of the [0, 1] images, likewise.

    Returns:
        ``N x 3 x H x W`` float32 images.
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(-1, 1, 1)
    return (images.to(torch.float32).div(255) - mean_t) / std_t


def augment(
    images: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    padding: int = CROP_PADDING,
) -> torch.Tensor:
    """Apply the paper's training augmentation: random crop of the zero-padded image, then flip."""
    return horizontal_flip(pad_crop(images, offsets, padding), flips)
