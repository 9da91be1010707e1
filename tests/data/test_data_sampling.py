"""Index sampling: permutations as a pure function of (seed, epoch), and DDP sharding."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, RandomSampler

from padam_lightning.data import CIFARDataModule, EpochShuffleSampler, derive_seed
from padam_lightning.data.sampling import IndexDataset, collate_indices, resolve_seed


def test_derive_seed_is_pinned() -> None:
    # Checkpoints resumed by a later version must see the same data order: pin the function.
    assert derive_seed(0, 0, "shuffle") == 4_733_581_995_344_898_276
    assert 0 <= derive_seed(2**40, 10**6, "augment") < 2**63


def test_derive_seed_separates_seed_epoch_and_stream() -> None:
    seeds = {derive_seed(s, e, stream) for s in range(4) for e in range(4) for stream in "ab"}
    assert len(seeds) == 32  # no collisions such as (0, 1) == (1, 0)


def test_sampler_permutation_is_the_documented_randperm() -> None:
    sampler = EpochShuffleSampler(50, seed=7)
    sampler.set_epoch(3)
    generator = torch.Generator().manual_seed(derive_seed(7, 3, "shuffle"))
    assert list(sampler) == torch.randperm(50, generator=generator).tolist()


def test_sampler_depends_only_on_seed_and_epoch() -> None:
    first, second = EpochShuffleSampler(100, seed=1), EpochShuffleSampler(100, seed=1)
    first.set_epoch(2)
    list(second)  # iterating other epochs first leaves no trace
    second.set_epoch(5)
    list(second)
    second.set_epoch(2)
    assert list(first) == list(second)
    assert sorted(first) == list(range(100))
    second.set_epoch(3)
    assert list(first) != list(second)
    assert list(EpochShuffleSampler(100, seed=2)) != list(EpochShuffleSampler(100, seed=1))
    assert len(first) == 100


def test_ddp_shards_partition_each_epoch_like_the_single_process_order() -> None:
    single = EpochShuffleSampler(40, seed=3)
    shards = [EpochShuffleSampler(40, seed=3, num_replicas=2, rank=rank) for rank in range(2)]
    seen_by_epoch = []
    for epoch in range(3):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)  # what Lightning calls every epoch
        rank0, rank1 = list(shards[0]), list(shards[1])
        assert len(rank0) == len(rank1) == len(shards[0]) == 20
        assert sorted(rank0 + rank1) == list(range(40))
        # Batch k of the two processes together is batch k of the single-process run.
        order = list(single)
        for k in range(0, 20, 4):
            assert sorted(rank0[k : k + 4] + rank1[k : k + 4]) == sorted(order[2 * k : 2 * k + 8])
        seen_by_epoch.append(rank0)
    assert seen_by_epoch[0] != seen_by_epoch[1] != seen_by_epoch[2]


def test_ddp_shards_pad_an_uneven_split_like_distributed_sampler() -> None:
    shards = [list(EpochShuffleSampler(5, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    order = EpochShuffleSampler(5, seed=0).permutation(0).tolist()
    assert shards[0] == [order[0], order[2], order[4]]
    assert shards[1] == [order[1], order[3], order[0]]


def test_lightning_keeps_the_sampler_under_ddp() -> None:
    # Lightning replaces samplers that are not DistributedSamplers under DDP (reshuffling with its
    # own seed); the sampler must reach the loop as it is, so the data order stays (seed, epoch)'s.
    # The loader preparation is the one Trainer.fit runs; no processes are started for it.
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False
    )
    for sampler, kept in (
        (EpochShuffleSampler(10, seed=3), True),
        (RandomSampler(range(10)), False),
    ):
        loader = DataLoader(IndexDataset(10), 4, sampler=sampler, collate_fn=collate_indices)
        prepared: Any = trainer._data_connector._prepare_dataloader(
            loader, shuffle=True, mode=RunningStage.TRAINING
        )
        assert (prepared.sampler is sampler) is kept  # the control shows the check can fail


def test_ddp_ranks_see_the_same_augmentation_for_the_same_sample() -> None:
    data = CIFARDataModule("synthetic", synthetic_train_size=64, synthetic_test_size=8, seed=5)
    sampler = EpochShuffleSampler(64, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(4)
    shard = torch.tensor(list(sampler))
    full = sampler.permutation(4)
    sharded_images, sharded_labels = data.make_batch(shard, train=True, epoch=4)
    full_images, full_labels = data.make_batch(full, train=True, epoch=4)
    position = {index: i for i, index in enumerate(full.tolist())}
    rows = torch.tensor([position[i] for i in shard.tolist()])
    assert torch.equal(sharded_images, full_images[rows])
    assert torch.equal(sharded_labels, full_labels[rows])


def test_index_loader_yields_long_tensors_without_dropping_the_last_batch() -> None:
    loader = DataLoader(IndexDataset(10), batch_size=4, collate_fn=collate_indices)
    batches = list(loader)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b.dtype == torch.int64 for b in batches)


def test_resolve_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert resolve_seed(None) == 0
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    assert resolve_seed(None) == 42
    assert resolve_seed(3) == 3
