"""Image folders: decoded pixels and labels, the tensor cache, and malformed folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_test_files import encode, random_images, write_image_folder
from PIL import Image

from padam_lightning.data import CIFARDataModule
from padam_lightning.data import image_folder as image_folder_module
from padam_lightning.data.image_folder import cache_path, load_image_folder_split, storage_order
from padam_lightning.errors import DataError

COUNTS = {
    "train": {"dog": 3, "cat": 4, "eel": 2},
    "test": {"cat": 2, "dog": 1, "eel": 1},
}


def test_png_pixels_labels_and_order(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, COUNTS, fmt="png")
    data = CIFARDataModule("imagefolder", data_dir=str(tmp_path))
    assert data.num_classes == 3
    data.prepare_data()
    data.setup("fit")
    for split in ("train", "test"):
        loaded = data.split(split)
        # The listing: classes in sorted folder order (cat=0, dog=1, eel=2), files sorted by name
        # in each; stored in the fixed permutation of that listing.
        classes = sorted(COUNTS[split])
        listed_images = torch.stack([img for c in classes for img in written[split][c]])
        listed_labels = torch.tensor(
            [sorted(COUNTS["train"]).index(c) for c in classes for _ in written[split][c]]
        )
        order = storage_order(len(listed_labels))
        assert torch.equal(loaded.images, listed_images[order])  # PNG is lossless
        assert torch.equal(loaded.labels, listed_labels[order])
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64


def test_jpeg_batch_decoding_matches_pil(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"a": 5, "b": 5}, "test": {"a": 1}}, fmt="jpg")
    loaded = load_image_folder_split(tmp_path, "train")
    listed = sorted((tmp_path / "train").glob("*/*.jpg"))
    files = [listed[i] for i in storage_order(len(listed))]
    for image, file in zip(loaded.images, files, strict=True):
        with Image.open(file) as pil:
            reference = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
        # Two JPEG decoders may round the inverse DCT differently, by a level or two at most.
        assert (image.int() - reference.int()).abs().max() <= 3


def test_grayscale_and_mixed_formats_become_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "x"
    folder.mkdir(parents=True)
    gray = random_images(1, seed=3)[0, :1]
    (folder / "gray.png").write_bytes(encode(gray, "png"))
    colour = random_images(1, seed=4)[0]
    (folder / "colour.PNG").write_bytes(encode(colour, "png"))
    (folder / "notes.txt").write_text("not an image, ignored")
    loaded = load_image_folder_split(tmp_path, "train")
    assert loaded.images.shape == (2, 3, 32, 32)
    # colour.PNG sorts before gray.png in the listing, stored in the order of storage_order(2).
    colour_at, gray_at = storage_order(2).argsort().tolist()
    assert torch.equal(loaded.images[colour_at], colour)
    assert torch.equal(loaded.images[gray_at], gray.expand(3, -1, -1))


def test_second_load_uses_the_cache_until_the_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_image_folder(tmp_path, COUNTS, fmt="png")
    first = load_image_folder_split(tmp_path, "train")
    assert cache_path(tmp_path, "train").is_file()

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again although the cache is current")

    with monkeypatch.context() as patch:
        patch.setattr(image_folder_module, "_decode_all", no_decoding)
        cached = load_image_folder_split(tmp_path, "train")
    assert torch.equal(cached.images, first.images) and torch.equal(cached.labels, first.labels)
    # A new file invalidates the cache.
    extra = random_images(1, seed=9)[0]
    (tmp_path / "train" / "eel" / "9999.png").write_bytes(encode(extra, "png"))
    updated = load_image_folder_split(tmp_path, "train")
    assert len(updated) == len(first) + 1
    assert (updated.images == extra).flatten(1).all(1).sum() == 1
    assert len(written["train"]["eel"]) == 2


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    write_image_folder(tmp_path, COUNTS, fmt="png")
    expected = load_image_folder_split(tmp_path, "test")
    cache_path(tmp_path, "test").write_bytes(b"garbage")
    rebuilt = load_image_folder_split(tmp_path, "test")
    assert torch.equal(rebuilt.images, expected.images)


def test_missing_folder(tmp_path: Path) -> None:
    data = CIFARDataModule("imagefolder", data_dir=str(tmp_path / "absent"))
    with pytest.raises(DataError) as raised:
        data.setup("fit")
    message = str(raised.value)
    assert f"Image folder {tmp_path / 'absent' / 'train'}/ not found" in message
    assert "train/<class>/" in message and "test/<class>/" in message


def test_missing_test_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"a": 1}}, fmt="png")
    with pytest.raises(DataError, match=f"{tmp_path / 'test'}/ not found"):
        CIFARDataModule("imagefolder", data_dir=str(tmp_path)).setup("test")


def test_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        load_image_folder_split(tmp_path, "train")
    (tmp_path / "train" / "a").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'train'}/ holds no images"):
        load_image_folder_split(tmp_path, "train")


@pytest.mark.parametrize("size", [(16, 16), (32, 40)])
def test_wrong_image_size_names_the_file(tmp_path: Path, size: tuple[int, int]) -> None:
    write_image_folder(tmp_path, {"train": {"a": 2}}, fmt="png")
    odd = torch.zeros(3, *size, dtype=torch.uint8)
    (tmp_path / "train" / "a" / "odd.png").write_bytes(encode(odd, "png"))
    with pytest.raises(DataError) as raised:
        load_image_folder_split(tmp_path, "train")
    message = str(raised.value)
    assert str(tmp_path / "train" / "a" / "odd.png") in message
    assert f"is {size[1]}x{size[0]} pixels" in message and "32x32" in message


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"a": 2}}, fmt="jpg")
    bad = tmp_path / "train" / "a" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError, match=f"{bad} could not be decoded"):
        load_image_folder_split(tmp_path, "train")
    assert bad.read_bytes().startswith(b"\xff\xd8")  # left in place


def test_test_class_must_exist_in_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"a": 1}, "test": {"a": 1, "zebra": 1}}, fmt="png")
    with pytest.raises(DataError, match="zebra"):
        load_image_folder_split(tmp_path, "test")


def test_images_in_subfolders_of_a_class_count_as_that_class(tmp_path: Path) -> None:
    # As in torchvision's ImageFolder: a class folder's images at any depth are its images.
    written = write_image_folder(tmp_path, {"train": {"cat": 3, "dog": 2}}, fmt="png")
    nested = tmp_path / "train" / "cat" / "sub" / "deeper"
    nested.mkdir(parents=True)
    moved = tmp_path / "train" / "cat" / "0001.png"
    moved.rename(nested / "0001.png")
    (tmp_path / "train" / "cat" / ".hidden").mkdir()
    (tmp_path / "train" / "cat" / ".hidden" / "x.png").write_bytes(moved.name.encode())
    (tmp_path / "train" / "cat" / "loop").symlink_to("..")  # would list dog's images as cat's
    split = load_image_folder_split(tmp_path, "train")
    assert len(split.labels) == 5 and int((split.labels == 0).sum()) == 3
    stored = {tuple(image.flatten()[:8].tolist()) for image in split.images[split.labels == 0]}
    assert stored == {tuple(image.flatten()[:8].tolist()) for image in written["train"]["cat"]}


def test_an_empty_training_class_folder_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": {"cat": 2, "dog": 1}}, fmt="png")
    for name in ("ant", "zebra"):
        (tmp_path / "train" / name).mkdir()
    (tmp_path / "train" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as raised:
        load_image_folder_split(tmp_path, "train")
    message = str(raised.value)
    assert f"Class folder {tmp_path / 'train' / 'ant'}/ holds no images (nor do zebra)" in message
    assert "remove the folder" in message


def test_a_test_split_without_a_class_warns(tmp_path: Path) -> None:
    write_image_folder(
        tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "test": {"a": 1, "c": 1}}, fmt="png"
    )
    (tmp_path / "test" / "c" / "0000.png").unlink()  # c's folder is there but empty
    with pytest.warns(UserWarning, match=r"has no images of class b, c: its error rates cover"):
        split = load_image_folder_split(tmp_path, "test")
    assert split.labels.tolist() == [0]


def test_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path, {"train": {"a": 2}}, fmt="png")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(image_folder_module.torch, "save", refuse)
    with pytest.warns(UserWarning, match="Could not write the decoded-image cache"):
        loaded = load_image_folder_split(tmp_path, "train")
    assert len(loaded) == 2
    assert not list(tmp_path.glob(".padam_cache*"))


def test_storage_order_is_a_fixed_permutation_independent_of_the_run() -> None:
    order = storage_order(1000)
    assert sorted(order.tolist()) == list(range(1000))
    assert torch.equal(order, storage_order(1000))
    torch.manual_seed(123)  # the global seed (a run's seed_everything) plays no part
    assert torch.equal(order, storage_order(1000))
    assert order[:10].tolist() != list(range(10))


def test_every_prefix_of_an_image_folder_split_mixes_the_classes(tmp_path: Path) -> None:
    # 4 classes x 25 test images, read class by class: the first two evaluation batches of 10
    # (--trainer.limit_val_batches 2) held one class only before the split was shuffled.
    counts = {name: 25 for name in ("a", "b", "c", "d")}
    write_image_folder(tmp_path, {"train": {"a": 1, "b": 1, "c": 1, "d": 1}, "test": counts})
    data = CIFARDataModule("imagefolder", data_dir=str(tmp_path), eval_batch_size=10)
    data.setup("validate")
    labels = torch.cat([data.make_batch(batch, train=False)[1] for batch in data.val_dataloader()])
    assert sorted(labels.tolist()) == sorted(data.split("test").labels.tolist())
    first_two_batches = labels[:20]
    assert set(first_two_batches.tolist()) == {0, 1, 2, 3}
    # No class takes more than half of the prefix (the whole split has a quarter of each).
    assert torch.bincount(first_two_batches, minlength=4).max() <= 10


def test_a_cache_in_the_old_class_by_class_order_is_rebuilt(tmp_path: Path) -> None:
    write_image_folder(tmp_path, COUNTS, fmt="png")
    current = load_image_folder_split(tmp_path, "train")
    path = cache_path(tmp_path, "train")
    payload = torch.load(path, weights_only=True)
    # What format 1 wrote: the same listing fingerprint, the images in class order.
    by_class = current.labels.argsort(stable=True)
    old = {**payload, "format": 1, "images": payload["images"][by_class]}
    torch.save({**old, "labels": payload["labels"][by_class]}, path)
    reloaded = load_image_folder_split(tmp_path, "train")
    assert torch.equal(reloaded.images, current.images)
    assert torch.equal(reloaded.labels, current.labels)
