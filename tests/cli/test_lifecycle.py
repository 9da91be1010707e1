"""A run's life as a cluster treats it: time limits and SLURM's requeue, end to end.

Each test runs ``padam-fit`` in its own process (signals and SLURM's environment are per process)
on the tiny configuration and checks what a user relies on: the run record in the checkpoint,
``finished.json`` only at the configured end, the printed command, and the steps trained.
Stops at every other moment (Ctrl-C, SIGTERM and SIGKILL in training, in validation, during a
checkpoint write) are compared bit for bit with an uninterrupted run in tests/benchmarks/
test_chaos.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from padam_lightning.cli import EXIT_PRUNED, main
from padam_lightning.training.run_record import RunRecord, read_record

REPO_ROOT = Path(__file__).resolve().parents[2]

PADAM_FIT = Path(sys.executable).with_name("padam-fit")
CHAOS_CHILD = REPO_ROOT / "benchmarks" / "_chaos_child.py"


def _run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def _record(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    record = read_record(checkpoint)
    assert record is not None
    return record


def _stop_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("padam-fit: stopped by")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("in_config", [False, True], ids=["option", "config-file"])
def test_a_max_time_stop_is_no_finish_and_the_resume_trains_the_rest_of_the_epoch(
    tiny_fit_args: list[str], tmp_path: Path, in_config: bool
) -> None:
    # 3 epochs x 6 batches; a time limit of 0 s stops after the first step.
    args = [
        *tiny_fit_args,
        "--trainer.max_epochs",
        "3",
        "--trainer.limit_train_batches",
        "6",
        "--data.synthetic_train_size",
        "96",
    ]
    # The limit from a config file or the command line: the printed command lifts either.
    limit = tmp_path / "limit.yaml"
    limit.write_text("trainer:\n  max_time: '00:00:00:00'\n")
    given = ["--config", str(limit)] if in_config else ["--trainer.max_time", "00:00:00:00"]
    stopped = _run([str(PADAM_FIT), *args, *given], tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert "Traceback" not in stopped.stderr
    run_dir = tmp_path / "logs" / "run" / "version_0"
    assert not (run_dir / "finished.json").exists()
    record = _record(run_dir)
    assert (record["stop"], record["epoch"], record["batches"]) == ("max_time", 0, 1)
    line = _stop_line(stopped.stderr)
    assert "--trainer.max_time" in line and "0 epochs and 1 batch done, step 1" in line
    # The printed command runs as printed and trains the rest of the run, with no time limit.
    assert "To continue with no time limit (or a longer --trainer.max_time for null)" in line
    resume = shlex.split(line.split(" To continue", 1)[1].split(": ", 1)[1])
    assert resume[0] == str(PADAM_FIT) and resume.count("--trainer.max_time") == 1
    done = _run(resume, tmp_path)
    assert done.returncode == 0, done.stderr
    finished = json.loads((run_dir / "finished.json").read_text())
    assert (finished["stop"], finished["epoch"], finished["global_step"]) == ("max_epochs", 3, 18)


def _slurm_env(tmp_path: Path, job: str = "4242", restarts: int = 0) -> dict[str, str]:
    """SLURM's variables for one task, and a stub ``scontrol`` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_RESTART_COUNT": str(restarts),
    }


def test_another_runs_requeue_checkpoint_is_never_restored(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    # Lightning restores the newest hpc_ckpt_N.ckpt of default_root_dir (the working directory
    # unless given) into any run started under SLURM without --ckpt_path, evaluations too.
    other_logs = ("--trainer.logger.init_args.save_dir", str(tmp_path / "other"))
    other = _run([str(PADAM_FIT), *tiny_fit_args, *other_logs], tmp_path)
    assert other.returncode == 0, other.stderr
    last = tmp_path / "other" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(last.read_bytes())
    slurm = _slurm_env(tmp_path)
    for extra in ([], ["--trainer.default_root_dir", "."], ["--trainer.logger", "false"]):
        fresh = _run([str(PADAM_FIT), *tiny_fit_args, *extra], tmp_path, slurm)
        assert fresh.returncode == 2, fresh.stderr
        assert (
            fresh.stderr.strip()
            .splitlines()[-1]
            .startswith("padam-fit: error: hpc_ckpt_1.ckpt would be restored into this run")
        )
        assert "Traceback" not in fresh.stderr
    evaluation = ["validate", *tiny_fit_args[1:]]
    assert _run([str(PADAM_FIT), *evaluation], tmp_path, slurm).returncode == 2
    assert not (tmp_path / "logs").exists()  # nothing was written
    # Outside SLURM the file means nothing to Lightning, and the run trains from scratch.
    fresh = _run([str(PADAM_FIT), *tiny_fit_args], tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    finished = json.loads((tmp_path / "logs" / "run" / "version_0" / "finished.json").read_text())
    assert finished["global_step"] == 6 and finished["train_seconds"] > 0


@pytest.mark.parametrize("name", ["hpc_ckpt_3.ckpt", "old_hpc_ckpt_7.ckpt", "my_hpc_ckpt_2.pt"])
def test_any_file_lightning_would_restore_under_slurm_is_named_before_the_run_starts(
    tiny_fit_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    # Lightning restores hpc_ckpt_<N>.ckpt for the highest N in any file name of
    # default_root_dir that holds "hpc_ckpt_" (a missing one: a FileNotFoundError traceback).
    for key, value in _slurm_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(b"another program's checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"padam-fit: error: {name} would be restored into this run"), err
    assert "Traceback" not in err and not (tmp_path / "logs").exists()


def test_sigusr1_under_slurm_saves_requeues_and_the_requeued_job_continues(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    stop = json.dumps({"at": "train_batch", "epoch": 0, "batch": 1, "signal": "SIGUSR1"})
    args = tiny_fit_args
    stopped = _run(
        [sys.executable, str(CHAOS_CHILD), stop, "--", *args], tmp_path, _slurm_env(tmp_path)
    )
    assert stopped.returncode == 128 + 10, stopped.stderr
    assert "SIGUSR1" in _stop_line(stopped.stderr)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    run_dir = tmp_path / "logs" / "run" / "version_0"
    # Asked for after batch 1 of 3, the stop waits for the epoch's end (its last batch is
    # followed by validation): the record is the next epoch's start.
    record = _record(run_dir)
    assert (record["stop"], record["epoch"], record["batches"]) == ("SIGUSR1", 1, 0)
    # SLURM starts the same command again: it continues the run it stopped, in its folder.
    again = _run([str(PADAM_FIT), *args], tmp_path, _slurm_env(tmp_path, restarts=1))
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "finished.json").read_text())["global_step"] == 6
    assert sorted(p.name for p in run_dir.parent.iterdir() if p.is_dir()) == ["version_0"]
    # Another job's first start is a new run, whatever this one left.
    other_job = _run([str(PADAM_FIT), *args], tmp_path, _slurm_env(tmp_path, job="77"))
    assert other_job.returncode == 0, other_job.stderr
    assert (run_dir.parent / "version_1" / "finished.json").is_file()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_requeued_job_continues_each_of_its_commands_runs_whatever_stopped_it(
    tiny_fit_args: list[str], tmp_path: Path, signal_name: str
) -> None:
    # A job script of two runs: seed 0 finishes, seed 1 is stopped (a preemption's SIGTERM, or
    # SIGKILL: a node failure) and SLURM requeues the job, which runs both commands again.
    seeds = [[*tiny_fit_args, "--seed_everything", str(seed)] for seed in (0, 1)]
    slurm = _slurm_env(tmp_path)
    assert _run([str(PADAM_FIT), *seeds[0]], tmp_path, slurm).returncode == 0
    stop = json.dumps({"at": "train_batch", "epoch": 1, "batch": 0, "signal": signal_name})
    stopped = _run([sys.executable, str(CHAOS_CHILD), stop, "--", *seeds[1]], tmp_path, slurm)
    assert stopped.returncode in (143, -9), stopped.stderr
    runs = tmp_path / "logs" / "run"
    again = [
        _run([str(PADAM_FIT), *args], tmp_path, _slurm_env(tmp_path, restarts=1)) for args in seeds
    ]
    assert [result.returncode for result in again] == [0, 0], again[1].stderr
    assert "the run had already finished" in again[0].stderr  # seed 0's own run, untouched
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["version_0", "version_1"]
    for version, seed in (("version_0", 0), ("version_1", 1)):
        finished = json.loads((runs / version / "finished.json").read_text())
        assert finished["global_step"] == 6
        assert _record(runs / version)["config"]["seed_everything"] == seed


def test_a_stop_and_its_resume_print_no_third_party_noise(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    # With the progress bar on, as a user sees it: no "[rank: 0] Received SIGTERM", no
    # "weights_only was not set", no "Checkpoint directory ... exists and is not empty", and
    # the resumed run's bar shows v_num=0 (a string version showed its last four characters).
    args = [*tiny_fit_args, "--trainer.enable_progress_bar", "true"]
    stop = json.dumps({"at": "train_batch", "epoch": 1, "batch": 0, "signal": "SIGTERM"})
    stopped = _run([sys.executable, str(CHAOS_CHILD), stop, "--", *args], tmp_path)
    assert stopped.returncode == 143, stopped.stderr
    resumed = _run([str(PADAM_FIT), *args, "--ckpt_path", "last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    output = stopped.stdout + stopped.stderr + resumed.stdout + resumed.stderr
    for noise in ("Received SIGTERM", "weights_only", "exists and is not empty", "v_num=on_"):
        assert noise not in output, noise
    assert "v_num=0" in resumed.stdout + resumed.stderr


def test_a_second_padam_fit_on_a_run_being_trained_is_refused(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    args = tiny_fit_args
    assert _run([str(PADAM_FIT), *args], tmp_path).returncode == 0
    run_dir = tmp_path / "logs" / "run" / "version_0"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    folder = os.open(run_dir, os.O_RDONLY)  # as the padam-fit training it holds it
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = _run(
            [str(PADAM_FIT), *args, "--ckpt_path", "last", "--trainer.max_epochs", "3"], tmp_path
        )
    finally:
        os.close(folder)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"padam-fit: error: {run_dir} is being trained by another "
        "padam-fit; wait for it to end, or start a new run without --ckpt_path."
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before


class PruneAtEpoch(L.Callback):
    """Stop the run after an epoch's validation, as a search's pruner does (training/pruning.py)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            record = next(c for c in trainer.callbacks if isinstance(c, RunRecord))  # type: ignore[attr-defined]
            record.request_stop("pruned")


@pytest.mark.parametrize("epoch", [0, 1], ids=["mid-run", "last-epoch"])
def test_a_pruned_run_exits_3_with_nothing_to_continue(
    tiny_fit_args: list[str], capsys: pytest.CaptureFixture[str], epoch: int
) -> None:
    prune = (f"--trainer.callbacks+={__name__}.PruneAtEpoch", "--trainer.callbacks.epoch")
    with pytest.raises(SystemExit) as exit_info:
        main([*tiny_fit_args, *prune, str(epoch)])
    assert exit_info.value.code == EXIT_PRUNED == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "stopped by" not in err and "--ckpt_path" not in err, err
