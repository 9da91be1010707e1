"""Helpers for the data tests: tiny CIFAR files in the real python format, tiny image folders."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.io import encode_jpeg, encode_png


def _write_pickle(path: Path, entry: dict[str, object]) -> None:
    # Protocol 2 with str keys is what the Python 2 originals amount to: torchvision unpickles
    # them with encoding="latin1" and reads the keys as str.
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)


def random_images(count: int, seed: int) -> torch.Tensor:
    """Random uint8 images, N x 3 x 32 x 32."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)


def write_fake_cifar(
    root: Path, dataset: str, per_file: int = 20
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write a tiny CIFAR-10 or CIFAR-100 in the python format under ``root``.

    Returns:
        The train images and labels (files concatenated in order) and the test images and labels.
    """
    dataset_class = CIFAR10 if dataset == "cifar10" else CIFAR100
    num_classes = 10 if dataset == "cifar10" else 100
    label_key = "labels" if dataset == "cifar10" else "fine_labels"
    folder = root / dataset_class.base_folder
    folder.mkdir(parents=True)
    splits = []
    for file_list, seed in ((dataset_class.train_list, 1), (dataset_class.test_list, 2)):
        images, labels = [], []
        for number, (name, _) in enumerate(file_list):
            batch = random_images(per_file, seed * 100 + number)
            batch_labels = [(seed * 7 + number * 3 + i) % num_classes for i in range(per_file)]
            entry: dict[str, object] = {
                "batch_label": f"fake batch {number}",
                # The real files store each image as 3072 bytes: the red plane, green, then blue.
                "data": batch.reshape(per_file, 3072).numpy().astype(np.uint8),
                label_key: batch_labels,
                "filenames": [f"img_{number}_{i}.png" for i in range(per_file)],
            }
            if dataset == "cifar100":
                entry["coarse_labels"] = [label % 20 for label in batch_labels]
            _write_pickle(folder / name, entry)
            images.append(batch)
            labels.extend(batch_labels)
        splits.append((torch.cat(images), torch.tensor(labels, dtype=torch.int64)))
    if dataset == "cifar10":
        meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    else:
        meta = {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
    _write_pickle(folder / dataset_class.meta["filename"], meta)
    (train_images, train_labels), (test_images, test_labels) = splits
    return train_images, train_labels, test_images, test_labels


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_fake_files(monkeypatch: pytest.MonkeyPatch, root: Path, dataset: str) -> None:
    """Make torchvision expect the MD5s of the fake files (it ships the real files' MD5s)."""
    dataset_class = CIFAR10 if dataset == "cifar10" else CIFAR100
    folder = root / dataset_class.base_folder
    for attribute in ("train_list", "test_list"):
        entries = [[name, md5(folder / name)] for name, _ in getattr(dataset_class, attribute)]
        monkeypatch.setattr(dataset_class, attribute, entries)
    meta = dict(dataset_class.meta)
    meta["md5"] = md5(folder / meta["filename"])
    monkeypatch.setattr(dataset_class, "meta", meta)


def encode(image: torch.Tensor, fmt: str) -> bytes:
    """PNG (lossless) or JPEG (quality 95) bytes of a 3 x H x W uint8 image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29's codec notice
        encoded = encode_png(image) if fmt == "png" else encode_jpeg(image, quality=95)
    assert isinstance(encoded, torch.Tensor)
    return encoded.numpy().tobytes()


def write_image_folder(
    root: Path, counts: dict[str, dict[str, int]], fmt: str = "png", seed: int = 0
) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Write ``root/<split>/<class>/<i>.<fmt>`` images; return them by split and class."""
    written: dict[str, dict[str, list[torch.Tensor]]] = {}
    for split_number, (split, per_class) in enumerate(counts.items()):
        written[split] = {}
        for class_number, (name, count) in enumerate(per_class.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = random_images(count, seed + 1000 * split_number + 10 * class_number)
            written[split][name] = list(images)
            for i, image in enumerate(images):
                (folder / f"{i:04d}.{fmt}").write_bytes(encode(image, fmt))
    return written
