"""The batched crop and flip on a CUDA GPU against torchvision's per-image pipeline (the paper's).

The CPU tests (test_data_augment.py, test_data_module.py) check the same arithmetic on the CPU;
these run where the training runs on a GPU: the split, the crop source and the batch indices all
on the device, as padam-fit holds them. The reference is the released code's per-image path on
the host: a PIL image, ``pad`` by 4, ``crop`` 32x32 at the drawn corner, ``hflip`` when drawn,
``to_tensor`` and ``normalize``. They skip without CUDA (``benchmarks/gpu.sh`` runs them).
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from padam_lightning.data import CIFAR10_MEAN_STD, CIFARDataModule
from padam_lightning.data.augment import CROP_PADDING, CropSource, draw_augmentation
from padam_lightning.data.sampling import epoch_generator


@pytest.fixture
def cuda() -> torch.device:
    """The CUDA device; skips the test without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


def per_image_reference(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """One CHW uint8 image through the released code's PIL transforms, with the given draws.

    Returns:
        The ``3 x 32 x 32`` float32 crop in [0, 1] (``to_tensor``), not normalised.
    """
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    picture = TF.crop(TF.pad(picture, [CROP_PADDING], fill=0), top, left, 32, 32)
    if flip:
        picture = TF.hflip(picture)
    return TF.to_tensor(picture)


def test_crop_source_on_cuda_matches_per_image_pil_for_every_corner_and_flip(
    cuda: torch.device,
) -> None:
    # Every crop corner (9 x 9) with and without the flip: 162 images, each its own draw.
    corners = [(top, left) for top in range(9) for left in range(9)]
    offsets = torch.tensor(corners * 2)
    flips = torch.tensor([False] * len(corners) + [True] * len(corners))
    images = torch.randint(
        0, 256, (len(offsets), 3, 32, 32), generator=torch.Generator().manual_seed(5)
    ).to(torch.uint8)
    source = CropSource(images.to(cuda))
    starts = source.crop_starts(offsets, flips)
    crops = source.crops(starts)
    assert starts.device.type == crops.device.type == "cuda"
    assert crops.dtype == torch.uint8 and crops.shape == images.shape
    crops = crops.cpu()
    for i, ((top, left), flip) in enumerate(zip(corners * 2, flips.tolist(), strict=True)):
        expected = per_image_reference(images[i], top, left, flip)
        assert torch.equal(crops[i].float() / 255, expected), f"corner {(top, left)} flip {flip}"


@pytest.mark.parametrize("epoch", [0, 3])
def test_make_batch_on_cuda_matches_the_per_image_reference(cuda: torch.device, epoch: int) -> None:
    size, seed = 300, 7
    data = CIFARDataModule(
        dataset="synthetic",
        synthetic_train_size=size,
        synthetic_test_size=50,
        batch_size=128,
        seed=seed,
    )
    data.setup("fit")
    # A shuffled batch with a repeat, drawn on the host and moved as the loader's batches are.
    indices = torch.randperm(size, generator=torch.Generator().manual_seed(epoch))[:128]
    indices[-1] = indices[0]
    images, labels = data.make_batch(indices.to(cuda), train=True, epoch=epoch)
    assert images.device.type == labels.device.type == "cuda"
    assert images.dtype == torch.float32 and images.shape == (128, 3, 32, 32)

    offsets, flips = draw_augmentation(size, epoch_generator(seed, epoch, "augment"))
    train = data.split("train")
    images, labels = images.cpu(), labels.cpu()
    for row, index in enumerate(indices.tolist()):
        top, left = offsets[index].tolist()
        expected = per_image_reference(train.images[index], top, left, bool(flips[index]))
        expected = TF.normalize(expected, *CIFAR10_MEAN_STD)
        torch.testing.assert_close(images[row], expected, rtol=0, atol=1e-6)
        assert labels[row] == train.labels[index]
