"""The released code's end-of-epoch pass (TrainPass) and the released learning-rate timing."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.loggers import CSVLogger

from padam_lightning.cli import main
from padam_lightning.data import CIFARDataModule
from padam_lightning.data.augment import augment, draw_augmentation
from padam_lightning.data.sampling import EpochShuffleSampler, derive_seed, epoch_generator
from padam_lightning.errors import UserError
from padam_lightning.experiments.run_logs import read_scalars
from padam_lightning.models import build_model
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.train_pass import TrainPass, pass_batches

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
RELEASED_METRICS = str(CONFIGS / "experiments" / "released_metrics.yaml")
MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).reshape(1, 3, 1, 1)
STD = torch.tensor((0.2023, 0.1994, 0.2010)).reshape(1, 3, 1, 1)


class _Snapshot(L.Callback):
    """Copies the network's state at the end of each epoch's last training batch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.is_last_batch:
            self.states.append(copy.deepcopy(pl_module.net.state_dict()))


def _data(**overrides: Any) -> CIFARDataModule:
    settings: dict[str, Any] = {
        "dataset": "synthetic",
        "batch_size": 16,
        "eval_batch_size": 16,
        "synthetic_train_size": 40,  # batches of 16, 16 and 8: the last one is smaller
        "synthetic_test_size": 16,
        "seed": 3,
    }
    return CIFARDataModule(**{**settings, **overrides})


def _fit(
    tmp_path: Path, callbacks: list[L.Callback], epochs: int = 2, precision: str = "32-true"
) -> ImageClassifier:
    L.seed_everything(0, verbose=False)
    model = ImageClassifier(arch="wrn10_1", channels_last=False, compile=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        precision=precision,  # type: ignore[arg-type]
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, _data())
    return model


def _logged(tmp_path: Path, tag: str) -> list[float]:
    """The per-epoch values of ``tag`` in the CSV log, in order."""
    path = next(tmp_path.glob("run/version_*/metrics.csv"))
    with path.open() as file:
        return [float(row[tag]) for row in csv.DictReader(file) if row.get(tag)]


def _hand_pass(
    state: dict[str, torch.Tensor], data: CIFARDataModule, seed: int, epoch: int
) -> tuple[float, float, dict[str, torch.Tensor]]:
    """The released pass, written out: fresh shuffle and crops, batches of 16, train mode.

    Returns the mean of the batch-mean losses, the error, and the network's state afterwards.
    """
    split = data.split("train")
    n = len(split)
    order = torch.randperm(
        n, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, "train_pass/shuffle"))
    )
    draws = torch.Generator().manual_seed(derive_seed(seed, epoch, "train_pass/augment"))
    offsets = torch.randint(0, 9, (n, 2), generator=draws)
    flips = torch.randint(0, 2, (n,), generator=draws)
    net = build_model("wrn10_1")
    net.load_state_dict(state)
    net.train()
    losses, wrong = [], 0
    with torch.no_grad():
        for batch in order.split(16):
            crops = []
            for i in batch.tolist():  # one image at a time, as torchvision's transforms do
                padded = F.pad(split.images[i], (4, 4, 4, 4))
                row, col = offsets[i].tolist()
                crop = padded[:, row : row + 32, col : col + 32]
                crops.append(crop.flip(2) if flips[i] else crop)
            images = (torch.stack(crops).float() / 255 - MEAN) / STD
            logits = net(images)
            labels = split.labels[batch]
            losses.append(F.cross_entropy(logits, labels).item())
            wrong += int((logits.argmax(1) != labels).sum())
    return sum(losses) / len(losses), wrong / n, net.state_dict()


def test_logged_pass_equals_a_hand_computed_pass(tmp_path: Path) -> None:
    before, after = _Snapshot(), _Snapshot()
    _fit(tmp_path, [before, TrainPass(), after])
    data = _data()
    data.setup("fit")
    logged_loss, logged_err = (
        _logged(tmp_path, "train_pass/loss"),
        _logged(tmp_path, "train_pass/err"),
    )
    assert len(logged_loss) == len(logged_err) == 2
    for epoch in range(2):
        loss, err, state = _hand_pass(before.states[epoch], data, seed=3, epoch=epoch)
        assert logged_loss[epoch] == pytest.approx(loss, rel=1e-5)
        assert logged_err[epoch] == pytest.approx(err, abs=1e-6)  # logged as float32
        # The pass moved the batch-norm running statistics (before validation), as by hand.
        for name, value in state.items():
            torch.testing.assert_close(after.states[epoch][name], value, msg=name)
        moved = before.states[epoch]["bn1.running_mean"] != after.states[epoch]["bn1.running_mean"]
        assert moved.any()
    # The released loss is the mean of batch means: with batches of 16, 16, 8 it differs from
    # the per-sample mean, so this also pins down which mean is logged.
    assert _logged(tmp_path, "train/loss") != pytest.approx(logged_loss, rel=1e-3)


def test_the_pass_leaves_training_itself_unchanged(tmp_path: Path) -> None:
    # Same seed with and without the pass: identical weights and training curve (the pass draws
    # from its own streams and forks the RNG); only the batch-norm running statistics differ.
    with_pass = _fit(tmp_path / "with", [TrainPass()])
    without = _fit(tmp_path / "without", [])
    buffers = {name for name, _ in with_pass.named_buffers()}
    for name, value in without.state_dict().items():
        if name in buffers:
            continue
        assert torch.equal(with_pass.state_dict()[name], value), name
    key = "net.bn1.running_mean"
    assert not torch.equal(with_pass.state_dict()[key], without.state_dict()[key]), (
        "the pass must update the running statistics"
    )
    assert _logged(tmp_path / "with", "train/loss") == _logged(tmp_path / "without", "train/loss")


def test_a_resumed_run_logs_the_same_pass_values(tiny_fit_args: list[str], tmp_path: Path) -> None:
    def run(name: str, *extra: str) -> None:
        main(
            [
                *tiny_fit_args,
                "--config",
                RELEASED_METRICS,
                "--trainer.logger.init_args.name",
                name,
                *extra,
            ]
        )

    run("straight")
    run("resumed", "--trainer.max_epochs", "1")
    run("resumed", "--ckpt_path", "last")
    straight = read_scalars(tmp_path / "logs" / "straight" / "version_0")
    resumed = read_scalars(tmp_path / "logs" / "resumed" / "version_0")
    for tag in ("train_pass/loss", "train_pass/err", "val/loss", "train/loss"):
        assert list(straight[tag]) == [2, 5], tag  # each 3-step epoch's last step
        assert resumed[tag] == straight[tag], tag


def test_the_pass_feeds_the_network_in_the_precision_s_dtype(tmp_path: Path) -> None:
    # Under bf16-true the weights are bfloat16: float32 inputs would fail in the first conv.
    _fit(tmp_path, [TrainPass()], epochs=1, precision="bf16-true")
    loss, err = _logged(tmp_path, "train_pass/loss"), _logged(tmp_path, "train_pass/err")
    assert len(loss) == 1 and 0 < loss[0] < 10 and 0 <= err[0] <= 1


def test_train_pass_refuses_other_data_and_bad_batch_sizes() -> None:
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        TrainPass(batch_size=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(UserError, match="needs the CIFARDataModule"):
        TrainPass().setup(trainer, ImageClassifier(arch="wrn10_1"), "fit")


@pytest.mark.parametrize(("num_samples", "replicas"), [(40, 1), (17, 2), (16, 2), (10, 3)])
def test_ddp_shards_form_the_global_batches(num_samples: int, replicas: int) -> None:
    # Batch k of all processes together is batch k of one process with the global batch size,
    # and every sample appears exactly once among the real (unpadded) entries.
    shards = [pass_batches(num_samples, 4, 5, 2, replicas, rank) for rank in range(replicas)]
    assert len({len(shard) for shard in shards}) == 1
    single = pass_batches(num_samples, 4 * replicas, 5, 2)
    seen: list[int] = []
    for k, (global_batch, _) in enumerate(single):
        parts = [shard[k][0][shard[k][1]] for shard in shards]
        assert sorted(torch.cat(parts).tolist()) == sorted(global_batch.tolist())
        seen += torch.cat(parts).tolist()
    assert sorted(seen) == list(range(num_samples))
    # A fresh draw: another epoch or seed gives another order.
    assert not torch.equal(single[0][0], pass_batches(num_samples, 4 * replicas, 5, 3)[0][0])


def test_a_shard_is_the_pass_permutation_padded_with_its_first_samples_and_dealt_out() -> None:
    # 5 samples on 2 processes: the order o0..o4 is padded with o0 and dealt out alternately,
    # so rank 0 gets o0 o2 o4 and rank 1 gets o1 o3 and the padding o0, masked out.
    order = torch.randperm(5, generator=epoch_generator(7, 1, "train_pass/shuffle")).tolist()
    (rank0, real0), (rank1_first, real1_first), (rank1_last, real1_last) = [
        *pass_batches(5, 3, seed=7, epoch=1, num_replicas=2, rank=0),
        *pass_batches(5, 2, seed=7, epoch=1, num_replicas=2, rank=1),
    ]
    assert rank0.tolist() == [order[0], order[2], order[4]] and real0.all()
    assert rank1_first.tolist() == [order[1], order[3]] and real1_first.all()
    assert rank1_last.tolist() == [order[0]] and real1_last.tolist() == [False]
    # The training epoch's sampler deals its own permutation out the same way.
    sampler = EpochShuffleSampler(5, seed=7, num_replicas=2, rank=1)
    epoch_order = sampler.permutation(0).tolist()
    assert list(sampler) == [epoch_order[1], epoch_order[3], epoch_order[0]]


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)
@pytest.mark.slow  # two padam-fit processes
def test_ddp_pass_values_are_reduced_over_processes(tmp_path: Path) -> None:
    # 17 samples on 2 processes: each gets 9 (one padded), in batches of 8 and 1.
    args = [
        "fit",
        "--config", str(CONFIGS / "wrn.yaml"),
        "--config", str(CONFIGS / "tiny.yaml"),
        "--config", RELEASED_METRICS,
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.name", "ddp",
        "--trainer.max_epochs", "1",
        "--trainer.strategy", "ddp",
        "--trainer.devices", "2",
        "--data.synthetic_train_size", "17",
        "--data.batch_size", "8",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "padam_lightning.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp" / "version_0"
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    net = build_model("wrn10_1")
    weights = checkpoint["state_dict"].items()
    net.load_state_dict({k.removeprefix("net."): v for k, v in weights if k.startswith("net.")})
    net.train()  # in train mode the outputs do not depend on the running statistics
    split = _data(synthetic_train_size=17).split("train")
    offsets, flips = draw_augmentation(17, epoch_generator(0, 0, "train_pass/augment"))
    shards = [pass_batches(17, 8, 0, 0, 2, rank) for rank in range(2)]
    batch_losses: list[tuple[float, int]] = []
    wrong = 0
    with torch.no_grad():
        for k in range(len(shards[0])):
            total, count = 0.0, 0
            for shard in shards:  # each process normalises with its own batch's statistics
                indices, real = shard[k]
                crops = augment(split.images[indices], offsets[indices], flips[indices])
                logits = net((crops.float() / 255 - MEAN) / STD)
                labels = split.labels[indices]
                total += float(F.cross_entropy(logits, labels, reduction="none")[real].sum())
                count += int(real.sum())
                wrong += int((logits.argmax(1) != labels)[real].sum())
            batch_losses.append((total, count))
    expected_loss = sum(t / c for t, c in batch_losses) / len(batch_losses)
    logged = read_scalars(run_dir)
    (loss,) = logged["train_pass/loss"].values()  # one epoch: one point, at its last step
    (err,) = logged["train_pass/err"].values()
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    assert err == pytest.approx(wrong / 17, abs=1e-6)


# -- the learning-rate timing of the released loop ------------------------------------------------


def _released_lrs(milestones: list[int], epochs: int) -> list[float]:
    """The lr of each epoch of the released loop: MultiStepLR stepped at the start of the epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    lrs = []
    with pytest.warns(UserWarning, match="before `optimizer.step"):
        for _ in range(1, epochs + 1):
            scheduler.step()  # the released loop's first statement of each epoch
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
    return lrs


def _lightning_lrs(config: Path, epochs: int) -> list[float]:
    """The lr of each epoch under padam-fit: the configured MultiStepLR stepped at epoch ends."""
    init_args = yaml.safe_load(config.read_text())["model"]["scheduler"]["init_args"]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, **init_args)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()  # Lightning: interval "epoch", after the epoch's last batch
    return lrs


def test_released_schedule_config_matches_the_released_loop_under_current_torch() -> None:
    released = _released_lrs([100, 150], 200)
    assert _lightning_lrs(CONFIGS / "experiments" / "released_schedule.yaml", 200) == released
    # The released loop decays one epoch before padam-fit's default timing does.
    default = _lightning_lrs(CONFIGS / "wrn.yaml", 200)
    assert [i for i in range(200) if released[i] != default[i]] == [99, 149]
    assert released[98:100] == pytest.approx([0.1, 0.01]) and default[99] == pytest.approx(0.1)


def test_default_schedule_matches_the_released_loop_under_torch_before_1_1() -> None:
    # Before 1.1, the scheduler counted no step when built, so the released loop's step() at the
    # start of epoch e (from 1) selected epoch index e - 1: lr = 0.1 * 0.1 ** #(milestones <= e-1).
    old_torch = [0.1 * 0.1 ** sum(m <= e - 1 for m in (100, 150)) for e in range(1, 201)]
    assert _lightning_lrs(CONFIGS / "wrn.yaml", 200) == pytest.approx(old_torch)
