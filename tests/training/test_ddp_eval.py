"""DDP evaluation is exact over the split: no sample counted twice, whatever the remainder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from padam_lightning.data import PADDING_INDEX, CIFARDataModule, EvalShardSampler
from padam_lightning.training.classifier import ImageClassifier

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_SIZE = 33  # odd: two processes get 17 and 16 + 1 padding
EVAL_BATCH = 16  # process 1's second batch is padding only

# Runs as its own script: Lightning's DDP launcher starts the second process by re-running it.
DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from padam_lightning.data import CIFARDataModule
from padam_lightning.training.classifier import ImageClassifier

torch.manual_seed(0)
model = ImageClassifier(arch="wrn10_1")
data = CIFARDataModule(dataset="synthetic", synthetic_test_size={size}, eval_batch_size={batch})
trainer = L.Trainer(
    accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_progress_bar=False,
    enable_model_summary=False, enable_checkpointing=False,
)
results = {{}}
results.update(trainer.validate(model, datamodule=data)[0])
results.update(trainer.test(model, datamodule=data)[0])
if trainer.is_global_zero:
    with open(sys.argv[1], "w") as file:
        json.dump(results, file)
"""


def test_eval_shards_cover_the_split_once_and_pad_with_a_marker() -> None:
    for size, replicas in ((33, 2), (10, 3), (7, 8), (12, 4)):
        shards = [list(EvalShardSampler(size, replicas, rank)) for rank in range(replicas)]
        assert len({len(shard) for shard in shards}) == 1  # the processes stay in step
        real = sorted(i for shard in shards for i in shard if i != PADDING_INDEX)
        assert real == list(range(size)), (size, replicas)


def test_padded_evaluation_positions_get_the_ignored_label() -> None:
    data = CIFARDataModule(dataset="synthetic", synthetic_test_size=5)
    images, labels = data.make_batch(torch.tensor([4, PADDING_INDEX, 0]), train=False)
    test = data.split("test")
    assert labels.tolist() == [int(test.labels[4]), -100, int(test.labels[0])]
    assert images.shape == (3, 3, 32, 32)


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)
@pytest.mark.slow  # two processes
def test_ddp_validation_and_test_metrics_equal_the_single_process_ones(tmp_path: Path) -> None:
    script = tmp_path / "ddp_eval.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(size=TEST_SIZE, batch=EVAL_BATCH)))
    output = tmp_path / "metrics.json"
    result = subprocess.run(
        [sys.executable, str(script), str(output)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = json.loads(output.read_text())

    # The reference: the same initial weights, every test image once, in one process.
    torch.manual_seed(0)
    model = ImageClassifier(arch="wrn10_1").eval()
    data = CIFARDataModule(dataset="synthetic", synthetic_test_size=TEST_SIZE)
    images, labels = data.make_batch(torch.arange(TEST_SIZE), train=False)
    with torch.no_grad():
        logits = model(images)
    losses = F.cross_entropy(logits, labels, reduction="none")
    errors = int((logits.argmax(1) != labels).sum())
    for stage in ("val", "test"):
        assert logged[f"{stage}/err"] == pytest.approx(errors / TEST_SIZE, abs=1e-7)
        assert logged[f"{stage}/loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    # Counting the first image twice (Lightning's padding) would give another loss.
    twice = (losses.sum() + losses[0]) / (TEST_SIZE + 1)
    assert abs(twice.item() - losses.mean().item()) > 1e-4
