"""Save what ``padam-fit predict`` computes: one file of predicted and true classes per process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

#: File name of the predictions in the run's log folder (``predictions-rank<R>.pt`` under DDP).
PREDICTIONS_FILE = "predictions.pt"


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of a ``predict`` run into its log folder when it ends.

    The file holds ``{"pred": int64 (N,), "label": int64 (N,), "err": float}``: the arg-max
    class and the true label of each test image this process predicted (in the split's stored
    order), and the top-1 error over them. Under DDP each process writes its own shard
    (``predictions-rank<R>.pt``); padding positions are left out.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any] | None,
    ) -> None:
        """Concatenate the batches' ``pred``/``label`` tensors and save them."""
        if not trainer.loggers or trainer.log_dir is None:
            return  # no run folder to write into
        batches = [batch for batch in predictions if isinstance(batch, dict)]
        if not batches:
            return
        pred = torch.cat([batch["pred"].cpu() for batch in batches])
        label = torch.cat([batch["label"].cpu() for batch in batches])
        err = float((pred != label).float().mean()) if label.numel() else float("nan")
        name = PREDICTIONS_FILE
        if trainer.world_size > 1:
            name = f"predictions-rank{trainer.global_rank}.pt"
        path = Path(trainer.log_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"pred": pred, "label": label, "err": err}, path)
        rank_zero_info(f"padam-fit: predictions of {pred.numel()} images saved to {path}")
