"""CIFAR data: the Lightning data module, its pure augmentation ops and its split loaders."""

from padam_lightning.data.augment import (
    CROP_PADDING,
    augment,
    draw_augmentation,
    normalize,
)
from padam_lightning.data.datamodule import (
    CIFAR10_MEAN_STD,
    CIFAR100_MEAN_STD,
    DATASET_NAMES,
    CIFARDataModule,
)
from padam_lightning.data.sampling import (
    PADDING_INDEX,
    PADDING_LABEL,
    EpochShuffleSampler,
    EvalShardSampler,
    derive_seed,
)
from padam_lightning.data.splits import ImageSplit

__all__ = [
    "CIFAR10_MEAN_STD",
    "CIFAR100_MEAN_STD",
    "CROP_PADDING",
    "DATASET_NAMES",
    "PADDING_INDEX",
    "PADDING_LABEL",
    "CIFARDataModule",
    "EpochShuffleSampler",
    "EvalShardSampler",
    "ImageSplit",
    "augment",
    "derive_seed",
    "draw_augmentation",
    "normalize",
]
