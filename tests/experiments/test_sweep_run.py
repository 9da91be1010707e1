"""padam-sweep with a fake padam-fit: dry run, skip, resume, failures, executors, signals."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch
import yaml

from padam_lightning.errors import UserError
from padam_lightning.experiments.sweep import build_parser, main, slurm_parameters
from padam_lightning.experiments.sweep_jobs import slurm_executor

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


@pytest.fixture
def padam_fit_on_path(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake as ``padam-fit`` on PATH (bin/padam-fit), for commands printed by that name."""
    script = project / "bin" / "padam-fit"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\nexec {FIT_COMMAND} "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return script


@pytest.mark.usefixtures("padam_fit_on_path")
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
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND, "--", "--model.y", "7"]
    runs = project / "lightning_logs" / "demo"

    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 run(s) finished, 0 skipped (already finished), 1 failed" in out
    assert "FAILED crash-seed0: padam-fit exited with status 1" in out
    assert "crashed after writing last.ckpt" in out  # the end of its fit.log
    first = _calls(runs / "a-seed0")
    assert len(first) == 1
    assert first[0]["cwd"] == str(project)
    assert first[0]["argv"][-8:-6] == ["--model.y", "7"]  # passthrough before the logger flags
    assert "--ckpt_path" not in _calls(runs / "crash-seed0")[0]["argv"]

    assert main(args) == 0  # restart: a is skipped, crash resumes and finishes
    out = capsys.readouterr().out
    assert "1 run(s) finished, 1 skipped (already finished), 0 failed" in out
    assert len(_calls(runs / "a-seed0")) == 1
    resumed = _calls(runs / "crash-seed0")
    assert len(resumed) == 2 and resumed[1]["argv"][-2:] == ["--ckpt_path", "last"]
    log = (runs / "crash-seed0" / "fit.log").read_text()
    assert log.count("### padam-sweep") == 2 and "--ckpt_path last" in log
    # What the run is, written by the sweep beside the run's files.
    identity = json.loads((runs / "crash-seed0" / "run.json").read_text())
    assert identity["sweep"] == "demo" and identity["run"] == "crash-seed0"
    assert identity["axes"] == {"cfg": {"label": "crash", "title": "crash", "index": 1}}
    assert identity["seed"] == 0
    assert identity["arguments"] == resumed[0]["argv"]  # without the resume flag

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
    assert main([*args, "--", "--trainer.max_epochs", "1"]) == 0
    assert len(_calls(run_dir)) == 1
    capsys.readouterr()
    # ...but the real sweep (2 epochs) continues it from its checkpoint.
    assert main([*args, "--dry-run"]) == 0
    assert "# b-seed0: resume" in capsys.readouterr().out
    assert main(args) == 0
    calls = _calls(run_dir)
    assert len(calls) == 2 and calls[1]["argv"][-2:] == ["--ckpt_path", "last"]
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 2


def test_a_run_finished_with_other_arguments_resumes_and_with_the_same_is_skipped(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's way: padam-sweep SWEEP.yaml -- --config configs/experiments/reproduction.yaml
    sweep = _write_sweep(project, {"cfg": {"b": "b.yaml"}})  # b.yaml: max_epochs 2
    (project / "short.yaml").write_text("trainer: {max_epochs: 1}\n")
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND]
    run_dir = project / "lightning_logs" / "demo" / "b-seed0"
    assert main([*args, "--", "--config", "short.yaml"]) == 0
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 1
    # The same arguments again: finished, skipped (padam-sweep reads no config to decide it).
    assert main([*args, "--", "--config", "short.yaml"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(_calls(run_dir)) == 1
    # Other arguments: the run resumes from its checkpoint, and padam-fit trains on (or, when
    # the epochs are already done, only writes finished.json again).
    longer = ["--config", "short.yaml", "--trainer.max_epochs", "2"]
    assert main([*args, "--dry-run", "--", *longer]) == 0
    assert "# b-seed0: resume" in capsys.readouterr().out
    assert main([*args, "--", *longer]) == 0
    assert json.loads((run_dir / "finished.json").read_text())["max_epochs"] == 2


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
    project: Path, capsys: pytest.CaptureFixture[str], padam_fit_on_path: Path
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    run_dir = project / "lightning_logs" / "demo" / "a-seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    started = (
        "fit --config a.yaml --seed_everything 0 --trainer.logger.init_args.save_dir "
        "lightning_logs --trainer.logger.init_args.name demo "
        "--trainer.logger.init_args.version a-seed0"
    )
    (run_dir / "run.json").write_text(json.dumps({"arguments": started.split()}))
    dry_run = [str(sweep), "--dry-run", "--fit-command", str(padam_fit_on_path)]
    assert main(dry_run) == 0
    assert "warning" not in capsys.readouterr().err  # same settings; the command's path aside
    assert main([*dry_run, "--", "--trainer.max_epochs", "9"]) == 0
    assert "warning" not in capsys.readouterr().err  # training on for more epochs is resuming
    assert main([*dry_run, "--", "--model.optimizer.init_args.lr", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "warning: a-seed0 resumes with other settings than it started with" in err
    assert "run.json" in err


@pytest.fixture
def six_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine whose torch sees GPUs 0-5 (the runs themselves are fakes and use none)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 6)


@pytest.mark.usefixtures("six_gpus")
def test_gpu_runs_queue_one_per_gpu_and_report_failures(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(
        project, {"cfg": {"a": "a.yaml", "b": "b.yaml", "bad": {"fake.fail": True}}}
    )
    args = [str(sweep), "--executor", "local", "--gpus", "3,5"]
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
    assert sorted(seen[:2]) == ["3", "5"] and seen[2] in ("3", "5")
    assert out.count(" on GPU ") == 3


def _rendezvous_sweep(project: Path, runs: int) -> Path:
    """A sweep of ``runs`` runs that finish only if all of them run at the same time."""
    meeting = {"fake.rendezvous": str(project / "meeting"), "fake.parties": runs}
    grid = {"cfg": {f"r{i}": {"config": "a.yaml", "overrides": meeting} for i in range(runs)}}
    return _write_sweep(project, grid)


def test_runs_per_gpu_runs_k_at_once_on_the_cpu(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a machine without GPUs
    sweep = _rendezvous_sweep(project, 3)
    args = [str(sweep), "--executor", "local", "--fit-command", FIT_COMMAND]
    assert main([*args, "--runs-per-gpu", "3"]) == 0  # all three met: they ran at once
    out = capsys.readouterr().out
    assert "3 run(s) finished, 0 skipped (already finished), 0 failed" in out
    assert out.count(" on CPU: ") == 3
    for name in ("r0", "r1", "r2"):
        (call,) = _calls(project / "lightning_logs" / "demo" / f"{name}-seed0")
        assert call["cuda_visible_devices"] == ""


@pytest.mark.usefixtures("six_gpus")
def test_runs_per_gpu_shares_each_gpu_among_k_runs(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _rendezvous_sweep(project, 4)
    args = [str(sweep), "--gpus", "3,5", "--runs-per-gpu", "2", "--fit-command", FIT_COMMAND]
    assert main(args) == 0  # four runs at once on two GPUs
    runs = project / "lightning_logs" / "demo"
    seen = sorted(_calls(runs / f"r{i}-seed0")[0]["cuda_visible_devices"] for i in range(4))
    assert seen == ["3", "3", "5", "5"]
    assert "4 run(s) finished" in capsys.readouterr().out


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
    assert main([str(sweep), "--dry-run", "--runs-per-gpu", "0"]) == 2
    assert "--runs-per-gpu must be at least 1" in capsys.readouterr().err
    assert main([str(sweep), "--executor", "slurm", "--runs-per-gpu", "2"]) == 2
    assert "--runs-per-gpu is for the local executor" in capsys.readouterr().err


def test_only_filters_runs(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml", "b": "b.yaml"}}, seeds=[0, 1])
    args = [str(sweep), "--dry-run", "--fit-command", FIT_COMMAND]
    assert main([*args, "--only", "b-*", "--only", "a-seed1"]) == 0
    names = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# ")]
    assert names == ["# a-seed1: new", "# b-seed0: new", "# b-seed1: new"]


def test_help_describes_executors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--executor {local,slurm}" in text
    assert "--slurm-partition" in text and "--dry-run" in text and "--runs-per-gpu K" in text


def test_slurm_executor_writes_one_gpu_per_run_sbatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--slurm-partition", "gpu", "--timeout-min", "600", "--slurm-cpus-per-run", "6"]
    flags += ["--slurm-mem-gb", "32", "--slurm-additional", "account=proj"]
    parameters = slurm_parameters(build_parser().parse_args(["s.yaml", *flags]), job_name="demo")
    with pytest.raises(UserError, match="srun"):
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        slurm_executor(tmp_path / "f", parameters)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake_bin))
    executor = slurm_executor(tmp_path / "f", parameters)
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
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --nodes=1",
    ):
        assert line in text
    # The defaults: 72 h, 8 CPUs and one GPU per run; no memory or partition line.
    defaults = slurm_parameters(build_parser().parse_args(["s.yaml"]), job_name="demo")
    slurm = slurm_executor(tmp_path / "g", defaults)._executor
    assert isinstance(slurm, submitit.SlurmExecutor)
    text = slurm._make_submission_file_text("x", "u")
    assert "#SBATCH --time=4320" in text and "#SBATCH --cpus-per-task=8" in text
    assert "#SBATCH --gpus-per-node=1" in text
    assert "--mem" not in text and "--partition" not in text


def test_slurm_additional_needs_key_value(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    assert main([str(sweep), "--executor", "slurm", "--slurm-additional", "account"]) == 2
    assert "--slurm-additional account: expected KEY=VALUE" in capsys.readouterr().err


def test_paths_that_cannot_work_are_one_line_before_any_run(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    run = [str(sweep), "--fit-command", FIT_COMMAND]

    def error_of(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("padam-sweep: error: ") and err.count("\n") == 1, err
        return err.removeprefix("padam-sweep: error: ").strip()

    # The sweep file: a folder, not text.
    assert error_of([str(project)]) == (
        f"sweep file {project} is a folder; pass a YAML file such as "
        "configs/sweeps/optimizers.yaml."
    )
    (project / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    assert error_of([str(project / "binary.yaml")]).startswith(
        f"sweep file {project / 'binary.yaml'} is not valid YAML: "
    )
    # --save-dir: a file, a path below a file, a file where the sweep's folder goes (the
    # wording after "pass a folder" is run_logs.check_output_folder's).
    (project / "notes.txt").write_text("mine")
    for dry in ([], ["--dry-run"]):
        assert error_of([*run, *dry, "--save-dir", "notes.txt"]).startswith(
            "--save-dir notes.txt is a file, not a folder; pass a folder"
        )
    assert error_of([*run, "--save-dir", "notes.txt/logs"]).startswith(
        "--save-dir notes.txt/logs: notes.txt is a file, not a folder; pass a folder"
    )
    (project / "logs").mkdir()
    (project / "logs" / "demo").write_text("mine")
    assert error_of([*run, "--save-dir", "logs"]).startswith(
        "the sweep's folder logs/demo is a file, not a folder; pass a folder"
    )
    # Not writable (os.access stands in for a read-only folder: tests may run as root).
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path).name != "ro" and real_access(path, mode)
    )
    (project / "ro").mkdir()
    assert error_of([*run, "--save-dir", "ro/logs"]) == (
        "--save-dir ro/logs: cannot write into ro (permission denied)."
    )
    assert (project / "notes.txt").read_text() == "mine"
    assert not any(project.rglob("calls.jsonl"))  # no run started


@pytest.mark.parametrize(
    ("gpu_count", "visible", "gpus", "message"),
    [
        # The tester's case: --gpus 5 on a machine without GPU 5, and without GPUs at all.
        (2, None, "5", "--gpus 5: no GPU 5 here (torch sees 2 GPU(s); usable ids: 0, 1)"),
        (0, None, "5", "--gpus 5: no GPU 5 here (torch sees 0 GPU(s); usable ids: none)"),
        (0, None, "0", "--gpus 0: no GPU 0 here (torch sees 0 GPU(s); usable ids: none)"),
        (2, None, "0,2,7", "--gpus 0,2,7: no GPU 2, 7 here"),
        # CUDA_VISIBLE_DEVICES limits what may be used; its ids are nvidia-smi's.
        (2, "2,3", "0", "--gpus 0: no GPU 0 here (CUDA_VISIBLE_DEVICES=2,3, of which torch "),
        (0, "", "0", "--gpus 0: no GPU 0 here (CUDA_VISIBLE_DEVICES=, of which torch sees 0"),
        (0, "-1", "1", "--gpus 1: no GPU 1 here (CUDA_VISIBLE_DEVICES=-1, of which torch"),
        # CUDA stops at the first id the machine lacks: 5 is listed but not usable.
        (1, "0,5", "5", "--gpus 5: no GPU 5 here (CUDA_VISIBLE_DEVICES=0,5, of which torch sees 1"),
        # Without --gpus: every listed GPU must exist.
        (1, "0,5", None, "CUDA_VISIBLE_DEVICES=0,5 lists GPUs this machine does not have"),
        (2, "GPU-1234", "0", "CUDA_VISIBLE_DEVICES=GPU-1234 does not list GPUs by index"),
        (2, None, "1,1", "--gpus 1,1: expected distinct non-negative GPU indices like 0,1"),
        (2, None, "-1", "--gpus -1: expected distinct non-negative GPU indices like 0,1"),
    ],
)
def test_gpus_the_machine_does_not_show_are_refused_before_any_run(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    gpu_count: int,
    visible: str | None,
    gpus: str | None,
    message: str,
) -> None:
    args = _sweep_on_gpus(project, monkeypatch, gpu_count, visible, gpus)
    runs = [args] if gpus is None else [args, [*args, "--dry-run"]]
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"padam-sweep: error: {message}"), err
        assert err.count("\n") == 1
    assert not any(project.rglob("calls.jsonl"))  # no run started


def _sweep_on_gpus(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpu_count: int,
    visible: str | None,
    gpus: str | None,
) -> list[str]:
    """A one-run sweep's arguments on a machine with ``gpu_count`` GPUs and that listing."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpu_count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    return [str(sweep), "--fit-command", FIT_COMMAND, *(["--gpus", gpus] if gpus else [])]


@pytest.mark.parametrize(
    ("gpu_count", "visible", "gpus", "seen"),
    [
        (2, None, "1", "1"),
        (2, "2,3", "3", "3"),  # an id CUDA_VISIBLE_DEVICES lists, as nvidia-smi numbers it
        (2, "2,3", None, "2"),  # the first of the listed GPUs
        (0, "", None, None),  # no GPUs, none asked for: CPU runs, as before
    ],
)
def test_visible_gpus_are_used(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    gpu_count: int,
    visible: str | None,
    gpus: str | None,
    seen: str | None,
) -> None:
    args = _sweep_on_gpus(project, monkeypatch, gpu_count, visible, gpus)
    assert main(args) == 0
    (call,) = _calls(project / "lightning_logs" / "demo" / "a-seed0")
    assert call["cuda_visible_devices"] == (visible if seen is None else seen)


def test_runs_stopped_by_signals_are_interrupted_and_finished_ones_finished(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # How padam-fit can end: its status after Ctrl-C (130) or SIGTERM (143), killed by a signal
    # (-N: e.g. a Ctrl-C after its handler was gone), and the same after finished.json.
    endings = {
        "int130": {"fake.exit": 130},
        "int-2": {"fake.exit": -2},
        "term143": {"fake.exit": 143},
        "term-15": {"fake.exit": -15},
        "hup-1": {"fake.exit": -1},
        "fin-2": {"fake.exit": -2, "fake.finish_first": True},
        "fin130": {"fake.exit": 130, "fake.finish_first": True},
        "kill-9": {"fake.exit": -9},
    }
    grid = {"end": {name: {"config": "a.yaml", "overrides": o} for name, o in endings.items()}}
    sweep = _write_sweep(project, grid)
    assert main([str(sweep), "--fit-command", FIT_COMMAND]) == 1
    out = capsys.readouterr().out
    assert "2 run(s) finished, 0 skipped (already finished), 1 failed, 5 interrupted" in out
    assert "fin-2-seed0: finished in " in out and "fin130-seed0: finished in " in out
    resume = "rerun the same padam-sweep command to resume it from its last checkpoint"
    for name, how, status in [
        ("int130", "Ctrl-C (SIGINT, ", 130),
        ("int-2", "Ctrl-C (SIGINT, ", -2),
        ("term143", "SIGTERM (", 143),
        ("term-15", "SIGTERM (", -15),
        ("hup-1", "SIGHUP (", -1),
    ]:
        reason = f"padam-fit was stopped by {how}exit status {status}); {resume}"
        assert f"{name}-seed0: interrupted after " in out and f": {reason}\n" in out
        assert f"INTERRUPTED {name}-seed0: {reason}\n" in out
    assert "FAILED kill-9-seed0: padam-fit exited with status -9, killed by SIGKILL" in out
    assert out.count("FAILED") == 2  # its progress line and its summary line
    # The same command: the finished runs are skipped, the others resume.
    assert main([str(sweep), "--dry-run", "--fit-command", FIT_COMMAND]) == 0
    out = capsys.readouterr().out
    assert "6 to resume, 2 finished" in out


def test_a_finished_json_from_an_earlier_attempt_does_not_make_a_run_finished(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"b": "b.yaml"}})
    args = [str(sweep), "--fit-command", FIT_COMMAND]
    assert main([*args, "--", "--trainer.max_epochs", "1"]) == 0  # a trial: finished.json
    # Other arguments: it resumes; this attempt ends (status 0) without writing finished.json.
    assert main([*args, "--", "--fake.exit", "0"]) == 1
    out = capsys.readouterr().out
    assert "0 run(s) finished, 0 skipped (already finished), 1 failed" in out
    assert "FAILED b-seed0: padam-fit stopped before the last epoch (no finished.json" in out
    # ... and one stopped by Ctrl-C is interrupted, not finished by the trial's file.
    assert main([*args, "--", "--fake.exit", "130"]) == 1
    assert "INTERRUPTED b-seed0: padam-fit was stopped by Ctrl-C" in capsys.readouterr().out


def test_ctrl_c_in_the_terminal_reports_the_running_run_as_interrupted(project: Path) -> None:
    # Ctrl-C goes to the terminal's whole process group, which holds padam-sweep but not the
    # runs (each in its own session): padam-sweep passes it on once (a second stops padam-fit at
    # once, without a checkpoint).
    started = project / "started"
    sweep = _write_sweep(
        project,
        {"cfg": {"w": {"config": "a.yaml", "overrides": {"fake.wait_for_sigint": str(started)}}}},
    )
    command = [sys.executable, "-m", "padam_lightning.experiments.sweep", str(sweep)]
    with subprocess.Popen(
        [*command, "--fit-command", FIT_COMMAND],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    ) as sweep_process:
        deadline = time.monotonic() + 60
        while not started.exists() and sweep_process.poll() is None:
            assert time.monotonic() < deadline, "the fake run never started"
            time.sleep(0.05)
        os.killpg(sweep_process.pid, signal.SIGINT)
        out, _ = sweep_process.communicate(timeout=60)
    assert sweep_process.returncode == 130, out
    assert "padam-sweep: [1/1] w-seed0: interrupted after " in out, out
    resume = "rerun the same padam-sweep command to resume it from its last checkpoint"
    assert f"was stopped by Ctrl-C (SIGINT, exit status 130); {resume}" in out, out
    assert "FAILED" not in out
    assert out.rstrip().endswith(
        "padam-sweep: interrupted; run the same command again to resume the sweep."
    )


def _print_config_calls(project: Path) -> list[list[str]]:
    path = project / "print_config.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_option_padam_fit_refuses_after_the_dashes_stops_the_sweep_before_any_run(
    project: Path, capsys: pytest.CaptureFixture[str], dry_run: bool
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml", "b": "b.yaml"}}, seeds=[0, 1])
    args = [str(sweep), "--fit-command", FIT_COMMAND, *(["--dry-run"] if dry_run else [])]
    assert main([*args, "--", "--trainer.max_epochs", "2", "--traner.devices", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "padam-sweep: error: padam-fit refuses the arguments of run a-seed0 (parsed with "
        "--print_config before any run starts): unknown option --traner.devices\n"
    )
    assert "# a-seed0" not in captured.out  # the dry run's commands are not printed
    assert not any(project.rglob("calls.jsonl"))  # no run started
    # Parsed once, with the first run's full arguments.
    (checked,) = _print_config_calls(project)
    first_run = ["fit", "--config", "a.yaml", "--seed_everything", "0"]
    assert checked[:7] == [*first_run, "--trainer.max_epochs", "2"]
    # Good arguments: one parse, of the first run still to do (a-seed0 is finished), then runs.
    (project / "print_config.jsonl").unlink()
    done = project / "lightning_logs" / "demo" / "a-seed0"
    done.mkdir(parents=True)
    (done / "finished.json").write_text("{}")
    assert main([*args, "--", "--trainer.max_epochs", "2"]) == 0
    (checked,) = _print_config_calls(project)
    assert checked[-1] == "a-seed1" and checked[-2] == "--trainer.logger.init_args.version"
    assert any(project.rglob("calls.jsonl")) != dry_run


def test_a_finished_sweep_is_not_parsed_and_a_missing_fit_command_is_one_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    missing = str(project / "no" / "padam-fit")
    for dry in ([], ["--dry-run"]):
        assert main([str(sweep), "--fit-command", missing, *dry]) == 2
        assert capsys.readouterr().err == (
            f"padam-sweep: error: cannot run the training command {missing}: No such file or "
            "directory; check --fit-command or the installation.\n"
        )
    assert main([str(sweep), "--fit-command", FIT_COMMAND]) == 0
    (project / "print_config.jsonl").unlink()
    assert main([str(sweep), "--fit-command", missing, "--dry-run"]) == 0  # nothing to do
    assert main([str(sweep), "--fit-command", missing]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not _print_config_calls(project)


@pytest.mark.slow
def test_a_typo_after_the_dashes_is_named_by_the_real_padam_fit(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real parser (a few seconds: it imports Lightning), on the tester's kind of typo.
    sweep = _write_sweep(project, {"cfg": {"a": "a.yaml"}})
    assert main([str(sweep), "--dry-run", "--", "--trainer.max_epohcs", "2"]) == 2
    assert capsys.readouterr().err == (
        "padam-sweep: error: padam-fit refuses the arguments of run a-seed0 (parsed with "
        "--print_config before any run starts): unrecognized arguments: --trainer.max_epohcs 2 "
        "(did you mean --trainer.max_epochs?)\n"
    )


def test_an_interrupted_run_without_a_checkpoint_is_said_to_start_again(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stopped = {"fake.exit": 130, "fake.no_checkpoint": True}
    sweep = _write_sweep(project, {"cfg": {"a": {"config": "a.yaml", "overrides": stopped}}})
    assert main([str(sweep), "--fit-command", FIT_COMMAND]) == 1
    assert (
        "INTERRUPTED a-seed0: padam-fit was stopped by Ctrl-C (SIGINT, exit status 130); it saved "
        "no checkpoint; rerun the same padam-sweep command to start it again\n"
    ) in capsys.readouterr().out


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (one that ended, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; SIGKILL needs PR_SET_PDEATHSIG")
@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGKILL],
    ids=lambda signum: signum.name,
)
def test_a_signal_to_padam_sweep_stops_its_runs_and_the_same_command_ends_each_once(
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    signum: signal.Signals,
) -> None:
    # Three runs of 20 steps, two at once; the signal goes to padam-sweep alone (as `kill PID`
    # or a scheduler sends it), not to its process group.
    steps = {"fake.steps": 20}
    sweep = _write_sweep(
        project, {"cfg": {f"r{i}": {"config": "a.yaml", "overrides": steps} for i in range(3)}}
    )
    args = [str(sweep), "--fit-command", FIT_COMMAND, "--runs-per-gpu", "2"]
    runs = project / "lightning_logs" / "demo"
    stopped = [runs / "r0-seed0", runs / "r1-seed0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # two CPU slots
    monkeypatch.setenv("FAKE_FIT_STEP_S", "0.5")
    with subprocess.Popen(
        [sys.executable, "-m", "padam_lightning.experiments.sweep", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as sweep_process:
        deadline = time.monotonic() + 60
        while not all((run / "steps.txt").is_file() for run in stopped):
            assert sweep_process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        sweep_process.send_signal(signum)
        out, _ = sweep_process.communicate(timeout=60)
    pids = [call["pid"] for run in stopped for call in _calls(run)]
    if signum is signal.SIGKILL:  # the runs got SIGTERM when padam-sweep died
        while any(map(_running, pids)):
            assert time.monotonic() < deadline + 60, "a run outlived padam-sweep"
            time.sleep(0.05)
    else:  # padam-sweep waited for its runs to save and end
        assert sweep_process.returncode == 128 + signum, out
        assert not any(map(_running, pids))
        assert "0 failed, 2 interrupted, 1 not started" in out
        assert out.rstrip().endswith("interrupted; run the same command again to resume the sweep.")
    for run in stopped:
        got = (run / "signals.txt").read_text().split()
        if signum is signal.SIGKILL:  # from Linux: once for each thread of padam-sweep it outlived
            assert set(got) == {"SIGTERM"}, got
        else:  # once, and a closed terminal's SIGHUP as SIGTERM, padam-fit's "save and stop"
            assert got == ["SIGTERM" if signum is signal.SIGHUP else signum.name], out
    assert not (runs / "r2-seed0").exists()  # no further run started

    # The same command: the two stopped runs resume from last.ckpt, the third starts.
    monkeypatch.setenv("FAKE_FIT_STEP_S", "0.01")
    assert main(args) == 0
    for run in [*stopped, runs / "r2-seed0"]:
        assert (run / "steps.txt").read_text().split() == [str(i) for i in range(20)]  # once each
        assert (run / "finished.json").is_file()
    assert [len(_calls(run)) for run in stopped] == [2, 2]
    assert all(_calls(run)[1]["argv"][-2:] == ["--ckpt_path", "last"] for run in stopped)
    capsys.readouterr()
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
