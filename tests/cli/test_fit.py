"""End-to-end ``padam-fit`` runs on CPU: logs, saved config, checkpoints, resume and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.datasets import CIFAR10
from torchvision.io import encode_png

from padam_lightning.cli import main
from padam_lightning.cli.padam_cli import (
    _latest_run_checkpoint,
    _trains_on_cuda,
    check_numeric_settings,
)
from padam_lightning.errors import UserError
from padam_lightning.training.run_record import read_record

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EPOCH_TAGS = ("train/loss", "train/err", "val/loss", "val/err", "optim/lr", "optim/partial")


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run folder as (step, value) pairs, read with TensorBoard's own reader."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def run_fit(args: list[str]) -> None:
    """Run ``padam-fit`` in this process; a clean run returns without SystemExit."""
    main(args)


def test_fit_writes_curves_config_and_checkpoints(tiny_fit_args: list[str], tmp_path: Path) -> None:
    run_fit(tiny_fit_args)
    run_dir = tmp_path / "logs" / "run" / "version_0"
    scalars = read_scalars(run_dir)
    # One global-step axis: each epoch's values at its last step (3 batches an epoch), where
    # Lightning's own epoch scalar says which epoch it is.
    for tag in EPOCH_TAGS:
        assert [step for step, _ in scalars[tag]] == [2, 5], f"{tag}: {scalars.get(tag)}"
    epoch_at = dict(scalars["epoch"])
    assert (epoch_at[2], epoch_at[5]) == (0.0, 1.0)
    assert [step for step, _ in scalars["train/loss_step"]] == list(range(6))
    # The errors are fractions; the lr follows MultiStepLR([1], 0.1); p is Padam's 1/8.
    assert all(0.0 <= value <= 1.0 for _, value in scalars["train/err"] + scalars["val/err"])
    assert [value for _, value in scalars["optim/lr"]] == pytest.approx([0.1, 0.01])
    assert [value for _, value in scalars["optim/partial"]] == pytest.approx([0.125, 0.125])

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["arch"] == "wrn10_1"
    assert config["model"]["optimizer"]["class_path"] in (
        "padam_lightning.Padam",
        "padam_lightning.optim.Padam",
    )

    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    # Saved at the run's end: both epochs done (Lightning counts the epoch after the last).
    assert checkpoint["epoch"] == 2
    assert checkpoint["global_step"] == 6
    record = read_record(checkpoint)
    assert record is not None and record["config"]["model"]["arch"] == "wrn10_1"
    assert (record["stop"], record["epoch"], record["batches"], record["world_size"]) == (
        "max_epochs",
        2,
        0,
        1,
    )
    assert checkpoint["hyper_parameters"]["num_classes"] == 10
    state = checkpoint["optimizer_states"][0]["state"]
    assert {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"} <= set(state[0])
    best = [p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt")]
    assert len(best) == 1, best

    finished = json.loads((run_dir / "finished.json").read_text())
    assert (finished["stop"], finished["epoch"], finished["global_step"]) == ("max_epochs", 2, 6)
    assert finished["train_seconds"] > 0 and "config" not in finished
    assert finished["metrics"]["val/err"] == pytest.approx(scalars["val/err"][-1][1])


@pytest.mark.parametrize(
    ("extra", "ended"),
    [
        (["--trainer.max_steps", "3"], ("max_steps", 1, 3)),
        (
            [
                "--trainer.max_epochs",
                "5",
                "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
                "--trainer.callbacks.monitor",
                "val/err",
                "--trainer.callbacks.patience",
                "0",
                "--trainer.callbacks.min_delta",
                "1.0",  # an error is at most 1: no epoch improves on the first one
            ],
            ("early_stopping", 2, 6),
        ),
    ],
    ids=["max-steps", "early-stopping"],
)
def test_finished_json_says_which_end_the_run_reached(
    tiny_fit_args: list[str], tmp_path: Path, extra: list[str], ended: tuple[str, int, int]
) -> None:
    run_fit([*tiny_fit_args, *extra])
    finished = json.loads((tmp_path / "logs" / "run" / "version_0" / "finished.json").read_text())
    assert (finished["stop"], finished["epoch"], finished["global_step"]) == ended


def _user_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_fit(args)
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # One message, not jsonargparse's usage text.
    assert err.count("padam-fit: error:") == 1 and "usage:" not in err, err
    return err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model.optimizer.init_args.partial", "0.9"], "partial"),
        (["--model.arch", "resnet7"], "resnet18"),
        (["--data.dataset", "mnist"], "cifar10"),
        (["--trainer.accelerator", "bogus"], "invalid accelerator name"),
        (["--trainer.strategy", "bogus"], "invalid strategy name"),
        (["--model.scheduler.init_args.gamma", "-1"], "gamma is -1.0"),
        (["--ckpt_path", "missing.ckpt"], "missing.ckpt"),
        (["--ckpt_path", "last"], "no checkpoint found"),
        (["--trainer.max_epochs", "-3"], "max_epochs"),
        (["--seed_everything", "-1"], "seed_everything: -1 is out of range; expected an integer"),
        (["--seed_everything", "5000000000"], "from 0 to 4294967295"),
        (["--trainer.check_val_every_n_epoch", "0"], "expected a positive integer, got 0"),
        (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches: expected a"),
        (["--data.dataset", "imagefolder", "--data.data_dir", "/nonexistent/cifar"], "not found"),
    ],
)
def test_bad_input_is_refused_with_one_message(
    tiny_fit_args: list[str], extra: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _user_error([*tiny_fit_args, *extra], capsys)
    assert expected in err


def _empty_image_folder(root: Path) -> None:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)


def _image_folder_of_mixed_sizes(root: Path) -> None:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        for name, size in (("big.png", 32), ("small.png", 16)):
            image = torch.zeros(3, size, size, dtype=torch.uint8)
            (root / split / "cat" / name).write_bytes(encode_png(image).numpy().tobytes())


def _damaged_cifar10_files(root: Path) -> None:
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    for name, _ in [*CIFAR10.train_list, *CIFAR10.test_list]:
        (folder / name).write_bytes(b"an interrupted copy")
    (folder / CIFAR10.meta["filename"]).write_bytes(b"an interrupted copy")


@pytest.mark.parametrize(
    ("dataset", "write_data", "expected"),
    [
        ("imagefolder", _empty_image_folder, "holds no images"),
        ("imagefolder", _image_folder_of_mixed_sizes, "16x16"),
        ("cifar10", _damaged_cifar10_files, "failed their checksum check"),
    ],
)
def test_bad_data_is_refused_with_one_message(
    tiny_fit_args: list[str],
    tmp_path: Path,
    dataset: str,
    write_data: Callable[[Path], None],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    write_data(data_dir)
    before = {path: path.read_bytes() for path in data_dir.rglob("*") if path.is_file()}
    args = ["--data.dataset", dataset, "--data.data_dir", str(data_dir), "--data.download", "false"]
    err = _user_error([*tiny_fit_args, *args], capsys)
    assert expected in err and str(data_dir) in err, err
    assert {path: path.read_bytes() for path in data_dir.rglob("*") if path.is_file()} == before


def test_padam_options_can_be_set_without_naming_the_optimizer(tmp_path: Path) -> None:
    # No config names model.optimizer: Padam with the paper's settings is the parsed default.
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.max_epochs", "1"]
    run_fit(["fit", "--config", str(CONFIGS / "tiny.yaml"), *logs])
    run_fit(
        [
            "fit",
            "--config",
            str(CONFIGS / "tiny.yaml"),
            *logs,
            "--model.optimizer.init_args.partial",
            "0.25",
        ]
    )
    partials = []
    for run in sorted((tmp_path / "synthetic-wrn10_1-padam").iterdir()):
        checkpoint = torch.load(
            run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        (group,) = checkpoint["optimizer_states"][0]["param_groups"]
        assert (group["initial_lr"], group["weight_decay"]) == (0.1, 5e-4)
        partials.append(group["partial"])
    assert partials == [0.125, 0.25]


def test_a_refused_resume_is_one_line_and_touches_nothing(
    tiny_fit_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What is refused is tests/cli/test_resume_checks.py's; here: that padam-fit asks, in time.
    run_fit(tiny_fit_args)
    run_dir = tmp_path / "logs" / "run" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    resume = [*tiny_fit_args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]
    sgdm = str(CONFIGS / "optim" / "sgdm.yaml")
    err = _user_error([*resume, "--config", sgdm], capsys)
    assert f"--ckpt_path {last}: this command's settings differ" in err
    assert "model.optimizer.class_path: padam_lightning.Padam in the checkpoint, " in err
    assert "torch.optim.SGD now" in err
    err = _user_error([*resume, "--model.arch", "wrn10_2"], capsys)
    assert "the checkpoint is of a wrn10_1 network, but this run asks for wrn10_2" in err
    err = _user_error([*tiny_fit_args, "--ckpt_path", str(truncated)], capsys)
    assert f"--ckpt_path {truncated}: the file is truncated" in err
    # Nothing in the run folder was touched: checkpoints, logs and the record of its config.
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    # Implementation switches may change: the numbers are the same.
    run_fit([*resume, "--model.optimizer.init_args.foreach", "true"])


def test_a_run_with_a_p_schedule_resumes(tiny_fit_args: list[str], tmp_path: Path) -> None:
    # The schedule moves p and the lr away from the configured values; that is no mismatch.
    schedule = str(CONFIGS / "experiments" / "p_schedule.yaml")
    run_fit([*tiny_fit_args, "--config", schedule])
    run_fit(
        [*tiny_fit_args, "--config", schedule, "--trainer.max_epochs", "3", "--ckpt_path", "last"]
    )
    partial = read_scalars(tmp_path / "logs" / "run" / "version_0")["optim/partial"]
    assert [value for _, value in partial] == pytest.approx(
        [0.25, 0.25 - 0.1875 / 99, 0.25 - 0.375 / 99]
    )


def test_resuming_last_looks_only_at_the_latest_run(
    tiny_fit_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_fit(tiny_fit_args)
    crashed_early = tmp_path / "logs" / "run" / "version_1"  # a newer run with no checkpoint yet
    crashed_early.mkdir()
    (crashed_early / "config.yaml").write_text("# written when its training started\n")
    last = tmp_path / "logs" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    started = last.stat().st_mtime + 60
    os.utime(crashed_early, (started, started))
    err = _user_error([*tiny_fit_args, "--ckpt_path", "last"], capsys)
    assert "version_1" in err and "no checkpoint found" in err


def test_resuming_last_passes_over_a_run_refused_before_it_started(
    tiny_fit_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_fit(tiny_fit_args)
    # A later attempt whose data was missing: Lightning made its folder, nothing trained there.
    missing = ["--data.dataset", "cifar10", "--data.data_dir", str(tmp_path / "none")]
    _user_error([*tiny_fit_args, *missing, "--data.download", "false"], capsys)
    assert (tmp_path / "logs" / "run" / "version_1").is_dir()
    run_fit([*tiny_fit_args, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    steps = read_scalars(tmp_path / "logs" / "run" / "version_0")["val/err"]
    assert [step for step, _ in steps] == [2, 5, 8]  # epochs 0-1, then epoch 2 resumed there


def test_runs_started_in_the_same_clock_tick_resume_the_higher_version(tmp_path: Path) -> None:
    for version in (2, 10, 9):
        run = tmp_path / f"version_{version}"
        run.mkdir()
        os.utime(run, (1e9, 1e9))
    assert _latest_run_checkpoint(tmp_path).parent.parent.name == "version_10"


@pytest.mark.parametrize(
    ("accelerator", "on_cuda"),
    [("cpu", False), ("auto", True), (None, True), ("gpu", True), ("cuda", True), ("mps", False)],
)
def test_automatic_mixed_precision_only_where_training_runs_on_cuda(
    accelerator: str | None, on_cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _trains_on_cuda(accelerator) is on_cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _trains_on_cuda(accelerator) is False


def test_command_line_error_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "padam_lightning.cli",
            "fit",
            "--config",
            "configs/wrn.yaml",
            "--model.optimizer.init_args.partial",
            "0.9",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "padam-fit: error:" in result.stderr and "partial" in result.stderr


def test_testing_a_checkpoint_keeps_the_training_config(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    run_fit(tiny_fit_args)
    run_dir = tmp_path / "logs" / "run" / "version_0"
    trained_with = (run_dir / "config.yaml").read_text()
    run_fit(["test", *tiny_fit_args[1:], "--ckpt_path", "last"])
    assert (run_dir / "config.yaml").read_text() == trained_with
    evaluation = run_dir / "eval" / "test-0"  # evaluations log apart from the run's curves
    # The evaluation's own config names the checkpoint it tested (last, best, ...).
    tested = yaml.safe_load((evaluation / "config-test.yaml").read_text())["ckpt_path"]
    assert tested == str(run_dir / "checkpoints" / "last.ckpt")
    test_err = read_scalars(evaluation)["test/err"]
    assert len(test_err) == 1 and 0.0 <= test_err[0][1] <= 1.0
    assert "test/err" not in read_scalars(run_dir)


@pytest.mark.parametrize(
    ("seed", "accepted"),
    [(0, True), (2**32 - 1, True), (True, True), (False, True), (None, True), (2**32, False)],
)
def test_the_seed_range_is_numpys(seed: int | bool | None, accepted: bool) -> None:
    config = Namespace(seed_everything=seed, trainer=Namespace())
    if accepted:
        check_numeric_settings(config)
    else:
        with pytest.raises(UserError, match="out of range"):
            check_numeric_settings(config)
