"""CIFARDataModule on synthetic data: arguments, loaders, batches, determinism, Lightning wiring."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from padam_lightning.data import (
    CIFAR10_MEAN_STD,
    CIFAR100_MEAN_STD,
    DATASET_NAMES,
    CIFARDataModule,
    EpochShuffleSampler,
    ImageSplit,
    normalize,
)
from padam_lightning.data.augment import draw_augmentation
from padam_lightning.data.sampling import epoch_generator
from padam_lightning.errors import DataError, UserError


def synthetic(**overrides: object) -> CIFARDataModule:
    arguments: dict[str, object] = {
        "dataset": "synthetic",
        "synthetic_train_size": 200,
        "synthetic_test_size": 50,
        "batch_size": 32,
        "eval_batch_size": 20,
        "seed": 11,
    }
    arguments.update(overrides)
    return CIFARDataModule(**arguments)  # type: ignore[arg-type]


# -- arguments ---------------------------------------------------------------------------------


def test_unknown_dataset_is_refused_in_init_with_the_valid_names() -> None:
    with pytest.raises(UserError) as raised:
        CIFARDataModule(dataset="mnist")
    assert "'mnist'" in str(raised.value)
    for name in DATASET_NAMES:
        assert name in str(raised.value)


@pytest.mark.parametrize("argument", ["batch_size", "eval_batch_size", "synthetic_num_classes"])
def test_sizes_must_be_positive(argument: str) -> None:
    with pytest.raises(UserError, match=f"data.{argument}"):
        CIFARDataModule(dataset="synthetic", **{argument: 0})  # type: ignore[arg-type]


def test_class_counts_and_normalisation_constants(tmp_path) -> None:
    assert CIFARDataModule("cifar10", data_dir=str(tmp_path)).num_classes == 10
    assert CIFARDataModule("cifar100", data_dir=str(tmp_path)).num_classes == 100
    assert synthetic(synthetic_num_classes=7).num_classes == 7
    assert CIFARDataModule("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert CIFARDataModule("cifar10").std == (0.2023, 0.1994, 0.2010)
    assert CIFARDataModule("cifar100").mean == (0.507, 0.487, 0.441)
    assert CIFARDataModule("cifar100").std == (0.267, 0.256, 0.276)
    assert (synthetic().mean, synthetic().std) == CIFAR10_MEAN_STD
    assert CIFAR100_MEAN_STD != CIFAR10_MEAN_STD


def test_imagefolder_class_count_needs_the_folder(tmp_path) -> None:
    data = CIFARDataModule("imagefolder", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="nowhere"):
        _ = data.num_classes
    for name in ("b_cat", "a_dog", "c_eel"):
        (tmp_path / "train" / name).mkdir(parents=True)
    assert CIFARDataModule("imagefolder", data_dir=str(tmp_path)).num_classes == 3


# -- synthetic data ----------------------------------------------------------------------------


def test_synthetic_splits_are_fixed_and_balanced() -> None:
    first, second = synthetic(), synthetic(seed=99, synthetic_test_size=10)
    train = first.split("train")
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels, minlength=10).tolist() == [20] * 10
    # The data does not depend on the run's seed or on the other split's size.
    assert torch.equal(second.split("train").images, train.images)
    assert len(second.split("test")) == 10 and len(first.split("test")) == 50


def test_synthetic_data_is_learnable_by_a_linear_probe() -> None:
    data = synthetic(synthetic_train_size=1000, synthetic_test_size=500)
    features = {}
    for name in ("train", "test"):
        split = data.split(name)
        # 4x4 average pooling keeps the coarse class pattern and averages the pixel noise away.
        pooled = nn.functional.avg_pool2d(split.images.float() / 255, 4).flatten(1)
        features[name] = (torch.cat([pooled, torch.ones(len(split), 1)], 1), split.labels)
    x, y = features["train"]
    weights = torch.linalg.lstsq(x, nn.functional.one_hot(y, 10).float()).solution
    x_test, y_test = features["test"]
    accuracy = ((x_test @ weights).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9  # chance is 0.1


# -- loaders of index batches ------------------------------------------------------------------


def test_loaders_yield_index_batches() -> None:
    data = synthetic()
    data.setup("fit")
    train = list(data.train_dataloader())
    assert [len(batch) for batch in train] == [32] * 6 + [8]  # no drop_last
    assert all(batch.dtype == torch.int64 for batch in train)
    assert sorted(torch.cat(train).tolist()) == list(range(200))
    for loader in (data.val_dataloader(), data.test_dataloader(), data.predict_dataloader()):
        batches = list(loader)
        assert [len(batch) for batch in batches] == [20, 20, 10]
        assert torch.cat(batches).tolist() == list(range(50))  # the test split, in order


def test_train_loader_follows_the_epoch_permutation() -> None:
    data = synthetic()
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)
    orders = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        orders.append(torch.cat(list(loader)))
    assert torch.equal(orders[0], orders[2]) and not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[1], loader.sampler.permutation(1))


# -- batches -----------------------------------------------------------------------------------


def test_evaluation_batch_is_the_normalised_test_images() -> None:
    data = synthetic()
    indices = torch.tensor([3, 0, 49])
    images, labels = data.make_batch(indices, train=False)
    test = data.split("test")
    assert images.dtype == torch.float32 and images.shape == (3, 3, 32, 32)
    assert torch.equal(labels, test.labels[indices])
    assert torch.equal(images, normalize(test.images[indices], *CIFAR10_MEAN_STD))


def test_training_batch_matches_a_per_image_reference() -> None:
    data = synthetic()
    epoch, indices = 3, torch.tensor([5, 199, 0, 42, 42])
    images, labels = data.make_batch(indices, train=True, epoch=epoch)
    offsets, flips = draw_augmentation(200, epoch_generator(11, epoch, "augment"))
    train = data.split("train")
    for row, index in enumerate(indices.tolist()):
        top, left = offsets[index].tolist()
        expected = TF.crop(TF.pad(train.images[index], [4]), top, left, 32, 32)
        if flips[index]:
            expected = TF.hflip(expected)
        expected = TF.normalize(expected.float() / 255, *CIFAR10_MEAN_STD)
        torch.testing.assert_close(images[row], expected, rtol=0, atol=1e-6)
        assert labels[row] == train.labels[index]


def test_augmentation_depends_only_on_seed_epoch_and_index() -> None:
    data, other = synthetic(), synthetic()
    batch = torch.tensor([7, 8, 9, 10])
    alone, _ = data.make_batch(torch.tensor([9]), train=True, epoch=2)
    in_batch, _ = data.make_batch(batch, train=True, epoch=2)
    assert torch.equal(alone[0], in_batch[2])
    data.make_batch(batch, train=True, epoch=5)  # history does not matter
    again, _ = data.make_batch(batch, train=True, epoch=2)
    fresh, _ = other.make_batch(batch, train=True, epoch=2)
    assert torch.equal(again, in_batch) and torch.equal(fresh, in_batch)
    everything = torch.arange(200)
    epoch2, _ = data.make_batch(everything, train=True, epoch=2)
    epoch3, _ = data.make_batch(everything, train=True, epoch=3)
    changed = (epoch2 != epoch3).flatten(1).any(1).float().mean().item()
    assert changed > 0.8  # a fresh crop and flip per sample per epoch (1/81/2 chance to repeat)
    reseeded, _ = synthetic(seed=12).make_batch(everything, train=True, epoch=2)
    assert not torch.equal(reseeded, epoch2)


def test_augment_false_gives_plain_training_images() -> None:
    data = synthetic(augment=False)
    indices = torch.tensor([1, 2])
    images, _ = data.make_batch(indices, train=True, epoch=4)
    assert torch.equal(images, normalize(data.split("train").images[indices], *CIFAR10_MEAN_STD))


def test_batches_are_built_on_the_indices_device_from_one_resident_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The meta device stands in for a GPU: any CPU tensor mixed into the batch would raise.
    data = synthetic()
    moves: list[torch.device] = []
    original_to = ImageSplit.to

    def counting_to(split: ImageSplit, device: torch.device) -> ImageSplit:
        moves.append(device)
        return original_to(split, device)

    monkeypatch.setattr(ImageSplit, "to", counting_to)
    for epoch in (0, 0, 1):
        images, labels = data.make_batch(torch.arange(8, device="meta"), train=True, epoch=epoch)
        assert images.device.type == "meta" and labels.device.type == "meta"
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    data.make_batch(torch.arange(8, device="meta"), train=False)
    assert [device.type for device in moves] == ["meta", "meta"]  # train once, test once
    data.teardown("fit")
    data.make_batch(torch.arange(8), train=False)  # back on the CPU after teardown
    assert moves[-1].type == "cpu"


def test_seed_defaults_to_seed_everything_and_survives_a_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")
    data = synthetic(seed=None)
    assert data.effective_seed == 123
    state = data.state_dict()
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    resumed = synthetic(seed=None)
    resumed.load_state_dict(state)
    assert resumed.effective_seed == 123
    assert resumed.train_dataloader().sampler.seed == 123  # type: ignore[attr-defined]
    explicit = synthetic(seed=5)
    with pytest.warns(UserWarning, match="data seed 123"):
        explicit.load_state_dict(state)
    assert explicit.effective_seed == 123


# -- inside a Lightning Trainer ----------------------------------------------------------------


class Recorder(L.LightningModule):
    """A linear classifier that records the batches Lightning hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)
        self.train_batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.val_batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        self.train_batches.append((self.current_epoch, images, labels))
        return nn.functional.cross_entropy(self.linear(images.flatten(1)), labels)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_batches.append(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.filterwarnings("ignore:.*GPU available but not used")
def test_trainer_sees_the_shuffled_augmented_batches_of_each_epoch(tmp_path) -> None:
    data = synthetic(synthetic_train_size=48, synthetic_test_size=20, batch_size=16)
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    reference = synthetic(synthetic_train_size=48, synthetic_test_size=20)
    sampler = EpochShuffleSampler(48, seed=11)
    assert [epoch for epoch, _, _ in model.train_batches] == [0, 0, 0, 1, 1, 1]
    for step, (epoch, images, labels) in enumerate(model.train_batches):
        indices = sampler.permutation(epoch)[16 * (step % 3) : 16 * (step % 3 + 1)]
        expected_images, expected_labels = reference.make_batch(indices, train=True, epoch=epoch)
        assert torch.equal(images, expected_images)
        assert torch.equal(labels, expected_labels)
    # Validation runs after each epoch on the test split, in order, without augmentation.
    assert len(model.val_batches) == 2  # one batch of 20 per epoch
    expected = normalize(reference.split("test").images, *CIFAR10_MEAN_STD)
    for images, labels in model.val_batches:
        assert torch.equal(images, expected)
        assert torch.equal(labels, reference.split("test").labels)
