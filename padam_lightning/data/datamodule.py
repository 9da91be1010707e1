"""The CIFAR data module: whole splits in memory, index batches, augmentation on the device."""

import warnings
from collections.abc import Callable
from typing import Any, Final

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from padam_lightning.data.augment import CropSource, draw_augmentation, normalize
from padam_lightning.data.cifar_files import load_cifar_split
from padam_lightning.data.image_folder import class_names, load_image_folder_split
from padam_lightning.data.sampling import (
    PADDING_LABEL,
    EpochShuffleSampler,
    EvalShardSampler,
    IndexDataset,
    ResumableLoader,
    collate_indices,
    epoch_generator,
    resolve_seed,
)
from padam_lightning.data.splits import ImageSplit
from padam_lightning.data.synthetic import make_synthetic_splits
from padam_lightning.errors import UserError

#: The values ``dataset`` accepts.
DATASET_NAMES: Final = ("cifar10", "cifar100", "imagefolder", "synthetic")

Triple = tuple[float, float, float]
_EpochAugmentation = tuple[tuple[int, int, torch.device], torch.Tensor]

#: The paper's per-channel normalisation constants (mean, std) of [0, 1] pixels.
CIFAR10_MEAN_STD: Final[tuple[Triple, Triple]] = (
    (0.4914, 0.4822, 0.4465),
    (0.2023, 0.1994, 0.2010),
)
CIFAR100_MEAN_STD: Final[tuple[Triple, Triple]] = ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))

_SPLITS_FOR_STAGE: Final[dict[str | None, tuple[str, ...]]] = {
    "fit": ("train", "test"),
    "validate": ("test",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "test"),
}


class CIFARDataModule(L.LightningDataModule):
    """CIFAR-10/100 (or an image folder, or synthetic data) for the paper's experiments.

    The whole split is held as one uint8 tensor. The data loaders yield only batches of sample
    indices; :meth:`on_after_batch_transfer` (which Lightning calls once the indices are on the
    training device) gathers the images from a copy of the split kept on that device, and for
    training applies the paper's augmentation (random 32x32 crop of the image zero-padded by 4,
    random horizontal flip) to the whole batch, then normalises. (For speed the training copy is
    kept padded and mirrored, :class:`~padam_lightning.data.augment.CropSource`, so a batch's
    crops and flips are one row lookup; that takes 3.1 times the memory of the split, 480 MB for
    CIFAR-10.) The shuffle order and every
    sample's crop and flip are pure functions of (seed, epoch, sample index), so runs are
    reproducible across restarts and DDP process counts. Validation and test both iterate the
    test split in order, as the paper evaluates on the test split every epoch.

    Under DDP, training pads the epoch's order with its first samples so that every process
    takes the same number of steps (see :class:`~padam_lightning.data.EpochShuffleSampler`);
    evaluation pads with marked positions whose label is ``PADDING_LABEL`` (-100, which
    ``F.cross_entropy`` ignores and the classifier's metrics weigh 0), so ``val/*`` and ``test/*``
    are exact over the split for any number of processes
    (:class:`~padam_lightning.data.sampling.EvalShardSampler`).

    Batches come in the dtype of the trainer's precision: Lightning converts a batch to it
    before the transfer, when this one is still sample indices, so
    :meth:`on_after_batch_transfer` applies the precision plugin's ``convert_input`` to the
    images it builds (fp16 for ``16-true``, bf16 for ``bf16-true``, fp64 for ``64-true``;
    float32 under mixed precision, where autocast converts per operation).

    Every split is stored in an order that mixes the classes (CIFAR's files already are; an
    image folder's listing, read class by class, is shuffled once by a fixed permutation that
    does not depend on the seed), so any prefix a user selects, ``--trainer.limit_val_batches 2``
    say, covers the classes as the whole split does.

    Args:
        dataset: ``cifar10`` or ``cifar100`` (torchvision's files in ``data_dir``, downloaded if
            allowed), ``imagefolder`` (``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*``
            32x32 images, decoded once and cached in ``data_dir``, in a fixed shuffled order)
            or ``synthetic`` (generated
            CIFAR-shaped data with a learnable class signal; no files).
        data_dir: Folder holding the dataset files (or where to download them).
        batch_size: Training batch size (the paper uses 128).
        eval_batch_size: Validation and test batch size (the paper uses 100).
        download: Download CIFAR-10/100 into ``data_dir`` when the files are missing or corrupt.
        augment: Apply the random crop and flip to training batches.
        seed: Seed of the shuffle order and augmentation; None uses the seed set by
            ``seed_everything`` (``PL_GLOBAL_SEED``), or 0.
        synthetic_train_size: Number of training images of the ``synthetic`` dataset.
        synthetic_test_size: Number of test images of the ``synthetic`` dataset.
        synthetic_num_classes: Number of classes of the ``synthetic`` dataset.

    Raises:
        UserError: If ``dataset`` is unknown or a size is not positive.
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 100,
        download: bool = True,
        augment: bool = True,
        seed: int | None = None,
        synthetic_train_size: int = 2048,
        synthetic_test_size: int = 512,
        synthetic_num_classes: int = 10,
    ) -> None:
        super().__init__()
        if dataset not in DATASET_NAMES:
            raise UserError(
                f"Unknown dataset {dataset!r}. Valid datasets: {', '.join(DATASET_NAMES)}."
            )
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("synthetic_train_size", synthetic_train_size),
            ("synthetic_test_size", synthetic_test_size),
            ("synthetic_num_classes", synthetic_num_classes),
        ):
            if value < 1:
                raise UserError(f"data.{name} must be a positive integer, got {value}.")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.download = download
        self.augment = augment
        self.seed = seed
        self.synthetic_train_size = synthetic_train_size
        self.synthetic_test_size = synthetic_test_size
        self.synthetic_num_classes = synthetic_num_classes
        self._class_names: list[str] | None = None
        self._restored_seed: int | None = None
        self._splits: dict[str, ImageSplit] = {}  # on the CPU
        self._resident: dict[str, ImageSplit] = {}  # on the device of the latest batch
        self._crop_source: CropSource | None = None  # the training split, padded and mirrored
        # (seed, epoch, device) and that epoch's crop corners (CropSource.crop_starts).
        self._augmentation: _EpochAugmentation | None = None
        self._mean_std_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- what the dataset is -------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes; for ``imagefolder``, the class folders under ``data_dir/train``."""
        if self.dataset == "cifar10":
            return 10
        if self.dataset == "cifar100":
            return 100
        if self.dataset == "synthetic":
            return self.synthetic_num_classes
        if self._class_names is None:
            self._class_names = class_names(self.data_dir)
        return len(self._class_names)

    @property
    def mean(self) -> Triple:
        """Per-channel mean used for normalisation (CIFAR-10's except for CIFAR-100)."""
        return (CIFAR100_MEAN_STD if self.dataset == "cifar100" else CIFAR10_MEAN_STD)[0]

    @property
    def std(self) -> Triple:
        """Per-channel standard deviation used for normalisation."""
        return (CIFAR100_MEAN_STD if self.dataset == "cifar100" else CIFAR10_MEAN_STD)[1]

    @property
    def effective_seed(self) -> int:
        """The seed in use: restored from a checkpoint, else ``seed``, else ``PL_GLOBAL_SEED``."""
        if self._restored_seed is not None:
            return self._restored_seed
        return resolve_seed(self.seed)

    # -- loading -------------------------------------------------------------------------------

    def _load(self, split: str) -> ImageSplit:
        train = split == "train"
        if self.dataset == "synthetic":
            self._splits["train"], self._splits["test"] = make_synthetic_splits(
                self.synthetic_train_size, self.synthetic_test_size, self.synthetic_num_classes
            )
            return self._splits[split]
        if self.dataset == "imagefolder":
            return load_image_folder_split(self.data_dir, split)
        return load_cifar_split(self.dataset, self.data_dir, train=train, download=self.download)

    def split(self, name: str) -> ImageSplit:
        """Return the ``"train"`` or ``"test"`` split on the CPU, loading it on first use."""
        if name not in self._splits:
            self._splits[name] = self._load(name)
        return self._splits[name]

    def prepare_data(self) -> None:
        """Download CIFAR or decode and cache the image folder, once per node (on rank 0)."""
        if self.dataset in ("cifar10", "cifar100") and self.download:
            self.split("test")  # checks every file's MD5, downloading the archive if needed
        elif self.dataset == "imagefolder":
            self.split("train")  # writes the decoded-tensor caches the other ranks then read
            self.split("test")

    def setup(self, stage: str | None = None) -> None:
        """Load the splits that ``stage`` needs (fit: train and test; others: test)."""
        for name in _SPLITS_FOR_STAGE.get(stage, ("train", "test")):
            self.split(name)

    def teardown(self, stage: str | None = None) -> None:
        """Release the device copies of the splits; the CPU copies stay for the next stage."""
        self._resident.clear()
        self._crop_source = None
        self._augmentation = None
        self._mean_std_on.clear()

    # -- loaders of index batches --------------------------------------------------------------

    def train_dataloader(self) -> DataLoader[int]:
        """Batches of training-sample indices, reshuffled each epoch as a function of the seed.

        The loader is stateful (:class:`ResumableLoader`): a run resumed mid-epoch continues
        with the epoch's next batch.
        """
        loader = self._index_loader(
            "train",
            self.batch_size,
            lambda size, replicas, rank: EpochShuffleSampler(
                size, self.effective_seed, replicas, rank
            ),
            loader_class=ResumableLoader,
        )
        assert isinstance(loader, ResumableLoader)
        trainer = self.trainer
        if trainer is not None:
            loader.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return loader

    def _test_indices(self) -> DataLoader[int]:
        return self._index_loader("test", self.eval_batch_size, EvalShardSampler)

    def _index_loader(
        self,
        split: str,
        batch_size: int,
        sampler: Callable[[int, int, int], Sampler[int]],
        loader_class: type[DataLoader[int]] = DataLoader,
    ) -> DataLoader[int]:
        """Batches of ``split``'s sample indices, in the order of ``sampler(size, replicas, rank)``.

        Under DDP each process gets its shard (``trainer.world_size``, ``trainer.global_rank``).
        """
        num_samples = len(self.split(split))
        trainer = self.trainer
        num_replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return loader_class(
            IndexDataset(num_samples),
            batch_size=batch_size,
            sampler=sampler(num_samples, num_replicas, rank),
            collate_fn=collate_indices,
            num_workers=0,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader[int]:
        """Batches of test-sample indices in order (the paper validates on the test split)."""
        return self._test_indices()

    def test_dataloader(self) -> DataLoader[int]:
        """Batches of test-sample indices in order."""
        return self._test_indices()

    def predict_dataloader(self) -> DataLoader[int]:
        """Batches of test-sample indices in order."""
        return self._test_indices()

    # -- indices to images, on the device ------------------------------------------------------

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn a batch of indices (already on the device) into normalised images and labels.

        The images get the dtype of the trainer's precision (its plugin's ``convert_input``,
        which Lightning applied to the indices, before they were images).
        """
        trainer = self.trainer
        if trainer is None:
            return self.make_batch(batch, train=False)
        images, labels = self.make_batch(batch, train=trainer.training, epoch=trainer.current_epoch)
        return trainer.precision_plugin.convert_input(images), labels

    def make_batch(
        self, indices: torch.Tensor, train: bool, epoch: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, augment and normalise a batch, on the device ``indices`` live on.

        Args:
            indices: int64 sample indices of the batch. For evaluation, an index of
                ``PADDING_INDEX`` (-1) marks a padding position of a DDP shard.
            train: Take the samples from the training split and augment them (when ``augment``
                is on); otherwise take them from the test split as they are.
            epoch: The epoch whose crops and flips to use (training only).

        Returns:
            ``(images, labels)``: float32 ``N x 3 x 32 x 32`` normalised images and int64 labels;
            a padding position gets ``PADDING_LABEL`` (-100) and some sample's image.
        """
        device = indices.device
        split = self._resident_split("train" if train else "test", device)
        if train:
            labels = split.labels.index_select(0, indices)
        else:
            # Computed for every evaluation batch, not only padded ones: asking whether a batch
            # holds padding would read a value back from the device.
            counted = indices >= 0
            indices = indices.clamp(min=0)
            labels = split.labels.index_select(0, indices).masked_fill_(~counted, PADDING_LABEL)
        # index_select copies whole rows; plain indexing goes pixel by pixel (6x slower on CPU).
        if train and self.augment:
            source = self._train_crop_source(split)
            starts = self._epoch_crop_starts(epoch, source)
            images = source.crops(starts.index_select(0, indices))
        else:
            images = split.images.index_select(0, indices)
        mean, std = self._mean_std(device)
        return normalize(images, mean, std), labels

    def _resident_split(self, name: str, device: torch.device) -> ImageSplit:
        resident = self._resident.get(name)
        if resident is None or resident.device != device:
            # Moved once per device and kept there, so no batch copies images from the host.
            resident = self._resident[name] = self.split(name).to(device)
        return resident

    def _train_crop_source(self, resident: ImageSplit) -> CropSource:
        if self._crop_source is None or self._crop_source.device != resident.device:
            self._crop_source = CropSource(resident.images)  # built on the device, once
        return self._crop_source

    def _epoch_crop_starts(self, epoch: int, source: CropSource) -> torch.Tensor:
        key = (self.effective_seed, epoch, source.device)
        if self._augmentation is None or self._augmentation[0] != key:
            # Drawn for every sample at once and looked up by index: a sample's crop and flip
            # depend on (seed, epoch, index) only, not on its batch or the process that sees it.
            generator = epoch_generator(self.effective_seed, epoch, "augment")
            offsets, flips = draw_augmentation(source.num_images, generator)
            self._augmentation = (key, source.crop_starts(offsets, flips))
        return self._augmentation[1]

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._mean_std_on:
            self._mean_std_on[device] = (
                torch.tensor(self.mean, device=device),
                torch.tensor(self.std, device=device),
            )
        return self._mean_std_on[device]

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Save the seed in use, so a resumed run shuffles and augments as the original did.

        Also the number of processes the batches are dealt to (``world_size``): each takes
        ``batch_size`` images a step, so a global batch of ``batch_size * world_size``, and the
        shards of an epoch's order depend on it.
        """
        trainer = getattr(self, "trainer", None)
        return {"seed": self.effective_seed, "world_size": trainer.world_size if trainer else 1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed of the run being resumed (warning if ``seed`` asks for another)."""
        restored = int(state_dict["seed"])
        if self.seed is not None and self.seed != restored:
            warnings.warn(
                f"Resuming a run that used data seed {restored}; it is kept (data.seed={self.seed}"
                " is ignored) so the shuffle order and augmentation continue unchanged.",
                stacklevel=2,
            )
        self._restored_seed = restored
