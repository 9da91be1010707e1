"""The image-folder path on a few hundred of the real CIFAR-10 JPEGs from ../shared/data."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from padam_lightning.data import CIFARDataModule
from padam_lightning.data.image_folder import storage_order

ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 20, "test": 10}

# Python >= 3.11.4 can refuse unsafe archive members; older patch releases lack the option.
SAFE_EXTRACT: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}

pytestmark = pytest.mark.skipif(
    not ARCHIVE.is_file(), reason=f"real CIFAR-10 JPEGs not available ({ARCHIVE} is absent)"
)


@pytest.fixture(scope="module")
def jpeg_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extract the first files of every class of both splits (300 images)."""
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(ARCHIVE, "r:gz") as archive:
        for member in archive:
            parts = Path(member.name).parts
            if (
                member.isfile()
                and len(parts) == 3
                and parts[0] in PER_CLASS
                and int(Path(parts[2]).stem) < PER_CLASS[parts[0]]
            ):
                archive.extract(member, root, **SAFE_EXTRACT)
    return root


def test_real_jpegs_load_with_folder_labels_and_pil_pixels(jpeg_subset: Path) -> None:
    data = CIFARDataModule("imagefolder", data_dir=str(jpeg_subset), batch_size=64, seed=0)
    assert data.num_classes == 10
    data.prepare_data()
    data.setup("fit")
    for split, per_class in PER_CLASS.items():
        loaded = data.split(split)
        assert loaded.images.shape == (10 * per_class, 3, 32, 32)
        # Stored in the fixed permutation of the class-by-class listing.
        order = storage_order(10 * per_class)
        listed = torch.tensor([c for c in range(10) for _ in range(per_class)])
        assert torch.equal(loaded.labels, listed[order])
        for position in (0, per_class + 3, 10 * per_class - 1):
            row = int(order[position])
            name = f"{row % per_class:04d}.jpg"
            file = jpeg_subset / split / CLASSES[row // per_class] / name
            with Image.open(file) as pil:
                reference = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
            assert (loaded.images[position].int() - reference.int()).abs().max() <= 3
    train = data.split("train").images.float() / 255
    # README: decoded train mean (0.4913, 0.4821, 0.4465); 200 images estimate it to about 0.01.
    assert train.mean((0, 2, 3)).tolist() == pytest.approx([0.4913, 0.4821, 0.4465], abs=0.05)


def test_real_jpegs_give_normalised_training_batches(jpeg_subset: Path) -> None:
    data = CIFARDataModule("imagefolder", data_dir=str(jpeg_subset), batch_size=64, seed=0)
    indices = next(iter(data.train_dataloader()))
    images, labels = data.make_batch(indices, train=True, epoch=0)
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (64,) and set(labels.tolist()) <= set(range(10))
    # Normalised with the CIFAR-10 constants: roughly zero mean, unit spread. The crops' zero
    # padding (a pixel normalises to about -2.3) pulls the mean of 64 images down by up to ~0.4.
    assert -0.6 < images.mean().item() < 0.3 and 0.7 < images.std().item() < 1.5
