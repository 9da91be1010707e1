"""``padam-fit``'s commands around training: evaluation apart from the run, Lightning's own
trainer flags, the bare command, and run folder names."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace
from test_robustness import tiny_cli_args

import padam_lightning.cli
from padam_lightning.cli import main, resume_command
from padam_lightning.cli.padam_cli import _latest_run_checkpoint, run_name
from padam_lightning.experiments.run_logs import read_run, read_scalars

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _tiny(save_dir: Path, *extra: str, command: str = "fit") -> list[str]:
    return [command, *tiny_cli_args(save_dir, "run", *extra, configs=CONFIGS)]


def _files(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {
        path: (path.read_bytes(), path.stat().st_mtime_ns)
        for path in folder.iterdir()
        if path.is_file()
    }


def test_evaluating_a_run_leaves_its_curves_its_summary_and_its_place_as_latest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(_tiny(tmp_path))  # version_0
    main(_tiny(tmp_path))  # version_1: the latest run
    old, latest = tmp_path / "run" / "version_0", tmp_path / "run" / "version_1"
    # An older time for the run being evaluated, so any write to it would show.
    for path in [old, *old.rglob("*")]:
        os.utime(path, (1e9, 1e9))
    before = _files(old)
    ckpt = str(old / "checkpoints" / "last.ckpt")
    for stage in ("validate", "test"):
        main(_tiny(tmp_path, "--ckpt_path", ckpt, command=stage))
        assert f"{stage} results logged to {old / 'eval' / f'{stage}-0'}" in capsys.readouterr().out
    main(_tiny(tmp_path, "--ckpt_path", ckpt, command="validate"))  # a second one: validate-1
    # The run's own files (event file, finished.json, config.yaml) are as they were.
    assert _files(old) == before
    assert json.loads((old / "finished.json").read_text())["epoch"] == 2
    assert sorted(p.name for p in (old / "eval").iterdir()) == [
        "test-0",
        "validate-0",
        "validate-1",
    ]
    assert "val/err" in read_scalars(old / "eval" / "validate-0")
    assert "test/err" in read_scalars(old / "eval" / "test-0")
    # padam-report still reads the run with its per-epoch test error, and version_1 stays latest.
    record = read_run(old, tmp_path)
    assert record is not None and record.finished is not None
    assert sorted(read_scalars(old)["val/err"]) == sorted(read_scalars(latest)["val/err"])
    assert _latest_run_checkpoint(tmp_path / "run") == latest / "checkpoints" / "last.ckpt"


def test_the_report_reads_an_evaluated_run(tmp_path: Path) -> None:
    from padam_lightning.experiments.report import main as report

    main(_tiny(tmp_path))
    run = tmp_path / "run" / "version_0"
    main(_tiny(tmp_path, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), command="validate"))
    report([str(tmp_path), "--out", str(tmp_path / "report")])
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(results["groups"] if isinstance(results, dict) else results) == 1


def test_checkpointing_off_writes_no_checkpoint_and_nothing_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(_tiny(tmp_path, "--trainer.enable_checkpointing", "false"))
    run = tmp_path / "run" / "version_0"
    assert (run / "finished.json").is_file() and not (run / "checkpoints").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(_tiny(tmp_path, "--ckpt_path", "last"))
    assert exit_info.value.code == 2
    assert "no checkpoint found" in capsys.readouterr().err


def test_default_root_dir_holds_the_logs_as_in_lightning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    args = [a for a in _tiny(tmp_path) if not a.startswith("--trainer.logger.init_args.save")]
    args.remove(str(tmp_path))
    main([*args, "--trainer.default_root_dir", str(tmp_path / "root")])
    assert (tmp_path / "root" / "lightning_logs" / "run" / "version_0" / "finished.json").is_file()
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--trainer.logger", "false"],
        ["--trainer.fast_dev_run", "true"],
        ["--trainer.max_steps", "4"],
        ["--trainer.limit_val_batches", "0"],
        ["--trainer.check_val_every_n_epoch", "2"],
        ["--trainer.val_check_interval", "2"],
        ["--trainer.num_sanity_val_steps", "1"],
        ["--trainer.accumulate_grad_batches", "2"],
        ["--trainer.gradient_clip_val", "1.0"],
        ["--trainer.enable_progress_bar", "true", "--trainer.enable_model_summary", "true"],
    ],
)
def test_lightnings_trainer_flags_run(
    tmp_path: Path, flags: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    main(_tiny(tmp_path, "--trainer.max_epochs", "2", *flags))


def test_padam_fit_alone_prints_usage_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: padam-fit {fit,validate,test,predict}")
    assert err.count("  padam-fit fit --config configs/") == 2


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({"dataset": "cifar10", "data_dir": "data"}, "cifar10-wrn16_4-padam"),
        ({"dataset": "imagefolder", "data_dir": "data/cifar10-jpeg"}, "cifar10-jpeg-wrn16_4-padam"),
        (
            {"dataset": "imagefolder", "data_dir": "/datasets/cifar10-jpeg/"},
            "cifar10-jpeg-wrn16_4-padam",
        ),
    ],
)
def test_runs_are_named_after_the_data_they_read(data: dict[str, str], name: str) -> None:
    config = Namespace(data=Namespace(**data), model=Namespace(arch="wrn16_4", optimizer=None))
    assert run_name(config) == name


_SCRIPT = Path(sys.executable).with_name("padam-fit")


@pytest.mark.parametrize(
    ("argv0", "on_path", "executable"),
    [
        # The padam-fit that PATH finds: its name, as a user types it.
        (str(_SCRIPT), True, ["padam-fit"]),
        # A padam-fit that PATH does not find (a virtual environment not activated): its path.
        (str(_SCRIPT), False, [str(_SCRIPT.resolve())]),
        # python -m padam_lightning.cli (argv[0] is the package's __main__.py): the same again.
        (
            str(Path(padam_lightning.cli.__file__).with_name("__main__.py")),
            True,
            [sys.executable, "-m", "padam_lightning.cli"],
        ),
    ],
    ids=["on-path", "not-on-path", "python-m"],
)
def test_the_resume_command_runs_the_same_program_with_the_checkpoint(
    monkeypatch: pytest.MonkeyPatch, argv0: str, on_path: bool, executable: list[str]
) -> None:
    monkeypatch.setattr("sys.argv", [argv0])
    monkeypatch.setenv("PATH", str(_SCRIPT.parent) if on_path else "/nonexistent")
    last = Path("/runs/x/version_0/checkpoints/last.ckpt")
    args = ["fit", "--config", "a b.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=last"]
    expected = shlex.join([*executable, "fit", "--config", "a b.yaml", "--ckpt_path", str(last)])
    assert resume_command(args, last) == expected


def test_predict_saves_each_test_images_class_beside_the_run_and_leaves_the_run(
    tmp_path: Path,
) -> None:
    import torch

    main(_tiny(tmp_path))
    run = tmp_path / "run" / "version_0"
    before = _files(run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    main(_tiny(tmp_path, "--ckpt_path", ckpt, command="test"))
    main(_tiny(tmp_path, "--ckpt_path", ckpt, command="predict"))
    assert _files(run) == before
    saved = torch.load(run / "eval" / "predict-0" / "predictions.pt")
    # tiny.yaml evaluates the whole synthetic test split: one prediction per image, and their
    # error is the one `test` logged for the same checkpoint.
    test_err = read_scalars(run / "eval" / "test-0")["test/err"]
    assert saved["pred"].shape == saved["label"].shape and saved["pred"].dtype == torch.int64
    assert saved["err"] == pytest.approx(float((saved["pred"] != saved["label"]).float().mean()))
    assert saved["err"] == pytest.approx(next(iter(test_err.values())), abs=1e-6)


def _loggerless(*extra: str, command: str = "fit") -> list[str]:
    """The tiny run without a logger: Lightning's files go to the working directory."""
    return [
        command,
        "--config",
        str(CONFIGS / "wrn.yaml"),
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        *extra,
    ]


def test_a_run_without_a_logger_never_overwrites_files_in_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # A fresh folder: Lightning's documented layout, config.yaml and checkpoints/ there.
    main(_loggerless())
    assert (tmp_path / "config.yaml").is_file()
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # Resuming that run from its own checkpoint may rewrite its own files.
    main(_loggerless("--trainer.max_epochs", "2", "--ckpt_path", str(last)))
    assert torch_load_global_step(last) == 6  # 2 epochs of 3 batches

    # Another run there would replace the first run's checkpoints: refused, nothing touched.
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for stamp in before:
        os.utime(stamp, (1e9, 1e9))
    with pytest.raises(SystemExit) as exit_info:
        main(_loggerless())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("padam-fit: error:") == 1 and "Traceback" not in err
    assert "already exists; padam-fit does not overwrite it" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before

    # A user's own config.yaml in a folder without checkpoints: refused, kept, nothing written.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("mine\n")
    monkeypatch.chdir(mine)
    for extra in ([], ["--trainer.enable_checkpointing", "false"]):
        with pytest.raises(SystemExit):
            main(_loggerless(*extra))
        assert f"{mine / 'config.yaml'} already exists" in capsys.readouterr().err
    assert (mine / "config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]

    # An evaluation writes config-<stage>.yaml: the first one, never over an existing one.
    for stage in ("validate", "test"):
        main(_loggerless("--ckpt_path", str(last), command=stage))
        written = mine / f"config-{stage}.yaml"
        assert written.read_text().startswith("# lightning.pytorch==")
        written.write_text("mine\n")
        with pytest.raises(SystemExit):
            main(_loggerless("--ckpt_path", str(last), command=stage))
        assert f"config-{stage}.yaml already exists" in capsys.readouterr().err
        assert written.read_text() == "mine\n"


def torch_load_global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def test_evaluating_a_checkpoint_with_another_network_or_data_speaks_of_an_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(_tiny(tmp_path))
    ckpt = str(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt")
    for stage in ("validate", "test", "predict"):
        for extra, expected in (
            (
                ["--model.arch", "wrn16_2"],
                "wrn10_1 network, but this evaluation asks for wrn16_2",
            ),
            (["--data.synthetic_num_classes", "5"], "10 classes, but this evaluation's data has 5"),
        ):
            with pytest.raises(SystemExit) as exit_info:
                main(_tiny(tmp_path, "--ckpt_path", ckpt, *extra, command=stage))
            assert exit_info.value.code == 2
            err = capsys.readouterr().err
            assert expected in err and "An evaluation loads the checkpoint's weights" in err
            assert "resum" not in err.lower(), err
    # The arch's message names the option that fixes it.
    with pytest.raises(SystemExit):
        main(_tiny(tmp_path, "--ckpt_path", ckpt, "--model.arch", "vgg11", command="test"))
    assert "(or --model.arch wrn10_1)." in capsys.readouterr().err
