"""A folder of 32x32 images, one subfolder per class, decoded once and cached as tensors.

Layout: ``DATA_DIR/train/<class>/*.jpg|png`` and ``DATA_DIR/test/<class>/*.jpg|png`` (the CIFAR-10
JPEGs, for instance; images in subfolders of a class folder count, as in torchvision's
``ImageFolder``). Class indices follow the sorted names of the class folders under ``train/``.
The split is stored in a fixed shuffled order (:func:`storage_order`: a permutation of the
sorted listing that depends on nothing but the number of images, not on any seed), not class by
class: evaluation reads a split in its stored order, so any prefix of it (``limit_val_batches``)
must mix the classes as the whole split does, as CIFAR's own files do. The first run decodes
every image with ``torchvision.io`` (JPEGs in batches) and saves the uint8 tensors to
``DATA_DIR/.padam_cache_<split>.pt``; later runs load that file, unless the listing (names,
sizes, modification times) or the cache format changed, in which case they decode again. (Format
1 caches held the class-by-class order; they are rebuilt, never used.)
"""

import hashlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from padam_lightning.data.splits import ImageSplit
from padam_lightning.errors import DataError

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_JPEG_SUFFIXES: Final = frozenset({".jpg", ".jpeg"})
# 2: the fixed shuffled order of storage_order (1 was the listing's class-by-class order).
_CACHE_FORMAT: Final = 2
# The seed of storage_order's permutation: a constant, so the order never depends on a run.
_ORDER_SEED: Final = 20_181_127
_DECODE_CHUNK: Final = 4096
# Grayscale or RGBA files are converted: the networks take 3 channels.
RGB: Final = ImageReadMode.RGB
_LAYOUT_HINT: Final = (
    "--data.dataset imagefolder expects --data.data_dir to hold train/<class>/ and test/<class>/ "
    "folders of 32x32 RGB images (.jpg, .jpeg, .png, .webp), such as the extracted CIFAR-10 JPEGs."
)


@contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency
    # here) and warns on every call; the codecs still work, so one warning per image is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities")
        yield


def class_names(data_dir: str | Path) -> list[str]:
    """Return the sorted class folder names under ``data_dir/train`` (a cheap listing).

    Raises:
        DataError: If ``data_dir/train`` does not exist or holds no class folders.
    """
    train_dir = Path(data_dir) / "train"
    if not train_dir.is_dir():
        raise DataError(f"Image folder {train_dir}/ not found. {_LAYOUT_HINT}")
    names = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and e.name[0] != ".")
    if not names:
        raise DataError(f"Image folder {train_dir}/ has no class folders. {_LAYOUT_HINT}")
    return names


def _images_under(folder: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to ``folder``, stat) of each image at any depth, in sorted order.

    Subfolders count, as in torchvision's ``ImageFolder``; hidden files and folders do not, nor
    do links to folders inside a class folder (one pointing upwards would never end).
    """
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name[0] == ".":
            continue
        if entry.is_dir(follow_symlinks=False):
            for relative, stat in _images_under(entry.path):
                yield f"{entry.name}/{relative}", stat
        elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield entry.name, entry.stat()


def _list_images(split_dir: Path, classes: list[str]) -> list[tuple[str, int, os.stat_result]]:
    """Return (path relative to split_dir, label, stat) of every image, in a fixed order.

    Raises:
        DataError: If ``split_dir`` is missing or holds no images, a class folder is not one of
            ``classes``, or (training split) a class folder holds no images.
    """
    if not split_dir.is_dir():
        raise DataError(f"Image folder {split_dir}/ not found. {_LAYOUT_HINT}")
    index = {name: i for i, name in enumerate(classes)}
    found = []
    counts = dict.fromkeys(classes, 0)
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name[0] == ".":
            continue
        if entry.name not in index:
            raise DataError(
                f"Class folder {split_dir / entry.name}/ has no counterpart in "
                f"{split_dir.parent / 'train'}/ (classes there: {', '.join(classes)})."
            )
        for relative, stat in _images_under(entry.path):
            found.append((f"{entry.name}/{relative}", index[entry.name], stat))
            counts[entry.name] += 1
    if not found:
        raise DataError(f"Image folder {split_dir}/ holds no images. {_LAYOUT_HINT}")
    empty = [name for name, count in counts.items() if count == 0]
    if empty and split_dir.name == "train":
        # Each class folder is an output of the network: one without images would never be
        # learned, and would change the class count (torchvision's ImageFolder refuses it too).
        raise DataError(
            f"Class folder {split_dir / empty[0]}/ holds no images"
            + (f" (nor do {', '.join(empty[1:])})" if empty[1:] else "")
            + f": add its images or remove the folder. {_LAYOUT_HINT}"
        )
    if empty:
        warnings.warn(
            f"{split_dir}/ has no images of class {', '.join(empty)}: its error rates cover "
            "the other classes only.",
            stacklevel=3,
        )
    return found


def storage_order(num_images: int) -> torch.Tensor:
    """The fixed permutation in which an image folder's split is stored.

    Position ``i`` of the stored split holds image ``storage_order(n)[i]`` of the sorted listing
    (class folders sorted by name, files sorted by name within each). It is ``torch.randperm``
    from a constant seed: the same on every run, machine and process, whatever the run's seed.

    Args:
        num_images: The number of images in the split.

    Returns:
        An int64 permutation of ``range(num_images)``.
    """
    generator = torch.Generator().manual_seed(_ORDER_SEED)
    return torch.randperm(num_images, generator=generator)


def _fingerprint(classes: list[str], listing: list[tuple[str, int, os.stat_result]]) -> str:
    digest = hashlib.sha256("\n".join(classes).encode())
    for relative, _, stat in listing:
        digest.update(f"\n{relative}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _decode_all(split_dir: Path, relatives: list[str]) -> torch.Tensor:
    """Decode every file into one ``N x 3 x 32 x 32`` uint8 tensor, refusing other sizes."""
    raw = []
    for relative in relatives:
        with open(split_dir / relative, "rb") as file:
            raw.append(torch.frombuffer(bytearray(file.read()), dtype=torch.uint8))
    is_jpeg = [Path(relative).suffix.lower() in _JPEG_SUFFIXES for relative in relatives]
    jpegs = [i for i, jpeg in enumerate(is_jpeg) if jpeg]
    decoded: dict[int, torch.Tensor] = {}
    with _quiet_torchvision_io():
        for start in range(0, len(jpegs), _DECODE_CHUNK):
            chunk = jpegs[start : start + _DECODE_CHUNK]
            try:
                # One call per chunk: the batched decoder avoids per-image Python overhead.
                batch = decode_jpeg([raw[i] for i in chunk], mode=RGB)
                decoded.update(zip(chunk, batch, strict=True))
            except RuntimeError:
                # A bad file fails the whole chunk; decode one by one to name the culprit.
                decoded.update((i, _decode_one(split_dir, relatives[i], raw[i])) for i in chunk)
        for i in (i for i, jpeg in enumerate(is_jpeg) if not jpeg):
            decoded[i] = _decode_one(split_dir, relatives[i], raw[i])
    images = [decoded[i] for i in range(len(relatives))]
    for relative, image in zip(relatives, images, strict=True):
        if tuple(image.shape) != (3, 32, 32):
            raise DataError(
                f"Image {split_dir / relative} is {image.shape[2]}x{image.shape[1]} pixels; every "
                f"image must be 32x32 RGB. {_LAYOUT_HINT}"
            )
    return torch.stack(images)


def _decode_one(split_dir: Path, relative: str, data: torch.Tensor) -> torch.Tensor:
    try:
        return decode_image(data, mode=RGB)
    except RuntimeError as error:
        raise DataError(
            f"Image {split_dir / relative} could not be decoded ({error}). {_LAYOUT_HINT}"
        ) from error


def _read_cache(path: Path, fingerprint: str) -> ImageSplit | None:
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:
        # An unreadable cache (interrupted write, other torch version) is rebuilt, not fatal.
        return None
    if (
        not isinstance(cached, dict)
        or cached.get("format") != _CACHE_FORMAT
        or cached.get("fingerprint") != fingerprint
    ):
        return None
    return ImageSplit(cached["images"], cached["labels"])


def _write_cache(path: Path, fingerprint: str, split: ImageSplit) -> None:
    payload = {
        "format": _CACHE_FORMAT,
        "fingerprint": fingerprint,
        "images": split.images,
        "labels": split.labels,
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, partial)
        os.replace(partial, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as error:
        partial.unlink(missing_ok=True)
        warnings.warn(
            f"Could not write the decoded-image cache {path} ({error}); the images will be "
            "decoded again next time.",
            stacklevel=3,
        )


def cache_path(data_dir: str | Path, split: str) -> Path:
    """Where the decoded tensors of ``split`` (``"train"`` or ``"test"``) are cached."""
    return Path(data_dir) / f".padam_cache_{split}.pt"


def load_image_folder_split(data_dir: str | Path, split: str) -> ImageSplit:
    """Load ``data_dir/<split>/<class>/*`` as tensors, from the cache when it is current.

    Args:
        data_dir: The folder holding ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"``.

    Returns:
        uint8 images ``N x 3 x 32 x 32`` and int64 labels indexing the sorted class folder names
        of ``train/``, in the fixed shuffled order of :func:`storage_order` (so a prefix of the
        split mixes the classes).

    Raises:
        DataError: If a folder is missing or empty, a class folder under ``test/`` is not under
            ``train/``, or an image cannot be decoded or is not 32x32.
    """
    root = Path(data_dir)
    classes = class_names(root)
    split_dir = root / split
    listing = _list_images(split_dir, classes)
    listing = [listing[i] for i in storage_order(len(listing)).tolist()]
    fingerprint = _fingerprint(classes, listing)
    path = cache_path(root, split)
    cached = _read_cache(path, fingerprint)
    if cached is not None:
        return cached
    images = _decode_all(split_dir, [relative for relative, _, _ in listing])
    labels = torch.tensor([label for _, label, _ in listing], dtype=torch.int64)
    result = ImageSplit(images, labels)
    _write_cache(path, fingerprint, result)
    return result
