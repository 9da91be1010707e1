"""Resume checks: one comparison of the saved and the configured resolved config, and the file.

Unit tests, no training: ``CONFIG`` is the resolved config of
``padam-fit fit --config configs/wrn.yaml --config configs/tiny.yaml
--config configs/experiments/p_schedule.yaml --print_config`` (without ``ckpt_path``), as the run
record keeps it in a checkpoint.
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from padam_lightning.cli.resume import (
    check_network,
    check_resume,
    config_differences,
    read_checkpoint,
)
from padam_lightning.errors import UserError

CONFIG: dict[str, Any] = yaml.safe_load(
    """
seed_everything: 0
trainer:
  accelerator: cpu
  strategy: auto
  devices: 1
  num_nodes: 1
  precision: null
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: lightning_logs, name: null, version: null, default_hp_metric: false}
  callbacks:
  - class_path: padam_lightning.training.partial_schedule.PartialSchedule
    init_args: {p_start: 0.25, p_end: 0.0625, shape: linear, interval: epoch, total: 100,
      milestones: null, lr_start_scale: 0.1, lr_end_scale: 1.0}
  fast_dev_run: false
  max_epochs: 2
  min_epochs: null
  max_steps: -1
  min_steps: null
  max_time: null
  limit_train_batches: 3.0
  limit_val_batches: 2.0
  limit_test_batches: null
  overfit_batches: 0.0
  val_check_interval: null
  check_val_every_n_epoch: 1
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  enable_checkpointing: null
  enable_progress_bar: false
  enable_model_summary: false
  accumulate_grad_batches: 1
  gradient_clip_val: null
  deterministic: null
  benchmark: null
  inference_mode: true
  use_distributed_sampler: true
  profiler: null
  detect_anomaly: false
  sync_batchnorm: false
  default_root_dir: null
model:
  arch: wrn10_1
  optimizer:
    class_path: padam_lightning.Padam
    init_args: {lr: 0.1, betas: [0.9, 0.999], eps: 1.0e-08, weight_decay: 0.0005,
      partial: 0.125, amsgrad: true, decoupled_weight_decay: false, maximize: false,
      foreach: null, fused: null}
  scheduler:
    class_path: torch.optim.lr_scheduler.MultiStepLR
    init_args: {milestones: [1], gamma: 0.1, last_epoch: -1}
  channels_last: null
  compile: null
  compile_mode: null
data:
  dataset: synthetic
  data_dir: data
  batch_size: 16
  eval_batch_size: 16
  download: true
  augment: true
  seed: null
  synthetic_train_size: 64
  synthetic_test_size: 32
  synthetic_num_classes: 10
checkpoint:
  dirpath: null
  filename: best-epoch{epoch:03d}-err{val/err:.4f}
  monitor: val/err
  save_top_k: 1
  mode: min
weights_only: null
"""
)

EARLY_STOPPING: dict[str, Any] = {
    "class_path": "lightning.pytorch.callbacks.EarlyStopping",
    "init_args": {"monitor": "val/err", "patience": 5},
}


def changed(*edits: tuple[str, Any]) -> dict[str, Any]:
    """A copy of ``CONFIG`` with each dotted key set (``DELETE``: removed)."""
    config = copy.deepcopy(CONFIG)
    for key, value in edits:
        *parents, last = key.split(".")
        node = config
        for name in parents:
            node = node[int(name)] if isinstance(node, list) else node[name]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return config


DELETE = object()
SCHEDULE = "trainer.callbacks.0.init_args"


# -- config_differences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            [("model.optimizer", {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})],
            [
                "model.optimizer.class_path: padam_lightning.Padam in the checkpoint, "
                "torch.optim.SGD now"
            ],
        ),
        (
            [("model.optimizer.init_args.lr", 0.01)],
            ["model.optimizer.init_args.lr: 0.1 in the checkpoint, 0.01 now"],
        ),
        (
            [("model.optimizer.init_args.partial", 0.25)],
            ["model.optimizer.init_args.partial: 0.125 in the checkpoint, 0.25 now"],
        ),
        (
            [("model.optimizer.init_args.betas", [0.9, 0.99])],
            ["model.optimizer.init_args.betas: [0.9, 0.999] in the checkpoint, [0.9, 0.99] now"],
        ),
        (
            [("model.scheduler.init_args.milestones", [3])],
            ["model.scheduler.init_args.milestones: [1] in the checkpoint, [3] now"],
        ),
        (
            [("model.scheduler", None)],
            [
                "model.scheduler: MultiStepLR(milestones=[1], gamma=0.1, last_epoch=-1) in the "
                "checkpoint, null now"
            ],
        ),
        (
            [("trainer.callbacks", None)],
            ["trainer.callbacks: [PartialSchedule] in the checkpoint, [] now"],
        ),
        (
            [("trainer.callbacks", [*CONFIG["trainer"]["callbacks"], EARLY_STOPPING])],
            [
                "trainer.callbacks: [PartialSchedule] in the checkpoint, [EarlyStopping, "
                "PartialSchedule] now"
            ],
        ),
        (
            [(f"{SCHEDULE}.p_end", 0.125)],
            [
                "trainer.callbacks[PartialSchedule].init_args.p_end: 0.0625 in the checkpoint, "
                "0.125 now"
            ],
        ),
        (
            [(f"{SCHEDULE}.lr_start_scale", 1.0), (f"{SCHEDULE}.shape", "cosine")],
            [
                "trainer.callbacks[PartialSchedule].init_args.lr_start_scale: 0.1 in the "
                "checkpoint, 1.0 now",
                "trainer.callbacks[PartialSchedule].init_args.shape: linear in the checkpoint, "
                "cosine now",
            ],
        ),
        ([("data.seed", 5)], ["data.seed: null in the checkpoint, 5 now"]),
        ([("seed_everything", 3)], ["seed_everything: 0 in the checkpoint, 3 now"]),
        ([("data.batch_size", 8)], ["data.batch_size: 16 in the checkpoint, 8 now"]),
        ([("data.augment", False)], ["data.augment: true in the checkpoint, false now"]),
        ([("model.arch", "vgg16")], ["model.arch: wrn10_1 in the checkpoint, vgg16 now"]),
        (
            [("data.synthetic_num_classes", 5)],
            ["data.synthetic_num_classes: 10 in the checkpoint, 5 now"],
        ),
        (
            [("data.dataset", "cifar100")],
            ["data.dataset: synthetic in the checkpoint, cifar100 now"],
        ),
        # Another precision changes the numbers (and the grad scaler state): refused.
        (
            [("trainer.precision", "bf16-mixed")],
            ["trainer.precision: null in the checkpoint, bf16-mixed now"],
        ),
        (
            [("trainer.limit_train_batches", 5.0)],
            ["trainer.limit_train_batches: 3.0 in the checkpoint, 5.0 now"],
        ),
        (
            [("trainer.accumulate_grad_batches", 2)],
            ["trainer.accumulate_grad_batches: 1 in the checkpoint, 2 now"],
        ),
        # Floats compare exactly.
        (
            [("model.optimizer.init_args.lr", 0.1000000001)],
            ["model.optimizer.init_args.lr: 0.1 in the checkpoint, 0.1000000001 now"],
        ),
        # A bool is not the int 1.
        ([("data.augment", 1)], ["data.augment: true in the checkpoint, 1 now"]),
        # A key on one side only differs: a nested dict against a missing key, and a new key.
        (
            [("model.scheduler", DELETE)],
            [
                "model.scheduler: MultiStepLR(milestones=[1], gamma=0.1, last_epoch=-1) in the "
                "checkpoint, not set now"
            ],
        ),
        (
            [("model.scheduler.init_args", DELETE)],
            [
                "model.scheduler.init_args: {milestones: [1], gamma: 0.1, last_epoch: -1} in the "
                "checkpoint, not set now"
            ],
        ),
        ([("data.cutout", 8)], ["data.cutout: not set in the checkpoint, 8 now"]),
    ],
)
def test_each_kind_of_difference_is_named_with_both_values(
    edits: list[tuple[str, Any]], expected: list[str]
) -> None:
    assert config_differences(CONFIG, changed(*edits)) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trainer.max_epochs", 200),
        ("trainer.max_steps", 1000),
        ("trainer.max_time", "00:12:00:00"),
        ("trainer.min_epochs", 3),
        ("trainer.logger", None),
        ("trainer.logger", False),
        ("trainer.logger.init_args.version", "version_0"),
        ("trainer.logger.init_args.save_dir", "elsewhere"),
        ("trainer.enable_progress_bar", True),
        ("trainer.enable_model_summary", True),
        ("trainer.log_every_n_steps", 50),
        ("trainer.default_root_dir", "/scratch/runs"),
        ("trainer.enable_checkpointing", True),
        ("trainer.num_sanity_val_steps", 2),
        ("trainer.limit_test_batches", 0.5),
        ("trainer.accelerator", "gpu"),
        ("trainer.devices", [0]),
        ("trainer.strategy", "ddp"),
        ("trainer.benchmark", True),
        ("trainer.deterministic", True),
        ("trainer.profiler", "simple"),
        ("trainer.detect_anomaly", True),
        ("model.compile", True),
        ("model.compile_mode", "max-autotune-no-cudagraphs"),
        ("model.channels_last", True),
        ("model.optimizer.init_args.foreach", False),
        ("model.optimizer.init_args.fused", True),
        ("data.data_dir", "/datasets/cifar"),
        ("data.download", False),
        ("data.eval_batch_size", 500),
        ("data.num_workers", 4),  # present on one side only, but may change
        ("checkpoint.save_top_k", 3),
        ("checkpoint.monitor", "val/loss"),
        ("weights_only", True),
        ("ckpt_path", "last"),
    ],
)
def test_what_a_resume_may_change_is_not_a_difference(key: str, value: Any) -> None:
    assert config_differences(CONFIG, changed((key, value))) == []


def test_equal_values_of_another_type_are_the_same() -> None:
    # 16 and 16.0, 1 and 1.0; a tuple and the same list (a config read back from a checkpoint).
    configured = changed(
        ("data.batch_size", 16.0),
        ("model.optimizer.init_args.lr", 0.1),
        ("trainer.check_val_every_n_epoch", 1.0),
        ("model.optimizer.init_args.betas", (0.9, 0.999)),
        ("trainer.callbacks.0.init_args.total", 100.0),
    )
    assert config_differences(CONFIG, configured) == []
    assert config_differences(CONFIG, copy.deepcopy(CONFIG)) == []


def test_callbacks_compare_by_class_in_any_order_and_watching_callbacks_may_change() -> None:
    schedule = CONFIG["trainer"]["callbacks"][0]
    saved = changed(("trainer.callbacks", [schedule, EARLY_STOPPING]))
    monitor = {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {}}
    assert (
        config_differences(saved, changed(("trainer.callbacks", [EARLY_STOPPING, schedule]))) == []
    )
    assert (
        config_differences(
            saved, changed(("trainer.callbacks", [monitor, EARLY_STOPPING, schedule]))
        )
        == []
    )
    patience = copy.deepcopy(EARLY_STOPPING)
    patience["init_args"]["patience"] = 9
    assert config_differences(saved, changed(("trainer.callbacks", [schedule, patience]))) == [
        "trainer.callbacks[EarlyStopping].init_args.patience: 5 in the checkpoint, 9 now"
    ]
    twice = changed(("trainer.callbacks", [schedule, EARLY_STOPPING, patience]))
    assert config_differences(
        twice, changed(("trainer.callbacks", [schedule, EARLY_STOPPING]))
    ) == [
        "trainer.callbacks: [EarlyStopping, EarlyStopping#2, PartialSchedule] in the checkpoint, "
        "[EarlyStopping, PartialSchedule] now"
    ]
    # No callbacks: null, an empty list and only watching callbacks are the same.
    none = changed(("trainer.callbacks", None))
    assert config_differences(none, changed(("trainer.callbacks", [monitor]))) == []
    assert config_differences(none, changed(("trainer.callbacks", []))) == []


def test_a_p_schedule_without_total_follows_max_epochs() -> None:
    # total unset means total = trainer.max_epochs: training longer would stretch the schedule.
    saved = changed((f"{SCHEDULE}.total", None))
    assert config_differences(
        saved, changed((f"{SCHEDULE}.total", None), ("trainer.max_epochs", 3))
    ) == [
        "trainer.callbacks[PartialSchedule].init_args.total: 2 (from trainer.max_epochs) in the "
        "checkpoint, 3 (from trainer.max_epochs) now"
    ]
    # Writing the run's length out as total trains longer with the same schedule.
    longer = changed((f"{SCHEDULE}.total", 2), ("trainer.max_epochs", 3))
    assert config_differences(saved, longer) == []
    # An explicit total does not move with max_epochs.
    assert config_differences(CONFIG, changed(("trainer.max_epochs", 300))) == []
    # With a step interval the total also follows max_steps.
    steps = changed((f"{SCHEDULE}.total", None), (f"{SCHEDULE}.interval", "step"))
    more_steps = changed(
        (f"{SCHEDULE}.total", None), (f"{SCHEDULE}.interval", "step"), ("trainer.max_steps", 10)
    )
    assert config_differences(steps, more_steps) == [
        "trainer.callbacks[PartialSchedule].init_args.total: [2, -1] (from trainer.max_epochs, "
        "trainer.max_steps) in the checkpoint, [2, 10] (from trainer.max_epochs, "
        "trainer.max_steps) now"
    ]


# -- check_resume ---------------------------------------------------------------------------------


def _refusal(path: Path, record: dict[str, Any], configured: dict[str, Any], size: int = 1) -> str:
    with pytest.raises(UserError) as info:
        check_resume(path, record, configured, size)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_refusal_lists_each_difference_and_the_fix(tmp_path: Path) -> None:
    run = tmp_path / "run" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 0\n")
    path = run / "checkpoints" / "last.ckpt"
    configured = changed(("model.optimizer.init_args.lr", 0.01), ("trainer.max_epochs", 9))
    assert _refusal(path, {"config": CONFIG, "world_size": 1}, configured) == (
        f"--ckpt_path {path}: this command's settings differ from those of the run it would "
        "continue (a resume keeps the run's optimizer state, schedules and data order): "
        "model.optimizer.init_args.lr: 0.1 in the checkpoint, 0.01 now. Continue with the run's "
        f"own settings (its config.yaml: padam-fit fit --config {run / 'config.yaml'} "
        f"--ckpt_path {path}, adding e.g. --trainer.max_epochs to train longer), or start a new "
        "run without --ckpt_path."
    )


def test_the_fix_runs_the_program_the_user_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "venv" / "bin" / "padam-fit"  # a virtual environment not activated
    monkeypatch.setattr("sys.argv", [str(script)])
    monkeypatch.setenv("PATH", "/nonexistent")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("seed_everything: 0\n")
    path = run / "checkpoints" / "last.ckpt"
    message = _refusal(path, {"config": CONFIG, "world_size": 2}, CONFIG)
    fix = f"{script} fit --config {run / 'config.yaml'} --ckpt_path {path}, adding"
    assert f"(its config.yaml: {fix}" in message


def test_another_number_of_processes_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path / "last.ckpt", {"config": CONFIG, "world_size": 2}, CONFIG, 1)
    assert (
        ": training processes (trainer.devices x trainer.num_nodes, each taking data.batch_size "
        "a step): 2 in the checkpoint, 1 now." in message
    )
    assert "the config it was started with" in message  # no config.yaml beside it
    check_resume(tmp_path / "last.ckpt", {"config": CONFIG, "world_size": 2}, CONFIG, 2)


def test_more_than_five_differences_are_counted() -> None:
    configured = changed(
        *((f"data.{key}", 1) for key in ("batch_size", "seed", "synthetic_train_size")),
        ("seed_everything", 1),
        ("model.arch", "vgg16"),
        ("model.scheduler.init_args.gamma", 0.5),
        ("trainer.gradient_clip_val", 1.0),
    )
    message = _refusal(Path("last.ckpt"), {"config": CONFIG, "world_size": 1}, configured)
    assert message.count(" in the checkpoint, ") == 5
    assert "; and 2 more. Continue" in message


def test_a_checkpoint_without_a_recorded_config_is_not_refused() -> None:
    other = changed(("model.arch", "vgg16"))
    check_resume(Path("last.ckpt"), {}, other, 1)
    check_resume(Path("last.ckpt"), {"world_size": 1}, other, 1)
    check_resume(Path("last.ckpt"), {"config": CONFIG, "world_size": 1}, changed(), 1)


# -- check_network --------------------------------------------------------------------------------


def test_evaluation_needs_the_same_network() -> None:
    checkpoint = {"hyper_parameters": {"arch": "wrn10_1", "num_classes": 10}}
    check_network(Path("a.ckpt"), checkpoint, "wrn10_1", 10, evaluating=True)
    with pytest.raises(
        UserError, match=r"of a wrn10_1 network, but this evaluation asks for vgg16"
    ):
        check_network(Path("a.ckpt"), checkpoint, "vgg16", evaluating=True)
    # The class count of an image folder is not in the config: its class folders set it.
    with pytest.raises(UserError, match=r"has 10 classes, but this run's data has 5\. Continue"):
        check_network(Path("a.ckpt"), checkpoint, "wrn10_1", 5)
    check_network(Path("a.ckpt"), {}, "vgg16", 5)  # no hyperparameters: nothing to compare


# -- read_checkpoint ------------------------------------------------------------------------------


def _save_checkpoint(path: Path, epoch: int, resumable: bool = True) -> Path:
    """A small file in a Lightning checkpoint's layout (as ``Trainer.save_checkpoint`` writes)."""
    content: dict[str, Any] = {
        "epoch": epoch,
        "global_step": 4 * epoch,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {"net.weight": torch.randn(64, 64)},
        "loops": {},
    }
    if resumable:
        content["optimizer_states"] = [{"state": {}, "param_groups": []}]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with two checkpoints that load, and one saved without optimizer state."""
    checkpoints = tmp_path / "run" / "version_0" / "checkpoints"
    _save_checkpoint(checkpoints / "best-epoch001.ckpt", 1)
    last = _save_checkpoint(checkpoints / "last.ckpt", 3)
    os.utime(checkpoints / "best-epoch001.ckpt", (1, 1))  # older than last.ckpt
    _save_checkpoint(checkpoints / "weights.ckpt", 2, resumable=False)
    return last


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte_of_the_weights(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _bare_state_dict(path: Path) -> None:
    torch.save({"net.weight": torch.zeros(2)}, path)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncate, "the file is truncated (its archive has no end): a save or copy was cut off"),
        (
            lambda path: path.write_bytes(b""),
            "the file is empty (0 bytes): a save or copy was cut off",
        ),
        (_random_bytes, "not a checkpoint: its bytes are not a torch.save archive"),
        (lambda path: path.write_text("epoch: 3\nlr: 0.1\n"), "a text file, not a checkpoint"),
        (_flip_a_byte_of_the_weights, "the file is damaged (its entry"),
        (_bare_state_dict, "a torch file but not a Lightning checkpoint, e.g. a bare state_dict"),
        (lambda path: path.unlink(), "no such file"),
    ],
)
def test_a_bad_checkpoint_is_named_with_the_ones_beside_it_that_load(
    run: Path, damage: Callable[[Path], None], problem: str
) -> None:
    damage(run)
    with pytest.raises(UserError) as info:
        read_checkpoint(run)
    message, folder = str(info.value), run.parent
    assert message.startswith(f"--ckpt_path {run}: {problem}") and "\n" not in message
    assert message.endswith(
        f". Checkpoints in {folder} that load, newest first: {folder / 'best-epoch001.ckpt'} "
        "(epoch 1)."
    )


def test_checkpoints_in_the_runs_checkpoint_folder_are_named(run: Path) -> None:
    beside = run.parents[1] / "last.ckpt"
    beside.write_bytes(b"")
    with pytest.raises(UserError) as info:
        read_checkpoint(beside)
    assert str(info.value).endswith(
        f"Checkpoints in {beside.parent} or {run.parent} that load, newest first: {run} "
        f"(epoch 3), {run.parent / 'best-epoch001.ckpt'} (epoch 1)."
    )


def test_when_none_loads_it_says_so(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    path.write_text("not a checkpoint")
    _save_checkpoint(tmp_path / "weights.ckpt", 1, resumable=False)
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    assert str(info.value) == (
        f"--ckpt_path {path}: a text file, not a checkpoint. No checkpoint in {tmp_path} loads "
        "and could continue the run."
    )


def test_a_good_checkpoint_loads(run: Path) -> None:
    content = read_checkpoint(run)
    assert content["epoch"] == 3 and content["state_dict"]["net.weight"].shape == (64, 64)


def test_a_long_text_file_and_a_folder_are_named_as_such(run: Path) -> None:
    text = run.parent / "notes.ckpt"
    text.write_text("a" + "é" * 1000)  # 2 bytes each: the first 512 bytes end mid-character
    with pytest.raises(UserError, match=r"notes\.ckpt: a text file, not a checkpoint\. "):
        read_checkpoint(text)
    with pytest.raises(UserError, match=r": a folder, not a checkpoint file\. Checkpoints in"):
        read_checkpoint(run.parent)
