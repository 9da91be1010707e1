"""Whole-batch augmentation against torchvision's per-image transforms, the paper's pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from padam_lightning.data import (
    CIFAR10_MEAN_STD,
    augment,
    draw_augmentation,
    normalize,
)
from padam_lightning.data.sampling import epoch_generator


def images_batch(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)


def crop(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The crops alone: :func:`augment` with no image flipped."""
    return augment(images, offsets, torch.zeros(len(images), dtype=torch.bool))


def reference_crop_flip(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """What RandomCrop(32, padding=4) then RandomHorizontalFlip() do for given random draws."""
    padded = TF.pad(image, [4], fill=0)
    cropped = TF.crop(padded, top, left, 32, 32)
    return TF.hflip(cropped) if flip else cropped


def test_crop_and_flip_match_torchvision_per_image() -> None:
    images = images_batch(12)
    # Include every corner and the unshifted crop, plus random offsets.
    offsets = torch.tensor(
        [
            [0, 0],
            [0, 8],
            [8, 0],
            [8, 8],
            [4, 4],
            [1, 7],
            [7, 1],
            [2, 5],
            [6, 3],
            [3, 0],
            [0, 3],
            [5, 8],
        ]
    )
    flips = torch.tensor([False, True] * 6)
    result = augment(images, offsets, flips)
    for i in range(len(images)):
        top, left = offsets[i].tolist()
        expected = reference_crop_flip(images[i], top, left, bool(flips[i]))
        assert torch.equal(result[i], expected), f"sample {i}"


def test_crop_borders_are_zero() -> None:
    images = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    crops = crop(images, torch.tensor([[0, 0], [8, 8]]))
    assert (crops[0, :, :4, :] == 0).all() and (crops[0, :, :, :4] == 0).all()
    assert (crops[0, :, 4:, 4:] == 200).all()
    assert (crops[1, :, -4:, :] == 0).all() and (crops[1, :, :, -4:] == 0).all()
    assert (crops[1, :, :28, :28] == 200).all()


def test_crop_works_on_float_and_channels_last() -> None:
    images = images_batch(4).float().contiguous(memory_format=torch.channels_last)
    offsets = torch.tensor([[3, 1], [0, 8], [8, 2], [4, 4]])
    result = crop(images, offsets)
    for i in range(4):
        top, left = offsets[i].tolist()
        assert torch.equal(result[i], TF.crop(TF.pad(images[i], [4]), top, left, 32, 32))


def test_flip_selects_per_sample() -> None:
    images = images_batch(3)
    centre = torch.full((3, 2), 4)  # the crop of the padded image that is the image itself
    flipped = augment(images, centre, torch.tensor([True, False, True]))
    assert torch.equal(flipped[0], images[0].flip(-1))
    assert torch.equal(flipped[1], images[1])
    assert torch.equal(flipped[2], images[2].flip(-1))


def test_normalize_matches_to_tensor_and_normalize_bit_for_bit() -> None:
    images = images_batch(5)
    mean, std = CIFAR10_MEAN_STD
    reference = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    result = normalize(images, mean, std)
    assert result.dtype == torch.float32
    for i in range(len(images)):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        assert torch.equal(result[i], reference(pil))
    # Tensor constants give the same result as tuples.
    assert torch.equal(normalize(images, torch.tensor(mean), torch.tensor(std)), result)


def test_draw_augmentation_covers_the_offsets_uniformly() -> None:
    offsets, flips = draw_augmentation(20_000, torch.Generator().manual_seed(0))
    assert offsets.shape == (20_000, 2) and flips.shape == (20_000,)
    assert offsets.dtype == torch.int64 and flips.dtype == torch.bool
    for axis in range(2):
        counts = torch.bincount(offsets[:, axis], minlength=9)
        assert len(counts) == 9  # 0..8 inclusive, nothing beyond
        assert counts.min() > 0.8 * 20_000 / 9 and counts.max() < 1.2 * 20_000 / 9
    assert 0.47 < flips.float().mean().item() < 0.53


def test_draw_augmentation_is_a_function_of_the_generator_seed() -> None:
    first = draw_augmentation(100, epoch_generator(3, 5, "augment"))
    again = draw_augmentation(100, epoch_generator(3, 5, "augment"))
    other_epoch = draw_augmentation(100, epoch_generator(3, 6, "augment"))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other_epoch[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_augmented_batch_distribution_matches_torchvision(seed: int) -> None:
    # Augmenting a constant image: the fraction of zero (padding) pixels is fixed by the offsets,
    # so ours and torchvision's RandomCrop agree on average over many draws.
    image = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    offsets, flips = draw_augmentation(4000, torch.Generator().manual_seed(seed))
    ours = augment(image.expand(4000, -1, -1, -1), offsets, flips)
    torch.manual_seed(seed)
    crop = T.RandomCrop(32, padding=4)
    theirs = torch.stack([crop(image) for _ in range(4000)])
    ours_zero = (ours == 0).float().mean().item()
    theirs_zero = (theirs == 0).float().mean().item()
    # E[zero fraction] = 1 - E[(32 - |o - 4|) / 32]^2 = 0.134; 4000 draws give +-0.003.
    assert ours_zero == pytest.approx(theirs_zero, abs=0.01)
    assert ours_zero == pytest.approx(
        1 - (1 - np.mean(np.abs(np.arange(9) - 4)) / 32) ** 2, abs=0.01
    )


def test_fused_augment_equals_crop_then_flip() -> None:
    images = images_batch(500, seed=4)
    offsets, flips = draw_augmentation(500, torch.Generator().manual_seed(4))
    crops = crop(images, offsets)
    expected = torch.where(flips[:, None, None, None], crops.flip(3), crops)
    assert torch.equal(augment(images, offsets, flips), expected)
