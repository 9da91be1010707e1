"""padam-sweep end to end with a fake padam-fit: dry run, skip, resume, failures, executors."""

from __future__ import annotations

import json
import shlex
import stat
import sys
from pathlib import Path

import pytest
import submitit
import yaml

from padam_lightning.errors import UserError
from padam_lightning.experiments.sweep import main
from padam_lightning.experiments.sweep_jobs import SlurmOptions, slurm_executor

FAKE_FIT = Path(__file__).with_name("fake_fit.py")
FIT_COMMAND = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_FIT))}"


def _write_sweep(folder: Path, grid: dict, **extra: object) -> Path:
    (folder / "a.yaml").write_text("trainer: {max_epochs: 1}\n")
    (folder / "b.yaml").write_text("trainer: {max_epochs: 2}\n")
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "demo", "grid": grid, **extra}, sort_keys=False))
    return path


def _calls(run_dir: Path) -> list[dict]:
    path = run_dir / "calls.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dry_run_prints_states_and_full_commands(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml", "b": "b.yaml"}}, seeds=[0, 1])
    done = project / "logs" / "demo" / "a-seed1"
    done.mkdir(parents=True)
    (done / "finished.json").write_text("{}")
    interrupted = project / "logs" / "demo" / "b-seed0" / "checkpoints"
    interrupted.mkdir(parents=True)
    (interrupted / "last.ckpt").write_bytes(b"x")

    code = main([str(sweep), "--dry-run", "--save-dir", "logs", "--fit-command", "padam-fit"])

    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"padam-sweep: sweep demo ({sweep}): 4 runs (cfg 2 x seeds 2) in logs/demo: "
        "2 to start, 1 to resume, 1 finished"
    )
    logger = "--trainer.logger.init_args.save_dir logs --trainer.logger.init_args.name demo"
    assert out[1:] == [
        "# a-seed0: new",
        f"padam-fit fit --config a.yaml --seed_everything 0 {logger} "
        "--trainer.logger.init_args.version a-seed0",
        "# a-seed1: finished (skipped)",
        "# b-seed0: resume",
        f"padam-fit fit --config b.yaml --seed_everything 0 {logger} "
        "--trainer.logger.init_args.version b-seed0 --ckpt_path last",
        "# b-seed1: new",
        f"padam-fit fit --config b.yaml --seed_everything 1 {logger} "
        "--trainer.logger.init_args.version b-seed1",
    ]
    assert not (project / "logs" / "demo" / "a-seed0").exists()


def test_local_sweep_skips_finished_runs_and_resumes_interrupted_ones(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(
        project,
        {
            "cfg": {
                "a": "a.yaml",
                "crash": {"config": "b.yaml", "overrides": {"fake.crash_once": True}},
            }
        },
    )
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND, "--", "--x.y", "7"]
    runs = project / "lightning_logs" / "demo"

    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 run(s) finished, 0 skipped (already finished), 1 failed" in out
    assert "FAILED crash-seed0: padam-fit exited with status 1" in out
    assert "crashed after writing last.ckpt" in out  # the end of its fit.log
    first = _calls(runs / "a-seed0")
    assert len(first) == 1
    assert first[0]["cwd"] == str(project)
    assert first[0]["argv"][-8:-6] == ["--x.y", "7"]  # passthrough before the logger flags
    assert "--ckpt_path" not in _calls(runs / "crash-seed0")[0]["argv"]

    assert main(args) == 0  # restart: a is skipped, crash resumes and finishes
    out = capsys.readouterr().out
    assert "1 run(s) finished, 1 skipped (already finished), 0 failed" in out
    assert len(_calls(runs / "a-seed0")) == 1
    resumed = _calls(runs / "crash-seed0")
    assert len(resumed) == 2 and resumed[1]["argv"][-2:] == ["--ckpt_path", "last"]
    log = (runs / "crash-seed0" / "fit.log").read_text()
    assert log.count("### padam-sweep") == 2 and "--ckpt_path last" in log

    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_a_run_finished_by_a_short_trial_resumes_for_the_configured_epochs(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"b": "b.yaml"}})  # b.yaml: max_epochs 2
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND]
    run_dir = project / "lightning_logs" / "demo" / "b-seed0"
    assert main([*args, "--", "--trainer.max_epochs", "1"]) == 0
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 1
    # The trial is finished for a 1-epoch sweep, so the same command skips it...
    assert main([*args, "--", "--trainer.max_epochs=1"]) == 0
    assert len(_calls(run_dir)) == 1
    capsys.readouterr()
    # ...but the real sweep (2 epochs) continues it from its checkpoint.
    assert main([*args, "--dry-run"]) == 0
    assert "# b-seed0: resume" in capsys.readouterr().out
    assert main(args) == 0
    calls = _calls(run_dir)
    assert len(calls) == 2 and calls[1]["argv"][-2:] == ["--ckpt_path", "last"]
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 2


def test_a_config_passed_through_decides_the_epochs_a_run_is_finished_for(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's way: padam-sweep SWEEP.yaml -- --config configs/experiments/reproduction.yaml
    sweep = _write_sweep(project, {"cfg": {"b": "b.yaml"}})  # b.yaml: max_epochs 2
    (project / "short.yaml").write_text("trainer: {max_epochs: 1}\n")
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND]
    run_dir = project / "lightning_logs" / "demo" / "b-seed0"
    assert main([*args, "--", "--config", "short.yaml"]) == 0
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 1
    # Finished for the epochs short.yaml sets: a restart skips it rather than resume it again.
    assert main([*args, "--", "--config", "short.yaml"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(_calls(run_dir)) == 1
    # Later arguments win, as in padam-fit: a --config file or --trainer.max_epochs after it.
    for passthrough, state in [
        (["--config=short.yaml"], "finished (skipped)"),
        (["--config", "short.yaml", "--trainer.max_epochs", "2"], "resume"),
        (["--trainer.max_epochs=2", "--config", "short.yaml"], "finished (skipped)"),
        (["--config", "short.yaml", "--config", "b.yaml"], "resume"),
    ]:
        assert main([*args, "--dry-run", "--", *passthrough]) == 0
        assert f"# b-seed0: {state}" in capsys.readouterr().out, passthrough


@pytest.mark.parametrize(
    "damage",
    [b'{"epoch": 0, "max_ep', b"", b"[1]", b"\xff\xfe"],
    ids=["truncated", "empty", "not-an-object", "not-utf8"],
)
def test_a_damaged_finished_json_resumes_the_run(
    project: Path, capsys: pytest.CaptureFixture[str], damage: bytes
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND]
    run_dir = project / "lightning_logs" / "demo" / "a-seed0"
    assert main(args) == 0
    (run_dir / "finished.json").write_bytes(damage)
    capsys.readouterr()

    assert main([*args, "--dry-run"]) == 0
    assert "# a-seed0: resume" in capsys.readouterr().out
    assert main(args) == 0  # resumed from last.ckpt, which writes finished.json again
    calls = _calls(run_dir)
    assert len(calls) == 2 and calls[1]["argv"][-2:] == ["--ckpt_path", "last"]
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 1
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_resuming_with_other_settings_warns(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    run_dir = project / "lightning_logs" / "demo" / "a-seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    started = (
        "padam-fit fit --config a.yaml --seed_everything 0 --trainer.logger.init_args.save_dir "
        "lightning_logs --trainer.logger.init_args.name demo "
        "--trainer.logger.init_args.version a-seed0"
    )
    (run_dir / "fit.log").write_text(f"### padam-sweep 2026-01-01T00:00:00: {started}\nlog\n")
    dry_run = [str(sweep), "--dry-run", "--fit-command", "/elsewhere/padam-fit"]
    assert main(dry_run) == 0
    assert "warning" not in capsys.readouterr().err  # same settings; the command's path aside
    assert main([*dry_run, "--", "--trainer.max_epochs", "9"]) == 0
    assert "warning" not in capsys.readouterr().err  # training on for more epochs is resuming
    assert main([*dry_run, "--", "--model.optimizer.init_args.lr", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "warning: a-seed0 resumes with other settings than it started with" in err


def test_submitit_local_queues_runs_one_per_gpu_and_reports_failures(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(
        project, {"cfg": {"a": "a.yaml", "b": "b.yaml", "bad": {"fake.fail": True}}}
    )
    args = [str(sweep), "--executor", "submitit-local", "--gpus", "3,5"]
    code = main([*args, "--fit-command", FIT_COMMAND])
    out = capsys.readouterr().out
    assert code == 1
    runs = project / "lightning_logs" / "demo"
    assert (runs / "a-seed0" / "finished.json").is_file()
    assert (runs / "b-seed0" / "finished.json").is_file()
    assert "2 run(s) finished, 0 skipped (already finished), 1 failed" in out
    assert "FAILED bad-seed0: padam-fit exited with status 3" in out
    assert "the fake run failed on purpose" in out  # the end of its fit.log
    # Two GPUs, three runs: the first two get one GPU each, the third waits for a free one.
    seen = [_calls(runs / f"{name}-seed0")[0]["cuda_visible_devices"] for name in ["a", "b", "bad"]]
    assert seen[:2] == ["3", "5"] and seen[2] in ("3", "5")
    assert out.count("started on GPU") == 3


def test_user_errors_print_one_line_and_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml", "gone": "missing.yaml"}})
    assert main([str(sweep), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("padam-sweep: error: config file(s) not found: missing.yaml")
    assert err.count("\n") == 1
    assert main([str(sweep), "--dry-run", "--only", "zzz*"]) == 2
    assert "--only zzz* matches none" in capsys.readouterr().err
    assert main([str(sweep), "--no-wait"]) == 2
    assert "--no-wait is for --executor slurm only" in capsys.readouterr().err


def test_only_filters_runs(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml", "b": "b.yaml"}}, seeds=[0, 1])
    assert main([str(sweep), "--dry-run", "--only", "b-*", "--only", "a-seed1"]) == 0
    names = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# ")]
    assert names == ["# a-seed1: new", "# b-seed0: new", "# b-seed1: new"]


def test_help_describes_executors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--executor {auto,local,submitit-local,slurm}" in text
    assert "--slurm-partition" in text and "--dry-run" in text


def test_slurm_executor_writes_one_gpu_per_run_sbatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="srun"):
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        slurm_executor(tmp_path / "f", SlurmOptions(), job_name="demo")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake_bin))
    options = SlurmOptions(
        partition="gpu",
        timeout_min=600,
        cpus_per_run=6,
        mem_gb=32,
        additional=(("account", "proj"),),
    )
    executor = slurm_executor(tmp_path / "f", options, job_name="demo")
    slurm = executor._executor
    assert isinstance(slurm, submitit.SlurmExecutor)
    text = slurm._make_submission_file_text("python -m x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=600",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --mem=32GB",
        "#SBATCH --account=proj",
        "#SBATCH --job-name=demo",
    ):
        assert line in text
