"""How padam-fit writes files: whole (a synced temporary file renamed) or not at all."""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from padam_lightning.errors import UserError
from padam_lightning.training.tensorboard import process_is_alive

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: Temporary files are named ``.<target>.tmp-<pid>`` beside their target.
_TEMP_MARK = ".tmp-"

#: What an errno means, in words a user acts on (others use the system's own wording).
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (a failing disk or a lost network mount)",
}

#: Error numbers of a disk that refuses to store data: full, over quota, read-only, failing.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})

_CHOOSE_FOLDER = (
    "choose another folder with --trainer.logger.init_args.save_dir or --trainer.default_root_dir"
)


class StorageError(UserError):
    """A file could not be written; the message says where, why, what is intact and the fix."""


def _size(n: float) -> str:
    """``n`` bytes for a person: ``"512 B"``, ``"1.3 MB"``."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _storage_error(failed: str, folder: Path | None, err: OSError, kept: str) -> StorageError:
    """The one-line error for ``err``: ``"<failed>: <why>; <kept>. <fix>."``."""
    why = _REASONS.get(err.errno or 0) or " ".join((err.strerror or str(err)).lower().split())
    where = str(folder) if folder else "that folder"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        with suppress(OSError):  # the free space helps, but only if it can be read
            why += f" ({_size(shutil.disk_usage(_existing(folder)).free)} free)" if folder else ""
        fix = f"Free space in {where}"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"Make {where} writable"
    else:
        fix = "Check that disk"
    return StorageError(f"{failed}: {why}; {kept}. {fix}, or {_CHOOSE_FOLDER}.")


def storage_error_from(err: OSError, kept: str, folder: Path | None = None) -> StorageError:
    """The :class:`StorageError` for another library's failed write; ``kept``: what is intact."""
    path = Path(os.fsdecode(err.filename)) if err.filename else None
    folder = folder or (path.parent if path else None)
    what = str(path) if path else (f"files in {folder}" if folder else "a file")
    # Only these errnos are sure to come from a write; EIO or EACCES may come from a read.
    verb = "write" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
    return _storage_error(f"cannot {verb} {what}", folder, err, kept)


class _ErrorKeepingFile(io.FileIO):
    """A file that keeps the first ``OSError`` of its writes, which ``torch.save`` hides."""

    error: OSError | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        """Write, keeping an ``OSError`` before raising it."""
        try:
            return super().write(data)
        except OSError as err:
            self.error = self.error or err
            raise


def _write_atomically(target: Path, write: Callable[[BinaryIO], object], what: str) -> None:
    """Write ``target`` with ``write`` via a temporary file; StorageError names it ``what``."""
    tmp = target.with_name(f".{target.name}{_TEMP_MARK}{os.getpid()}")
    failed = f"cannot save the {what} {target}"
    kept = f"the previous {what} {target} is intact"
    if not target.is_file():
        kept = f"no {what} was written there"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(target.parent)
        raw = _ErrorKeepingFile(tmp, "w")
        with io.BufferedWriter(raw) as file:  # buffered: the zip writer ignores short writes
            try:
                write(file)
            except RuntimeError as err:
                if raw.error is None:
                    raise  # not a refused write
                raise raw.error from err
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
        failed = f"cannot sync {target.parent}"  # the rename, to make it durable
        kept = f"{target} holds the new {what}, which a power cut may undo"
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as err:  # some file systems cannot sync a folder: skipped
            if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise
        finally:
            os.close(fd)
    except BaseException as err:
        # Before the message reports the free space. A failing disk may refuse this too: the
        # next save into the folder retries (_remove_stale_temp_files).
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise  # a KeyboardInterrupt, or a bug to see as it is
        raise _storage_error(failed, target.parent, err, kept) from err


def _remove_stale_temp_files(folder: Path) -> None:
    """Delete the temporary files (whole checkpoints) that processes killed during a save left."""
    for tmp in folder.glob(f".*{_TEMP_MARK}*"):
        pid = tmp.name.rsplit(_TEMP_MARK, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_is_alive(int(pid)):
            with suppress(OSError):  # a read-only folder: the write that follows says so
                tmp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (StorageError: ``path`` is as it was)."""
    _write_atomically(path, lambda file: file.write(text.encode()), "file")


def check_writable(folder: Path) -> None:
    """StorageError unless ``folder`` (or its nearest existing parent) takes a file now."""
    existing = _existing(folder)
    failed, kept = f"cannot write into {folder}", "nothing was written"
    if not existing.is_dir():
        raise StorageError(f"{failed}: {existing} is a file, not a folder; {_CHOOSE_FOLDER}.")
    # A byte written and deleted, because permission bits do not tell: root ignores them, and a
    # read-only mount or a full disk does not show in them.
    probe = existing / f".write-check{_TEMP_MARK}{os.getpid()}"
    try:
        with open(probe, "wb", buffering=0) as file:
            file.write(b"\0")
            os.fsync(file.fileno())
    except OSError as err:
        raise _storage_error(failed, existing, err, kept) from err
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints so that a crash or a full disk never leaves a truncated file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically (StorageError: the previous one is intact)."""
        _write_atomically(Path(path), lambda file: torch.save(checkpoint, file), "checkpoint")
