"""CIFAR-10 and CIFAR-100 in their python format, through torchvision, with clear errors.

torchvision downloads the archive into the data folder, extracts it and checks every file's MD5
before unpickling. This module turns whatever goes wrong on the way (no network, files missing,
files corrupt) into one :class:`~padam_lightning.errors.DataError` that says where it looked and
how to provide the files. It never deletes anything.
"""

import pickle
from pathlib import Path
from typing import Final

import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from padam_lightning.data.splits import ImageSplit
from padam_lightning.errors import DataError

_DATASETS: Final[dict[str, tuple[str, type[CIFAR10]]]] = {
    "cifar10": ("CIFAR-10", CIFAR10),
    "cifar100": ("CIFAR-100", CIFAR100),
}

_DATA_PAGE: Final = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _expected_files(dataset_class: type[CIFAR10], data_dir: Path) -> list[Path]:
    folder = data_dir / dataset_class.base_folder
    names = [name for name, _ in dataset_class.train_list + dataset_class.test_list]
    return [folder / name for name in [*names, dataset_class.meta["filename"]]]


def _how_to_fix(
    dataset_class: type[CIFAR10], data_dir: Path, corrupt: bool = False, aside: Path | None = None
) -> str:
    aside = aside or data_dir / dataset_class.base_folder
    first = f"Move {aside} aside (nothing was deleted), then download" if corrupt else "Download"
    return (
        f"{first} {dataset_class.filename} from {_DATA_PAGE} and extract it into {data_dir}/ "
        f"(giving {data_dir / dataset_class.base_folder}/), or use --data.dataset imagefolder "
        "--data.data_dir DIR with train/<class>/ and test/<class>/ image folders."
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_cifar_split(dataset: str, data_dir: str | Path, train: bool, download: bool) -> ImageSplit:
    """Load one split of CIFAR-10 or CIFAR-100, downloading the archive first if allowed.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        data_dir: The folder that holds (or will hold) ``cifar-10-batches-py/`` or
            ``cifar-100-python/``.
        train: The training split if True, else the test split.
        download: Whether to download and extract the archive when the files are missing or fail
            their checksum.

    Returns:
        The split: uint8 images ``N x 3 x 32 x 32`` and int64 labels (fine labels for CIFAR-100).

    Raises:
        DataError: If the files are missing and cannot be downloaded, fail their checksum, or
            cannot be unpickled.
    """
    title, dataset_class = _DATASETS[dataset]
    root = Path(data_dir)
    folder = root / dataset_class.base_folder
    missing = [path.name for path in _expected_files(dataset_class, root) if not path.is_file()]
    # torchvision extracts an archive already in the folder (download=True) when its MD5 matches,
    # and fetches a fresh one otherwise: a damaged archive is not a missing one.
    archive = root / dataset_class.filename
    archive_intact = None
    if missing and archive.is_file():
        archive_intact = check_integrity(str(archive), dataset_class.tgz_md5)
    try:
        # With download=True torchvision fetches the archive only when a file is missing or
        # fails its MD5; either way it checks every MD5 before unpickling.
        loaded = dataset_class(root=str(root), train=train, download=download)
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, ValueError) as error:
        raise DataError(
            f"{title} files in {folder}/ passed their checksum but could not be read "
            f"({_describe(error)}). " + _how_to_fix(dataset_class, root, corrupt=True)
        ) from error
    except Exception as error:
        # A failed download (URLError, HTTPError, OSError, ...) or torchvision's RuntimeError
        # for a file that is missing or fails its MD5.
        if missing and download and archive_intact is False:
            problem = (
                f"not found in {root}/: the archive {archive} there fails its checksum (damaged "
                f"or incomplete) and downloading a fresh copy failed ({_describe(error)})"
            )
            fix = _how_to_fix(dataset_class, root, corrupt=True, aside=archive)
            raise DataError(f"{title} {problem}. {fix}") from error
        if missing and download:
            problem = f"not found in {root}/ and the download failed ({_describe(error)})"
        elif missing:
            problem = (
                f"not found in {root}/ (missing in {folder}/: {', '.join(missing)}) and "
                "--data.download is false"
            )
            if archive_intact:
                raise DataError(
                    f"{title} {problem}; the archive {archive} is there and intact: pass "
                    "--data.download true to extract it (nothing is downloaded then)."
                ) from error
            if archive_intact is False:
                problem += f"; the archive {archive} there fails its checksum (damaged)"
        elif download:
            problem = (
                f"files in {folder}/ failed their checksum check (corrupt or incomplete) and "
                f"downloading a fresh copy failed ({_describe(error)})"
            )
        else:
            problem = (
                f"files in {folder}/ failed their checksum check (corrupt or incomplete: {error})"
            )
        fix = _how_to_fix(dataset_class, root, corrupt=not missing)
        raise DataError(f"{title} {problem}. {fix}") from error
    # torchvision holds N x H x W x C numpy arrays; the python files store channels first.
    images = torch.from_numpy(loaded.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(loaded.targets, dtype=torch.int64)
    return ImageSplit(images, labels)
