"""The in-memory form of a dataset split: all images in one uint8 tensor, all labels in another."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSplit:
    """One split of a dataset, held whole.

    Attributes:
        images: ``N x 3 x 32 x 32`` uint8 images, channels first, values 0..255.
        labels: ``N`` int64 class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be N x C x H x W uint8, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        """The device both tensors live on."""
        return self.images.device

    def to(self, device: torch.device) -> "ImageSplit":
        """Return the split with both tensors on ``device`` (itself if already there)."""
        if self.images.device == device:
            return self
        return ImageSplit(self.images.to(device), self.labels.to(device))
