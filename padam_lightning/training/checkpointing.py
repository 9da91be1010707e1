"""Checkpoint files that survive crashes, and a marker for runs that finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from padam_lightning.run_layout import FINISHED_FILE, LAST_CHECKPOINT

#: Temporary files are named ``.<target>.tmp-<pid>`` beside their target.
_TEMP_MARK = ".tmp-"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


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
        if pid.isdigit() and int(pid) != os.getpid() and not _process_is_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints so that a crash during a save never leaves a truncated file.

    The checkpoint goes to a temporary file in the destination folder, is flushed to disk, and
    then replaces the old file with one atomic rename. A process killed at any moment leaves
    either the previous checkpoint or the new one, never a partial file; the temporary file it
    may leave is deleted by the next save into that folder. (Lightning's own writer stages
    through the system temp folder and falls back to a non-atomic copy across devices.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically (local paths only)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target.parent)
        tmp = target.with_name(f".{target.name}{_TEMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        # Make the rename itself durable.
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class LastCheckpoint(ModelCheckpoint):
    """Save ``checkpoints/last.ckpt`` in the run folder at the end of every training epoch.

    A separate callback from the best-by-``val/err`` one because Lightning's ``save_last`` only
    refreshes ``last.ckpt`` in epochs where a top-k checkpoint was written. Saving at the end of the
    training epoch (after validation) means a resumed run starts cleanly at the next epoch.
    """

    def __init__(self) -> None:
        super().__init__(
            filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )


class RunSummary(L.Callback):
    """Write ``finished.json`` into the run folder when a fit ends normally.

    Sweeps use the file to tell finished runs (skipped) from interrupted ones (resumed).
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the final epoch, step and metrics (process 0 writes)."""
        if not trainer.loggers:
            return  # no run folder: without a logger log_dir is merely the working directory
        # Every process must ask for log_dir: under DDP it is a collective broadcast.
        log_dir = trainer.log_dir
        if trainer.interrupted or not trainer.is_global_zero or log_dir is None:
            return
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1
        }
        summary = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "max_epochs": trainer.max_epochs,
            "metrics": metrics,
        }
        text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
        write_text_atomically(Path(log_dir) / FINISHED_FILE, text)
