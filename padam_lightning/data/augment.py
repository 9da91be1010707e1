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


def _crop_gather(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """Pad, then crop (and optionally mirror) every image with one gather over flat pixels."""
    n, c, h, w = images.shape
    padded_width = w + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding)).reshape(n, c, -1)
    device = images.device
    offsets = offsets.to(device=device, dtype=torch.long)
    rows = torch.arange(h, device=device)[:, None] * padded_width  # H x 1
    cols = torch.arange(w, device=device).expand(n, w)  # N x W
    if flips is not None:
        # Mirroring the crop is reading its columns right to left.
        flips = flips.to(device=device, dtype=torch.bool)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    corner = offsets[:, 0] * padded_width + offsets[:, 1]  # N: top-left of each crop
    index = (corner[:, None, None] + rows + cols[:, None, :]).reshape(n, 1, h * w)
    return torch.gather(padded, 2, index.expand(n, c, h * w)).reshape(n, c, h, w)


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
    return _crop_gather(images, offsets, None, padding)


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
    return images.to(torch.float32).div_(255).sub_(mean_t).div_(std_t)


def augment(
    images: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
    padding: int = CROP_PADDING,
) -> torch.Tensor:
    """Apply the paper's training augmentation: random crop of the zero-padded image, then flip.

    Equal to ``horizontal_flip(pad_crop(images, offsets, padding), flips)``, done as one gather.
    """
    return _crop_gather(images, offsets, flips, padding)
