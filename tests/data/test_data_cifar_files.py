"""CIFAR-10/100 in the real python format: loading, checksums and the errors users see."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets.cifar
from cifar_test_files import trust_fake_files, write_fake_cifar

from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import DataError


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's download fail as it does offline, and record what it tried."""
    attempts: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        attempts.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    return attempts


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_loads_the_python_format_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, no_network: list[str]
) -> None:
    train_images, train_labels, test_images, test_labels = write_fake_cifar(tmp_path, dataset)
    trust_fake_files(monkeypatch, tmp_path, dataset)
    data = CIFARDataModule(dataset, data_dir=str(tmp_path), download=True)
    data.prepare_data()
    data.setup("fit")
    assert no_network == []  # files present and verified: nothing to download
    train, test = data.split("train"), data.split("test")
    expected_train = 100 if dataset == "cifar10" else 20  # five batch files or one
    assert train.images.shape == (expected_train, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, train_images) and torch.equal(train.labels, train_labels)
    assert torch.equal(test.images, test_images) and torch.equal(test.labels, test_labels)
    assert train.labels.dtype == torch.int64
    # Pixel (row 0, col 1) of the red plane is byte 1 of the stored row: channels first.
    assert train.images[0, 0, 0, 1] == train_images.reshape(-1, 3072)[0, 1]


def test_missing_files_without_download(tmp_path: Path) -> None:
    data = CIFARDataModule("cifar10", data_dir=str(tmp_path / "data"), download=False)
    with pytest.raises(DataError) as raised:
        data.setup("fit")
    message = str(raised.value)
    assert f"CIFAR-10 not found in {tmp_path / 'data'}/" in message
    assert "data_batch_1" in message and "--data.download" in message
    assert "cifar-10-python.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/" in message
    assert "--data.dataset imagefolder" in message


@pytest.mark.parametrize(("dataset", "title"), [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_missing_files_and_failed_download(
    tmp_path: Path, no_network: list[str], dataset: str, title: str
) -> None:
    data = CIFARDataModule(dataset, data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError) as raised:
        data.prepare_data()
    message = str(raised.value)
    assert message.startswith(f"{title} not found in {tmp_path}/ and the download failed (URLError")
    assert "name resolution" in message
    assert f"{dataset.replace('cifar', 'cifar-')}-python.tar.gz" in message
    assert len(no_network) == 1 and no_network[0].startswith("https://www.cs.toronto.edu/")


@pytest.mark.parametrize(("dataset", "title"), [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")])
def test_a_damaged_archive_is_named_not_called_missing(
    tmp_path: Path, no_network: list[str], dataset: str, title: str
) -> None:
    archive = tmp_path / f"{dataset.replace('cifar', 'cifar-')}-python.tar.gz"
    archive.write_bytes(b"the first kilobytes of an interrupted download")
    for download in (True, False):
        data = CIFARDataModule(dataset, data_dir=str(tmp_path), download=download)
        with pytest.raises(DataError) as raised:
            data.setup("fit")
        message = str(raised.value)
        assert f"the archive {archive} there fails its checksum (damaged" in message
        if download:
            assert "downloading a fresh copy failed (URLError" in message
            assert f"Move {archive} aside (nothing was deleted)" in message
    assert archive.read_bytes() == b"the first kilobytes of an interrupted download"


def test_an_intact_archive_without_download_says_how_to_extract_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"stands for the real archive")
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest()
    )
    data = CIFARDataModule("cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError) as raised:
        data.setup("fit")
    message = str(raised.value)
    assert f"the archive {archive} is there and intact: pass --data.download true" in message


def test_real_checksums_refuse_fake_files(tmp_path: Path) -> None:
    # Without trusting the fake files, torchvision's shipped MD5s reject them: corrupt, not missing.
    write_fake_cifar(tmp_path, "cifar10")
    data = CIFARDataModule("cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="failed their checksum check") as raised:
        data.setup("test")
    assert "Move" in str(raised.value) and "aside" in str(raised.value)


def test_corrupt_file_and_failed_download_keeps_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    write_fake_cifar(tmp_path, "cifar10")
    trust_fake_files(monkeypatch, tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    corrupt = folder / "data_batch_3"
    corrupt.write_bytes(corrupt.read_bytes()[:-10])  # truncated, as an interrupted copy is
    before = snapshot(folder)
    data = CIFARDataModule("cifar10", data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError) as raised:
        data.setup("fit")
    message = str(raised.value)
    assert f"files in {folder}/ failed their checksum check" in message
    assert "downloading a fresh copy failed (URLError" in message
    assert snapshot(folder) == before  # nothing deleted or modified


def test_unreadable_file_with_a_matching_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle at all")
    trust_fake_files(monkeypatch, tmp_path, "cifar10")  # the MD5 list now matches the bad file
    data = CIFARDataModule("cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="passed their checksum but could not be read") as raised:
        data.setup("test")
    assert "UnpicklingError" in str(raised.value)
