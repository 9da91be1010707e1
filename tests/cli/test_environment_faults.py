"""A full, read-only or failing disk: one line, exit status 2, and no file lost or left half.

The faults are real: a small tmpfs mounted for the test fills up (ENOSPC) or is remounted
read-only (EROFS); permission bits would not do, since the tests run as root. Where mounting is
not permitted the tests skip, saying so. Only the errors a tmpfs cannot give (EIO, EDQUOT) come
from a stand-in ``torch.save``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from padam_lightning.cli.storage import (
    AtomicCheckpointIO,
    StorageError,
    check_writable,
    storage_error_from,
    write_text_atomically,
)
from padam_lightning.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
PADAM_FIT = [sys.executable, "-m", "padam_lightning.cli"]
FIX = "choose another folder with --trainer.logger.init_args.save_dir or --trainer.default_root_dir"

#: Size of a checkpoint of the tiny run (configs/tiny.yaml: wrn10_1 with Padam's three moment
#: buffers), measured: 1,305,699 bytes for last.ckpt, 1,305,635 for the best one.
TINY_CHECKPOINT_BYTES = 1_306_000

Mount = Callable[[int], Path]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Mount]:
    """Mount tmpfs file systems of a given size in kB under ``tmp_path``; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here for a real full disk: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # busy: detach it anyway


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Fill ``disk`` with one file until ``leave_bytes`` (rounded to pages) remain free."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as file:  # unbuffered: nothing left to flush at close
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    if leave_bytes:
        os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def checkpoint(values: int, fill_value: float = 0.0) -> dict[str, Any]:
    """A checkpoint of about ``8 * values`` bytes."""
    return {"state_dict": {"weight": torch.full((values,), fill_value, dtype=torch.float64)}}


def assert_one_line(err: BaseException, *parts: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- storage.py, on a real small disk ---------------------------------------------------------


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_byte_identical(
    small_disk: Mount,
) -> None:
    disk = small_disk(600)  # room for one 400 kB checkpoint, not for its replacement beside it
    target = disk / "run" / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(50_000, 1.0), target)
    before = target.read_bytes()

    with pytest.raises(StorageError) as caught:
        AtomicCheckpointIO().save_checkpoint(checkpoint(50_000, 2.0), target)

    assert_one_line(
        caught.value,
        f"cannot save the checkpoint {target}: no space left on device (",
        f"the previous checkpoint {target} is intact",
        f"Free space in {target.parent}",
        FIX,
    )
    # torch.save says "RuntimeError: ... unexpected pos ..."; the cause is the disk's own error.
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert isinstance(caught.value, UserError) and caught.value.exit_code == 2
    assert target.read_bytes() == before
    assert files_in(disk) == ["run/checkpoints/last.ckpt"]  # no temp file left
    assert torch.load(target)["state_dict"]["weight"][0] == 1.0


def test_a_first_checkpoint_that_does_not_fit_leaves_no_file(small_disk: Mount) -> None:
    disk = small_disk(200)
    target = disk / "last.ckpt"
    with pytest.raises(StorageError) as caught:
        AtomicCheckpointIO().save_checkpoint(checkpoint(50_000), target)
    assert_one_line(caught.value, "no space left on device", "no checkpoint was written there")
    assert files_in(disk) == []


def test_text_on_a_full_disk_leaves_no_empty_file_and_keeps_the_previous_one(
    small_disk: Mount,
) -> None:
    # A new run on a full disk once left a 0-byte config.yaml.
    disk = small_disk(64)
    kept = disk / "old" / "config.yaml"
    write_text_atomically(kept, "seed_everything: 0\n")
    filler = fill(disk)
    new = disk / "new" / "config.yaml"

    with pytest.raises(StorageError) as caught:
        write_text_atomically(new, "seed_everything: 1\n")
    assert_one_line(caught.value, f"cannot save the file {new}: no space left on device")
    with pytest.raises(StorageError, match=r"the previous file .* is intact"):
        write_text_atomically(kept, "seed_everything: 2\n" * 2000)

    assert kept.read_text() == "seed_everything: 0\n"
    assert files_in(disk) == ["filler", "old/config.yaml"]
    filler.unlink()  # the disk has room again: the same write now succeeds
    write_text_atomically(new, "seed_everything: 1\n")
    assert new.read_text() == "seed_everything: 1\n"


def test_a_read_only_disk_refuses_every_write_in_one_line_and_changes_nothing(
    small_disk: Mount,
) -> None:
    disk = small_disk(1024)
    target = disk / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1000), target)
    write_text_atomically(disk / "config.yaml", "a: 1\n")
    before = {name: (disk / name).read_bytes() for name in files_in(disk)}
    remount_read_only(disk)

    with pytest.raises(StorageError) as caught:
        AtomicCheckpointIO().save_checkpoint(checkpoint(1000, 3.0), target)
    assert_one_line(
        caught.value,
        "the file system is read-only",
        f"the previous checkpoint {target} is intact",
        f"Make {target.parent} writable",
    )
    with pytest.raises(StorageError, match="read-only"):
        write_text_atomically(disk / "config.yaml", "a: 2\n")
    with pytest.raises(StorageError) as caught:
        check_writable(disk / "run" / "version_0")
    assert_one_line(caught.value, f"cannot write into {disk / 'run' / 'version_0'}: the file")
    assert {name: (disk / name).read_bytes() for name in files_in(disk)} == before


def test_check_writable_refuses_a_full_disk_before_anything_is_written(small_disk: Mount) -> None:
    disk = small_disk(64)
    run = disk / "logs" / "version_0"
    check_writable(run)  # room: passes, and creates nothing
    assert list(disk.iterdir()) == []

    fill(disk)
    with pytest.raises(StorageError) as caught:
        check_writable(run)
    assert_one_line(
        caught.value,
        f"cannot write into {run}: no space left on device (0 B free)",
        "nothing was written",
        f"Free space in {disk}",
    )
    assert files_in(disk) == ["filler"]  # the probe file is gone too


def test_check_writable_refuses_a_path_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("")
    with pytest.raises(StorageError, match="logs is a file, not a folder"):
        check_writable(tmp_path / "logs" / "run")


# -- errors a tmpfs cannot give, and errors that are not the disk's ---------------------------


@pytest.mark.parametrize(
    ("code", "words", "fix"),
    [
        (errno.EIO, "input/output error (a failing disk or a lost network mount)", "Check that"),
        (errno.EDQUOT, "disk quota exceeded", "Free space in"),
        (errno.EACCES, "permission denied", "writable"),
    ],
)
def test_every_refused_save_is_one_line_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, words: str, fix: str
) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(10), target)
    before = target.read_bytes()

    def refused_write(obj: Any, file: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", refused_write)
    with pytest.raises(StorageError) as caught:
        AtomicCheckpointIO().save_checkpoint(checkpoint(10), target)
    assert_one_line(caught.value, words, f"the previous checkpoint {target} is intact", fix, FIX)
    assert target.read_bytes() == before
    assert files_in(tmp_path) == ["last.ckpt"]


def test_a_runtime_error_that_is_no_refused_write_is_raised_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(obj: Any, file: Any) -> None:
        file.write(b"PK")
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        AtomicCheckpointIO().save_checkpoint(checkpoint(10), tmp_path / "last.ckpt")
    assert files_in(tmp_path) == []


def test_another_librarys_refused_write_becomes_one_line(tmp_path: Path) -> None:
    # As TensorBoard's writer raises it when the disk is full at its event file's creation.
    event_file = tmp_path / "version_0" / "events.out.tfevents.1"
    err = OSError(errno.ENOSPC, "No space left on device", str(event_file))
    message = str(storage_error_from(err, kept=f"the run's last checkpoint {tmp_path} is intact"))
    assert message.startswith(f"cannot write {event_file}: no space left on device (")
    assert f"Free space in {event_file.parent}, or {FIX}." in message
    assert "\n" not in message
    unnamed = storage_error_from(OSError(errno.EIO, "I/O error"), kept="x", folder=tmp_path)
    assert str(unnamed).startswith(f"cannot access files in {tmp_path}: input/output error")


# -- through padam-fit --------------------------------------------------------------------------
# These need padam-fit to route its writes through padam_lightning.cli.storage (AtomicCheckpointIO,
# RunConfigSaver writing config.yaml with write_text_atomically, check_writable before a run
# writes) and to print StorageError as any UserError.


def padam_fit(save_dir: Path) -> subprocess.CompletedProcess[str]:
    args = ["fit", "--config", "configs/wrn.yaml", "--config", "configs/tiny.yaml"]
    return subprocess.run(
        [*PADAM_FIT, *args, "--trainer.logger.init_args.save_dir", str(save_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    """Exit status 2 and exactly one ``padam-fit: error:`` line on stderr, with no traceback."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("padam-fit: error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Exception in thread" not in result.stderr, result.stderr[-3000:]
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


@pytest.mark.slow  # a padam-fit process
def test_a_disk_that_fills_up_mid_run_ends_in_one_line_and_keeps_the_last_checkpoint(
    small_disk: Mount,
) -> None:
    # Room for epoch 0's two checkpoints (last and best) but not for epoch 1's next one beside
    # them: its temporary file fills the disk.
    disk = small_disk(int(2.5 * TINY_CHECKPOINT_BYTES / 1024))
    result = padam_fit(disk)

    lasts = list(disk.glob("*/version_0/checkpoints/last.ckpt"))
    assert lasts, f"epoch 0's checkpoints did not fit: measure them again\n{result.stderr[-3000:]}"
    assert_one_error_line(
        result, "no space left on device", f"the previous checkpoint {lasts[0]} is intact", FIX
    )
    # Epoch 0's checkpoint: the tiny run trains 3 batches an epoch.
    assert torch.load(lasts[0], weights_only=False)["global_step"] == 3
    assert not [name for name in files_in(disk) if ".tmp-" in name]


@pytest.mark.slow  # a padam-fit process
def test_a_new_run_on_a_full_disk_is_refused_before_it_writes_anything(small_disk: Mount) -> None:
    disk = small_disk(64)
    fill(disk)
    result = padam_fit(disk)
    assert_one_error_line(result, "no space left on device", f"Free space in {disk}", FIX)
    assert files_in(disk) == ["filler"]  # no 0-byte config.yaml, event file or temp file


@pytest.mark.slow  # a padam-fit process
def test_a_new_run_on_a_nearly_full_disk_leaves_no_empty_config(small_disk: Mount) -> None:
    # One page free: the check before the run passes and TensorBoard's event file takes the
    # page, so config.yaml is the write the disk refuses. It once left config.yaml with 0 bytes.
    disk = small_disk(64)
    fill(disk, leave_bytes=4096)
    result = padam_fit(disk)
    assert_one_error_line(result, "no space left on device", FIX)
    assert not [name for name in files_in(disk) if ".tmp-" in name]
    assert not [name for name in files_in(disk) if (disk / name).stat().st_size == 0]


@pytest.mark.slow  # a padam-fit process
def test_a_run_on_a_read_only_disk_is_refused_in_one_line(small_disk: Mount) -> None:
    disk = small_disk(64)
    remount_read_only(disk)
    result = padam_fit(disk)
    assert_one_error_line(result, "the file system is read-only", f"Make {disk} writable", FIX)
