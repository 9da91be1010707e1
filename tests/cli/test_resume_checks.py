"""``padam-fit fit --ckpt_path``: what the checkpoint restores is refused when it differs, or used.

A resumed run takes its lr scheduler state, its callbacks' state and its data seed from the
checkpoint. A command asking for other values must be refused before anything in the run folder
changes (the record in ``config.yaml`` included); what is not restored applies as configured.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_robustness import tiny_cli_args

from padam_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCHEDULE = str(CONFIGS / "experiments" / "p_schedule.yaml")


def _args(save_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "fit",
        *tiny_cli_args(save_dir, name, "--trainer.max_epochs", "2", *extra, configs=CONFIGS),
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiny run without and one with a p schedule, trained once for the whole module."""
    save_dir = tmp_path_factory.mktemp("logs")
    argv = sys.argv
    sys.argv = ["padam-fit"]
    try:
        main(_args(save_dir, "plain"))
        main(_args(save_dir, "scheduled", "--config", SCHEDULE))
    finally:
        sys.argv = argv
    yield save_dir


def _snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time (ns)."""
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("run", "extra", "expected"),
    [
        # The example: the scheduler's settings would be replaced by the checkpoint's.
        (
            "plain",
            [
                "--model.scheduler.init_args.milestones",
                "[3]",
                "--model.scheduler.init_args.gamma",
                "0.5",
            ],
            "lr scheduler has gamma 0.1, but this run configures 0.5",
        ),
        (
            "plain",
            ["--model.scheduler.init_args.milestones", "[3]"],
            "has milestones [1], but this run configures [3]",
        ),
        ("plain", ["--model.scheduler", "null"], "configures no lr scheduler"),
        (
            "plain",
            [
                "--model.scheduler",
                "torch.optim.lr_scheduler.StepLR",
                "--model.scheduler.init_args.step_size",
                "1",
            ],
            "another scheduler class",
        ),
        ("plain", ["--config", SCHEDULE], "trained without a PartialSchedule"),
        ("scheduled", [], "trained with the callback PartialSchedule"),
        (
            "scheduled",
            ["--config", SCHEDULE, "--trainer.callbacks.p_end", "0.125"],
            "p_end 0.0625 -> 0.125",
        ),
        ("plain", ["--seed_everything", "3"], "data seed is 0, but this run configures 3"),
        ("plain", ["--data.seed", "5"], "data seed is 0, but this run configures 5"),
        ("plain", ["--data.batch_size", "8"], "data.batch_size 16, but this run configures 8"),
        (
            "plain",
            ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
            "trained on 1 process (a global batch of data.batch_size x 1), but this run has 2",
        ),
        # The class count comes from the data (linked into the model when it is built).
        (
            "plain",
            ["--data.synthetic_num_classes", "5"],
            "network has 10 classes, but this run's data has 5",
        ),
        (
            "plain",
            [
                "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
                "--trainer.callbacks.monitor",
                "val/err",
                "--trainer.callbacks.patience",
                "7",
            ],
            None,  # a callback the run did not have starts afresh: applies as configured
        ),
    ],
)
def test_a_resume_that_the_checkpoint_would_overrule_is_refused_before_anything_is_written(
    trained: Path,
    tmp_path: Path,
    run: str,
    extra: list[str],
    expected: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    save_dir = tmp_path / "logs"
    shutil.copytree(trained, save_dir)  # each case resumes its own copy
    run_dir = save_dir / run / "version_0"
    before = _snapshot(run_dir)
    args = [*_args(save_dir, run, *extra), "--trainer.max_epochs", "3"]
    if expected is None:
        main([*args, "--ckpt_path", "last"])
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
        return
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("padam-fit: error:") == 1 and "Traceback" not in err, err
    assert expected in err, err
    # Checkpoints, curves, finished.json and the record of the run's config: bytes and times.
    assert _snapshot(run_dir) == before
    assert sorted(p.name for p in (save_dir / run).iterdir()) == ["version_0"]


def test_a_resume_with_early_stopping_keeps_its_patience_or_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stopping = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
        "--trainer.callbacks.monitor",
        "val/err",
        "--trainer.callbacks.patience",
    ]
    main(_args(tmp_path, "run", *stopping, "5"))
    run_dir = tmp_path / "run" / "version_0"
    before = _snapshot(run_dir)
    with pytest.raises(SystemExit):
        main([*_args(tmp_path, "run", *stopping, "9"), "--ckpt_path", "last"])
    assert "patience is 5, but this run configures 9" in capsys.readouterr().err
    assert _snapshot(run_dir) == before


def test_the_commands_model_settings_apply_on_resume(trained: Path, tmp_path: Path) -> None:
    # LightningCLI would parse the checkpoint's hyperparameters over --model.*: the command's
    # channels_last would be accepted and ignored (and config.yaml would not say so).
    save_dir = tmp_path / "logs"
    shutil.copytree(trained, save_dir)
    args = _args(save_dir, "plain", "--trainer.max_epochs", "3", "--model.channels_last", "true")
    main([*args, "--ckpt_path", "last"])
    run_dir = save_dir / "plain" / "version_0"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["channels_last"] is True
    assert "channels_last: true" in (run_dir / "config.yaml").read_text()
