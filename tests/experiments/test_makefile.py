"""``make fit``'s use of the CIFAR-10 JPEG tarball: a partial extraction is never trained on.

Each test runs the project's Makefile in a scratch folder with a tiny tarball made here and a
stand-in for ``padam-fit`` (the ``FIT`` variable) that records the files it would train on.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
#: The tarball's members: the layout of the real one (split/class/NNNN.jpg), a few bytes each.
MEMBERS = [
    f"{split}/{cls}/{i:04d}.jpg" for split in ("train", "test") for cls in "ab" for i in (0, 1)
]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A folder with the tarball, a stand-in padam-fit, and an installed-looking .venv stamp."""
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as tar:
        for name in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = len(name)
            tar.addfile(info, io.BytesIO(name.encode()))
    fake = tmp_path / "fake-fit"
    # Records its arguments and every file under data/cifar10-jpeg, as the training would see.
    fake.write_text(
        '#!/bin/sh\necho "$@" > fit-args.txt\n'
        "(cd data/cifar10-jpeg && find . -type f | sort) > fit-files.txt\n"
    )
    fake.chmod(0o755)
    (tmp_path / "pyproject.toml").write_text("")
    stamp = tmp_path / "venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    os.utime(tmp_path / "pyproject.toml", (0, 0))  # older than the stamp: no install
    return tmp_path


def _make_fit(
    folder: Path, tarball: str = "cifar.tar.gz", target: str = "fit"
) -> subprocess.CompletedProcess[str]:
    variables = [f"FIT={folder / 'fake-fit'}", f"CIFAR_JPEG={tarball}"]
    variables += ["CONFIG=c.yaml"] if target == "fit" else []
    return subprocess.run(
        ["make", "-f", str(MAKEFILE), target, "VENV=venv", *variables],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _trained_on(folder: Path) -> list[str]:
    return (folder / "fit-files.txt").read_text().split()


EXTRACTED = [*sorted(f"./{name}" for name in MEMBERS), "./.extracted"]


def test_first_use_extracts_the_whole_tarball_then_trains(scratch: Path) -> None:
    result = _make_fit(scratch)
    assert result.returncode == 0, result.stderr
    assert sorted(_trained_on(scratch)) == sorted(EXTRACTED)
    args = (scratch / "fit-args.txt").read_text().split()
    assert args == ["fit", "--config", "c.yaml", "--config", "configs/data/cifar10_jpeg.yaml"]
    assert not (scratch / "data" / "cifar10-jpeg.partial").exists()


def test_a_partial_folder_left_by_an_interrupted_extraction_is_redone(scratch: Path) -> None:
    # What an extraction stopped part way leaves: some classes of train/, no marker.
    partial = scratch / "data" / "cifar10-jpeg" / "train" / "a"
    partial.mkdir(parents=True)
    (partial / "0000.jpg").write_text("half")
    (partial / "truncated.jpg").write_text("")
    result = _make_fit(scratch)
    assert result.returncode == 0, result.stderr
    assert "extracting" in result.stdout
    assert sorted(_trained_on(scratch)) == sorted(EXTRACTED)  # the stray file is gone too
    assert (scratch / "data" / "cifar10-jpeg" / "train" / "a" / "0000.jpg").read_text() == (
        "train/a/0000.jpg"
    )


def test_a_leftover_temporary_folder_is_cleaned(scratch: Path) -> None:
    # An extraction into the temporary folder stopped by Ctrl-C: it is removed, not renamed.
    leftover = scratch / "data" / "cifar10-jpeg.partial" / "train" / "z"
    leftover.mkdir(parents=True)
    (leftover / "stray.jpg").write_text("")
    result = _make_fit(scratch)
    assert result.returncode == 0, result.stderr
    assert sorted(_trained_on(scratch)) == sorted(EXTRACTED)
    assert not (scratch / "data" / "cifar10-jpeg.partial").exists()


def test_a_complete_extraction_is_reused(scratch: Path) -> None:
    assert _make_fit(scratch).returncode == 0
    sentinel = scratch / "data" / "cifar10-jpeg" / "sentinel"
    sentinel.write_text("kept")
    result = _make_fit(scratch)
    assert result.returncode == 0, result.stderr
    assert "extracting" not in result.stdout
    assert sentinel.is_file()  # not extracted again


def test_a_broken_tarball_stops_before_training_and_leaves_no_folder(scratch: Path) -> None:
    (scratch / "broken.tar.gz").write_bytes((scratch / "cifar.tar.gz").read_bytes()[:40])
    result = _make_fit(scratch, "broken.tar.gz")
    assert result.returncode != 0
    assert "make fit: error: could not extract broken.tar.gz into data/cifar10-jpeg" in (
        result.stderr
    )
    assert not (scratch / "fit-args.txt").exists()  # padam-fit never ran
    assert not (scratch / "data" / "cifar10-jpeg").exists()
    assert not (scratch / "data" / "cifar10-jpeg.partial").exists()


def test_fit_cpu_extracts_the_same_way(scratch: Path) -> None:
    partial = scratch / "data" / "cifar10-jpeg" / "train" / "a"
    partial.mkdir(parents=True)
    (partial / "0000.jpg").write_text("half")
    result = _make_fit(scratch, target="fit-cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(_trained_on(scratch)) == sorted(EXTRACTED)
    args = (scratch / "fit-args.txt").read_text().split()
    assert args == [
        "fit",
        "--config",
        "configs/cpu.yaml",
        "--config",
        "configs/data/cifar10_jpeg.yaml",
    ]
