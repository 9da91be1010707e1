"""How padam-fit writes files: whole or not at all, and a full or broken disk in one line.

Every file is written to a temporary file beside its target, flushed to disk, then renamed over
the target: a crash or a failed write leaves the previous file or the new one, never a partial
one. A write that the disk refuses (full, over quota, read-only, no permission, failing) removes
its temporary file and raises :class:`StorageError`, whose one-line message says what failed,
where, why, what is intact and how to fix it.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _reason(err: OSError) -> str:
    words = _REASONS.get(err.errno or 0) or (err.strerror or str(err)).lower()
    return " ".join(words.split())  # one line, whatever the system's wording


def _size(n: float) -> str:
    """``n`` bytes for a person: ``"512 B"``, ``"1.3 MB"``."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("not reached")


def _free_space(folder: Path) -> int | None:
    """Bytes free on the file system of ``folder`` or of its nearest existing parent."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None  # the number helps, but only if it can be read


def _storage_error(failed: str, folder: Path | None, err: OSError, kept: str) -> StorageError:
    """The one-line error for ``err``: ``"<failed>: <why>; <kept>. <fix>."``."""
    why = _reason(err)
    where = str(folder) if folder else "that folder"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_space(folder) if folder else None
        why += f" ({_size(free)} free)" if free is not None else ""
        fix = f"Free space in {where}, or {_CHOOSE_FOLDER}"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"Make {where} writable, or {_CHOOSE_FOLDER}"
    else:
        fix = f"Check that disk, or {_CHOOSE_FOLDER}"
    return StorageError(f"{failed}: {why}; {kept}. {fix}.")


def storage_error_from(err: OSError, kept: str, folder: Path | None = None) -> StorageError:
    """The one-line :class:`StorageError` for a write that another library made and failed.

    For the writers that do not go through this module (TensorBoard's event files, Lightning's
    ``hparams.yaml``): the command line turns their ``OSError`` whose errno is in
    :data:`STORAGE_ERRNOS` into this.

    Args:
        err: The error (it names the file when it was raised by opening one).
        kept: What is intact, e.g. ``"the run's last checkpoint <path> is intact"``.
        folder: Where the write went, when ``err`` does not name its file.
    """
    path = Path(os.fsdecode(err.filename)) if err.filename else None
    if folder is None and path is not None:
        folder = path.parent
    what = str(path) if path else (f"files in {folder}" if folder else "a file")
    # Only these errnos are sure to come from a write; EIO or EACCES may come from a read.
    verb = "write" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
    failed = f"cannot {verb} {what}"
    return _storage_error(failed, folder, err, kept)


class _ErrorKeepingFile(io.BufferedWriter):
    """A buffered binary file that remembers the first ``OSError`` of its writes.

    ``torch.save`` reports a write the disk refused as ``RuntimeError: ... unexpected pos ...``
    from its zip writer, with the ``OSError`` at best as the exception's context; the file keeps
    it, so the save can say why it failed. (Buffered, because the zip writer ignores short writes.)
    """

    error: OSError | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        """Write, remembering an ``OSError`` before raising it."""
        try:
            return super().write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        """Flush, remembering an ``OSError`` before raising it."""
        try:
            super().flush()
        except OSError as err:
            self.error = self.error or err
            raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (some file systems cannot sync a folder: skipped)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_atomically(target: Path, write: Callable[[io.BufferedWriter], None], what: str) -> None:
    """Write ``target`` through ``write`` into a temporary file, then rename it over ``target``.

    Args:
        target: The file to write.
        write: Writes the content into the open temporary file.
        what: What the file is, for the error message (``"checkpoint"``, ``"file"``).

    Raises:
        StorageError: If the disk refused a write; ``target`` is then as it was before.
    """
    tmp = target.with_name(f".{target.name}{_TEMP_MARK}{os.getpid()}")
    previous = target.is_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target.parent)
        with _ErrorKeepingFile(io.FileIO(tmp, "w")) as file:
            try:
                write(file)
            except RuntimeError as err:
                if file.error is None:
                    raise  # not a refused write: a bug to see as it is
                raise file.error from err
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except OSError as err:
        # Removed before the message reports the free space. A failing disk may refuse this
        # too: the next save into the folder retries (remove_stale_temp_files).
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        kept = (
            f"the previous {what} {target} is intact"
            if previous
            else f"no {what} was written there"
        )
        raise _storage_error(f"cannot save the {what} {target}", target.parent, err, kept) from err
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)  # after a KeyboardInterrupt, or another exception
    try:
        _fsync_folder(target.parent)
    except OSError as err:
        kept = f"{target} holds the new {what}, which a power cut may undo"
        raise _storage_error(f"cannot sync {target.parent}", target.parent, err, kept) from err


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that processes killed during a save left in ``folder``.

    A temporary file holds a whole checkpoint (hundreds of MB for the larger networks), so each
    crash during a save would otherwise leak one. Files of processes still running are kept.

    Returns:
        The files deleted.
    """
    removed = []
    for tmp in folder.glob(f".*{_TEMP_MARK}*"):
        pid = tmp.name.rsplit(_TEMP_MARK, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_is_alive(int(pid)):
            with suppress(OSError):  # a read-only folder: the write that follows says so
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, whole.

    Raises:
        StorageError: If the disk refused the write; ``path`` is then as it was before (a full
            disk leaves no empty file).
    """

    def write(file: io.BufferedWriter) -> None:
        file.write(text.encode())

    _write_atomically(path, write, "file")


def check_writable(folder: Path, min_free_bytes: int = 0) -> None:
    """Check that files can be written in ``folder``, before anything in it is written.

    A missing ``folder`` is not created: its nearest existing parent is checked instead. The
    check writes and deletes a one-byte file there, because permission bits do not tell (root
    ignores them, a read-only mount or a full disk does not show in them).

    Args:
        folder: Where files will be written.
        min_free_bytes: Refuse unless this much space is free there too.

    Raises:
        StorageError: If a file cannot be written there or less space is free than asked for.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    failed = f"cannot write into {folder}"
    kept = "nothing was written"
    if not existing.is_dir():
        raise StorageError(f"{failed}: {existing} is a file, not a folder; {_CHOOSE_FOLDER}.")
    probe = existing / f".write-check{_TEMP_MARK}{os.getpid()}"
    try:
        with open(probe, "wb") as file:
            file.write(b"\0")
            file.flush()
            os.fsync(file.fileno())
        free = shutil.disk_usage(existing).free
    except OSError as err:
        raise _storage_error(failed, existing, err, kept) from err
    finally:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
    if free < min_free_bytes:
        raise StorageError(
            f"{failed}: {_size(free)} free in {existing}, less than the {_size(min_free_bytes)} "
            f"needed; {kept}. Free space in {existing}, or {_CHOOSE_FOLDER}."
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints so that a crash or a full disk never leaves a truncated file.

    The checkpoint goes to a temporary file in the destination folder, is flushed to disk, and
    then replaces the old file with one atomic rename. A process killed at any moment leaves
    either the previous checkpoint or the new one, never a partial file; the temporary file it
    may leave is deleted by the next save into that folder. (Lightning's own writer stages
    through the system temp folder and falls back to a non-atomic copy across devices.) A save
    the disk refuses raises :class:`StorageError` and leaves the previous checkpoint as it was.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically (local paths only).

        Raises:
            StorageError: If the disk refused the save.
        """
        _write_atomically(Path(path), lambda file: torch.save(checkpoint, file), "checkpoint")
