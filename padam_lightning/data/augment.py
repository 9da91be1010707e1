"""Whole-batch image augmentation and normalisation as tensor operations.

These are the paper's training transforms (torchvision's ``RandomCrop(32, padding=4)`` followed by
``RandomHorizontalFlip()``, then ``ToTensor()`` and ``Normalize(mean, std)``), rewritten to act on a
whole uint8 batch on whatever device it lives on, with the random choices passed in as tensors so
that the caller decides where they come from. Nothing here loops over images in Python.

:func:`augment` works on any batch. :class:`CropSource` is the fast path for a split that stays in
memory: it prepares the split once so that each batch's crops and flips are a single row lookup.
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

    Args:
        images: ``N x C x H x W`` images of any dtype.
        offsets: ``N x 2`` integer offsets (row, column) of each crop's top-left corner in the
            padded image, each in ``0 .. 2 * padding``.
        flips: ``N`` booleans, True where the crop is mirrored left-right.
        padding: Zero padding added on every side before cropping.

    Returns:
        ``N x C x H x W`` crops, same dtype and device as ``images``; done as one gather.
    """
    n, c, h, w = images.shape
    padded_width = w + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding)).reshape(n, c, -1)
    device = images.device
    offsets = offsets.to(device=device, dtype=torch.long)
    rows = torch.arange(h, device=device)[:, None] * padded_width  # H x 1
    cols = torch.arange(w, device=device).expand(n, w)  # N x W
    # Mirroring the crop is reading its columns right to left.
    flips = flips.to(device=device, dtype=torch.bool)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    corner = offsets[:, 0] * padded_width + offsets[:, 1]  # N: top-left of each crop
    index = (corner[:, None, None] + rows + cols[:, None, :]).reshape(n, 1, h * w)
    return torch.gather(padded, 2, index.expand(n, c, h * w)).reshape(n, c, h, w)


class CropSource:
    """A whole split prepared once so that any batch's random crops and flips are one row lookup.

    It holds the split zero-padded by ``padding`` followed by the same padded images mirrored
    left-right (``2N x C x (H + 2p) x (W + 2p)``, the images' dtype and device; 3.1 times the
    memory of the split). A crop is ``C x H`` runs of ``W`` consecutive pixels of a padded image,
    and a mirrored crop is the same runs read from the mirrored copy, so :attr:`windows` (a view in
    which row ``s`` is the ``W`` pixels from flat position ``s`` on) turns a batch into one
    ``index_select`` of ``N * C * H`` rows. On the CPU that is several times faster than padding
    each batch and gathering every pixel through an index tensor, and on a GPU it is one kernel.
    The results equal :func:`augment`'s exactly.

    Args:
        images: ``N x C x H x W`` images (uint8 for CIFAR), on the device the crops are wanted on.
        padding: Zero padding on each side before cropping.
    """

    def __init__(self, images: torch.Tensor, padding: int = CROP_PADDING) -> None:
        n, c, h, w = images.shape
        padded = F.pad(images, (padding, padding, padding, padding))
        self.padded = torch.cat([padded, padded.flip(3)])
        self.num_images, self.channels, self.height, self.width = n, c, h, w
        self.padding = padding
        self.padded_height, self.padded_width = h + 2 * padding, w + 2 * padding
        flat = self.padded.reshape(-1)
        #: Overlapping rows of ``W`` pixels, one starting at every flat position (a view).
        self.windows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
        # Flat offset of each of a crop's C x H runs from its first pixel.
        plane = self.padded_height * self.padded_width
        channel_starts = torch.arange(c, device=images.device)[:, None] * plane
        row_starts = torch.arange(h, device=images.device)[None, :] * self.padded_width
        self._run_offsets = (channel_starts + row_starts).reshape(-1)

    @property
    def device(self) -> torch.device:
        """The device the prepared split lives on."""
        return self.padded.device

    def crop_starts(self, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Flat position of every sample's crop corner, given all samples' random draws.

        Args:
            offsets: ``N x 2`` integer crop corners (row, column) in the padded image, one per
                sample of the split, each in ``0 .. 2 * padding``.
            flips: ``N`` booleans, True where the sample is mirrored.

        Returns:
            ``N`` int64 positions on the split's device, to pass (indexed by a batch) to
            :meth:`crops`.
        """
        device = self.device
        offsets = offsets.to(device=device, dtype=torch.long)
        flips = flips.to(device=device, dtype=torch.bool)
        plane = self.channels * self.padded_height * self.padded_width
        sample = torch.arange(self.num_images, device=device) + flips.long() * self.num_images
        # Mirroring the crop that starts at column x reads the mirrored copy from 2p - x on.
        column = torch.where(flips, 2 * self.padding - offsets[:, 1], offsets[:, 1])
        return sample * plane + offsets[:, 0] * self.padded_width + column

    def crops(self, starts: torch.Tensor) -> torch.Tensor:
        """Cut out the crops whose corners are ``starts`` (entries of :meth:`crop_starts`).

        Args:
            starts: ``B`` int64 crop corners on the split's device.

        Returns:
            ``B x C x H x W`` crops, contiguous, in the split's dtype.
        """
        runs = (starts[:, None] + self._run_offsets).reshape(-1)
        rows = self.windows.index_select(0, runs)
        return rows.reshape(-1, self.channels, self.height, self.width)
