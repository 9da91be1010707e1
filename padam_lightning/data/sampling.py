"""Index batches and per-epoch randomness that depends only on (seed, epoch).

The data loaders of :class:`~padam_lightning.data.CIFARDataModule` yield batches of sample indices,
not images: the images stay in one tensor (on the training device) and are gathered later. Every
random choice of an epoch (the shuffle order, each sample's crop and flip) is a pure function of
the seed and the epoch number, so a run resumed at an epoch boundary, or sharded over processes,
sees exactly the data an uninterrupted single-process run would.
"""

import hashlib
import math
import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

#: The index an evaluation shard is padded with: no sample, counted nowhere.
PADDING_INDEX = -1

#: The label a padded evaluation sample gets: ``F.cross_entropy``'s default ``ignore_index``.
PADDING_LABEL = -100


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """Mix a seed, an epoch and a stream name into a 63-bit generator seed.

    A hash rather than ``seed + epoch`` so that (seed 0, epoch 1) and (seed 1, epoch 0) differ, and
    so that the shuffle and the augmentation of an epoch draw from unrelated streams. It is stable
    across processes and Python versions (unlike the salted built-in ``hash``).

    Args:
        seed: The run's seed.
        epoch: The epoch number, from 0.
        stream: What the randomness is for, e.g. ``"shuffle"`` or ``"augment"``.

    Returns:
        An integer in ``[0, 2**63)`` for ``torch.Generator.manual_seed``.
    """
    digest = hashlib.blake2b(f"{stream}:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def resolve_seed(seed: int | None) -> int:
    """Return ``seed`` if given, else the seed ``lightning.seed_everything`` exported, else 0."""
    if seed is not None:
        return seed
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """Return a fresh CPU generator seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, stream))


class _ShardSampler(DistributedSampler[int]):
    """A ``DistributedSampler`` set up without a process group: one shard of ``num_samples``.

    ``DistributedSampler.__init__`` is not called (it needs an initialised process group or a
    dataset); this sets the attributes its methods and Lightning read.
    """

    def __init__(
        self, num_samples: int, num_replicas: int, rank: int, seed: int, shuffle: bool
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_samples_total = num_samples
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.drop_last = False
        self.num_samples = math.ceil(num_samples / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __len__(self) -> int:
        return self.num_samples


class EpochShuffleSampler(_ShardSampler):
    """Yield a permutation of ``range(num_samples)`` that is a pure function of (seed, epoch).

    Under DDP each process takes every ``num_replicas``-th element of that permutation, starting
    at its rank, so the processes' batches ``k`` together hold exactly the samples of batch ``k`` of
    a single-process run with the same global batch size. It subclasses ``DistributedSampler`` so
    that Lightning uses it as it is (Lightning otherwise wraps custom samplers in a sampler that
    reshuffles with its own seed) and calls :meth:`set_epoch` on it every epoch. As in
    ``DistributedSampler`` without ``drop_last``, the permutation is padded with its own first
    elements to a multiple of ``num_replicas``: when ``num_replicas`` does not divide the split,
    the first ``total_size - num_samples`` samples of the epoch's order are trained on twice in
    that epoch (once on the process they belong to, once more as padding on the last
    processes) and count twice in ``train/loss`` and ``train/err``; every process then takes the
    same number of steps, which DDP's gradient all-reduce needs. (Training on a duplicate is
    harmless; evaluation, which must be exact, pads differently: :class:`EvalShardSampler`.)

    Args:
        num_samples: Size of the split.
        seed: The run's seed.
        num_replicas: Number of processes (1 without DDP).
        rank: This process's rank among them.
    """

    def __init__(self, num_samples: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(num_samples, num_replicas, rank, seed=seed, shuffle=True)
        #: ``(epoch, samples)``: the next pass over ``epoch`` leaves out its first ``samples``.
        self.resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields."""
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """Return the int64 permutation of ``epoch`` (all processes' samples)."""
        generator = epoch_generator(self.seed, epoch, "shuffle")
        return torch.randperm(self.num_samples_total, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        if self.total_size > len(order):
            order = torch.cat([order, order[: self.total_size - len(order)]])
        shard = order[self.rank : self.total_size : self.num_replicas]
        resume_at, self.resume_at = self.resume_at, None
        if resume_at is not None and resume_at[0] == self.epoch:
            shard = shard[resume_at[1] :]
        return iter(shard.tolist())


class ResumableLoader(DataLoader[int]):
    """A training ``DataLoader`` that saves where its epoch stands, for an exact mid-epoch resume.

    Lightning saves the ``state_dict`` of a stateful training loader with the fit loop's state in
    every checkpoint and hands it back to ``load_state_dict`` when it resumes mid-epoch. The state
    is the epoch and the number of batches the training loop has completed in it (read from
    ``progress``: the loader itself is one batch ahead, because Lightning prefetches one), so
    the resumed epoch goes on with exactly the batches it had not trained on; the epoch's order
    is a pure function of (seed, epoch), see :class:`EpochShuffleSampler`.
    """

    #: Returns the number of batches the training loop has completed in the current epoch.
    progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": E, "batches": B}``: B batches of epoch E are done."""
        sampler = self.sampler
        assert isinstance(sampler, EpochShuffleSampler)
        return {"epoch": sampler.epoch, "batches": self.progress() if self.progress else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Leave out the done batches of the saved epoch in its next pass."""
        sampler = self.sampler
        assert isinstance(sampler, EpochShuffleSampler) and self.batch_size is not None
        sampler.resume_at = (state_dict["epoch"], state_dict["batches"] * self.batch_size)


class EvalShardSampler(_ShardSampler):
    """Deal the split out to processes in order, padding the shorter shards with a marker.

    Process ``rank`` gets samples ``rank, rank + num_replicas, ...`` (as Lightning's own
    ``DistributedSampler(shuffle=False)`` would), and every shard is padded to the same length
    with :data:`PADDING_INDEX`, not with real samples: the data module turns a padded position
    into a label of :data:`PADDING_LABEL`, which the metrics give weight 0, so validation and test
    metrics are exact over the split for any number of processes and any split size. (Lightning's
    sampler pads with the first samples again, which then count twice.) Equal shard lengths keep
    the processes in step. Subclassing ``DistributedSampler`` makes Lightning use it as it is.

    Args:
        num_samples: Size of the split.
        num_replicas: Number of processes (1 without DDP).
        rank: This process's rank among them.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(num_samples, num_replicas, rank, seed=0, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        shard = list(range(self.rank, self.num_samples_total, self.num_replicas))
        return iter(shard + [PADDING_INDEX] * (self.num_samples - len(shard)))


class IndexDataset(Dataset[int]):
    """A map-style dataset whose item ``i`` is ``i``: the loader batches indices, nothing else.

    Args:
        num_samples: Size of the split.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> int:
        return index

    def __getitems__(self, indices: list[int]) -> list[int]:
        # The DataLoader fetches a whole batch through this in one call instead of item by item.
        return indices


def collate_indices(indices: list[int]) -> torch.Tensor:
    """Turn a list of sample indices into an int64 tensor (the loader's ``collate_fn``)."""
    return torch.tensor(indices, dtype=torch.long)
