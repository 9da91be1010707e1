"""Index sampling: permutations as a pure function of (seed, epoch), and DDP sharding."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader

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


@pytest.mark.parametrize("shuffle", [False, True])  # Lightning passes False for custom samplers
def test_lightning_ddp_wrapper_shards_partition_each_epoch(shuffle: bool) -> None:
    sampler = EpochShuffleSampler(40, seed=3)
    shards = [
        DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=shuffle)
        for rank in range(2)
    ]
    seen_by_epoch = []
    for epoch in range(3):
        for shard in shards:
            shard.set_epoch(epoch)  # what Lightning calls; the wrapper forwards it to our sampler
        rank0, rank1 = list(shards[0]), list(shards[1])
        assert len(rank0) == len(rank1) == 20
        assert set(rank0).isdisjoint(rank1)
        assert sorted(rank0 + rank1) == list(range(40))
        if not shuffle:
            # Each rank takes every other element of the single-process permutation.
            assert rank0 == sampler.permutation(epoch)[0::2].tolist()
            assert rank1 == sampler.permutation(epoch)[1::2].tolist()
        seen_by_epoch.append(rank0)
    assert seen_by_epoch[0] != seen_by_epoch[1] != seen_by_epoch[2]


def test_ddp_ranks_see_the_same_augmentation_for_the_same_sample() -> None:
    data = CIFARDataModule("synthetic", synthetic_train_size=64, synthetic_test_size=8, seed=5)
    sampler = EpochShuffleSampler(64, seed=5)
    wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=1, shuffle=False)
    wrapper.set_epoch(4)
    shard = torch.tensor(list(wrapper))
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
