"""Runs that survive crashes and faults: exact resume, stops, hard kill, divergence, AMP, DDP."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from test_fit import read_scalars

from padam_lightning.cli import build_cli, main
from padam_lightning.cli.storage import AtomicCheckpointIO
from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import TrainingDivergedError, UserError
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.divergence import DivergenceGuard
from padam_lightning.training.run_record import RunRecord, read_record

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
PADAM_FIT = [sys.executable, "-m", "padam_lightning.cli"]
#: tiny.yaml trains 3 batches an epoch; the uninterrupted reference trains 3 epochs.
BATCHES_PER_EPOCH = 3
STRAIGHT_EPOCHS = 3


def tiny_cli_args(
    save_dir: Path, name: str, *extra: str, configs: Path = Path("configs")
) -> list[str]:
    """``padam-fit`` arguments for the tiny CPU run, logging to ``save_dir/name/version_0``.

    The config files are named relative to the project root unless ``configs`` says otherwise.
    """
    return [
        "--config",
        str(configs / "wrn.yaml"),
        "--config",
        str(configs / "tiny.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.logger.init_args.name",
        name,
        *extra,
    ]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def record_of(path: Path) -> dict[str, Any]:
    """The run record in a checkpoint (its settings left out)."""
    record = read_record(load(path))
    assert record is not None, f"{path} has no run record"
    record.pop("config", None)
    return record


def where(record: dict[str, Any]) -> tuple[Any, ...]:
    """(stop, epoch, batches, global_step) of a run record."""
    return record["stop"], record["epoch"], record["batches"], record["global_step"]


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Recursively compare two checkpoint trees; tensors must be bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def last_values(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars per tag, keeping the latest write of each step (what a resumed run shows)."""
    return {
        tag: sorted(dict(points).items())
        for tag, points in read_scalars(run_dir).items()
        if tag != "epoch"
    }


def assert_same_run(straight_dir: Path, resumed_dir: Path) -> None:
    """Two runs' last checkpoints and curves are the same, bit for bit."""
    straight = load(straight_dir / "checkpoints" / "last.ckpt")
    resumed = load(resumed_dir / "checkpoints" / "last.ckpt")
    assert straight["epoch"] == resumed["epoch"] == STRAIGHT_EPOCHS
    assert straight["global_step"] == resumed["global_step"] == 9
    # Weights, Padam's m / v / vhat / step, and the MultiStepLR state: bit for bit.
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_same_tensors(straight[key], resumed[key], key)
    padam_state = resumed["optimizer_states"][0]["state"][0]
    assert {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"} <= set(padam_state)
    # The logged curves: same steps, same values.
    assert last_values(straight_dir) == last_values(resumed_dir)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """The run folder of the uninterrupted 3-epoch tiny run with some settings (run once each)."""
    runs: dict[tuple[str, ...], Path] = {}

    def run(*settings: str) -> Path:
        if settings not in runs:
            save_dir = tmp_path_factory.mktemp("straight")
            epochs = ("--trainer.max_epochs", str(STRAIGHT_EPOCHS))
            with pytest.MonkeyPatch.context() as patch:  # as conftest's _plain_argv
                patch.setattr("sys.argv", ["padam-fit"])
                main(["fit", *tiny_cli_args(save_dir, "run", *epochs, *settings, configs=CONFIGS)])
            runs[settings] = save_dir / "run" / "version_0"
        return runs[settings]

    return run


@pytest.fixture
def padam_fit_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as the installed ``padam-fit`` that ``PATH`` finds, as a user does."""
    script = Path(sys.executable).with_name("padam-fit")
    monkeypatch.setattr("sys.argv", [str(script)])
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}")


def stop_line(err: str) -> str:
    """The one line padam-fit prints when a run stops before its end."""
    lines = [line for line in err.splitlines() if line.startswith("padam-fit: stopped by")]
    assert len(lines) == 1, err
    return lines[0]


def continue_printed(line: str) -> None:
    """Run the command a stop line prints, as printed (it starts with ``padam-fit``)."""
    command = shlex.split(line.split("To continue: ", 1)[1])
    assert command[0] == "padam-fit", line
    main(command[1:])


@pytest.mark.parametrize(
    ("first", "then", "ended"),
    [
        (("--trainer.max_epochs", "2"), ("--trainer.max_epochs", "3"), ("max_epochs", 2, 0, 6)),
        # max_steps ends the run one batch into epoch 1: continued, it trains that epoch's rest.
        (("--trainer.max_steps", "4"), ("--trainer.max_steps", "-1"), ("max_steps", 1, 1, 4)),
    ],
    ids=["max-epochs", "max-steps"],
)
def test_a_finished_run_continued_further_equals_the_uninterrupted_run(
    tmp_path: Path,
    straight: Callable[..., Path],
    first: tuple[str, ...],
    then: tuple[str, ...],
    ended: tuple[Any, ...],
) -> None:
    args = ["fit", *tiny_cli_args(tmp_path, "run", "--trainer.max_epochs", "3", configs=CONFIGS)]
    main([*args, *first])
    run_dir = tmp_path / "run" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert where(record_of(last)) == ended
    finished = json.loads((run_dir / "finished.json").read_text())
    assert where(finished) == ended

    main([*args, *then, "--ckpt_path", "last"])
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"], "one run folder"
    assert where(record_of(last)) == ("max_epochs", 3, 0, 9)
    # Each epoch's values once, at the epoch's last step (TensorBoard purged the resumed steps).
    assert [step for step, _ in read_scalars(run_dir)["val/err"]] == [2, 5, 8]
    assert_same_run(straight(), run_dir)


def test_atomic_checkpoint_write_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.arange(4)}, target)
    before = target.read_bytes()

    def crash_mid_write(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies in the middle of the save

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(4)}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left
    monkeypatch.undo()
    assert torch.equal(load(target)["weights"], torch.arange(4))


def test_loading_a_checkpoint_of_another_network_is_refused_before_its_weights() -> None:
    model = ImageClassifier(arch="wrn10_1", num_classes=10)
    with pytest.raises(UserError, match="a wrn16_4 network, but this run asks for wrn10_1"):
        model.on_load_checkpoint({"hyper_parameters": {"arch": "wrn16_4", "num_classes": 10}})
    with pytest.raises(UserError, match="has 100 classes, but this run's data has 10"):
        model.on_load_checkpoint({"hyper_parameters": {"arch": "wrn10_1", "num_classes": 100}})


def test_resuming_with_another_optimizer_class_is_refused_before_the_first_step(
    tmp_path: Path,
) -> None:
    # The Trainer API has no padam-fit command-line check in front: the module's own hook stops it.
    _tiny_trainer(tmp_path, max_epochs=1).fit(ImageClassifier(arch="wrn10_1"), _tiny_data())
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    sgd = ImageClassifier(
        arch="wrn10_1", optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)
    )
    with pytest.raises(UserError, match=r"trained with padam_lightning\.optim\.padam\.Padam.*SGD"):
        _tiny_trainer(tmp_path, max_epochs=2).fit(sgd, _tiny_data(), ckpt_path=str(last))
    assert last.read_bytes() == before
    assert sgd.trainer.global_step == 3  # restored from the checkpoint, not one step further


def test_temp_files_of_killed_saves_are_removed_by_the_next_save(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed_save = tmp_path / f".best-epoch003.ckpt.tmp-{dead.pid}"
    killed_save.write_bytes(b"PK half a checkpoint")
    running_save = tmp_path / f".last.ckpt.tmp-{os.getppid()}"  # a live process's save
    running_save.write_bytes(b"PK being written")
    AtomicCheckpointIO().save_checkpoint({"weights": torch.arange(4)}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running_save.name, "last.ckpt"]


@pytest.mark.slow  # separate padam-fit processes
def test_sigkill_mid_run_leaves_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    common = ["fit", *tiny_cli_args(tmp_path, "killed", "--trainer.limit_train_batches", "4")]
    process = subprocess.Popen(
        [*PADAM_FIT, *common, "--trainer.max_epochs", "1000"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert last.exists(), "the run never wrote last.ckpt"
        time.sleep(0.5)  # a few more epochs, so the kill lands anywhere, saves included
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # Loadable (not truncated), and the start of an epoch: the run saves there while it goes on.
    stop, epoch, batches, step = where(record_of(last))
    assert (stop, batches, step) == (None, 0, 4 * epoch) and epoch >= 1

    resumed = subprocess.run(
        [*PADAM_FIT, *common, "--trainer.max_epochs", str(epoch + 2), "--ckpt_path", "last"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The resume trained the two epochs from the one the kill interrupted.
    assert where(record_of(last)) == ("max_epochs", epoch + 2, 0, 4 * (epoch + 2))
    assert (last.parent.parent / "finished.json").exists()
    leftovers = [p.name for p in last.parent.iterdir() if ".tmp" in p.name]
    assert not leftovers


class SignalAtStep(L.Callback):
    """Send this process a signal (``times`` times) at the end of a given training step."""

    def __init__(self, step: int, signum: int, times: int = 1) -> None:
        self.step = step
        self.signum = signum
        self.times = times

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


class SignalInValidation(L.Callback):
    """Send this process a signal after the first validation batch of a given epoch."""

    def __init__(self, epoch: int, signum: int) -> None:
        self.epoch = epoch
        self.signum = signum

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking and args[-1] == 0:
            os.kill(os.getpid(), self.signum)


def signal_at_step(step: int, signum: int, times: int = 1) -> tuple[str, ...]:
    """The options that add :class:`SignalAtStep` to a run."""
    repeat = ("--trainer.callbacks.times", str(times)) if times != 1 else ()
    return (
        f"--trainer.callbacks+={__name__}.SignalAtStep",
        "--trainer.callbacks.step",
        str(step),
        "--trainer.callbacks.signum",
        str(int(signum)),
        *repeat,
    )


def signal_in_validation(epoch: int, signum: int) -> tuple[str, ...]:
    """The options that add :class:`SignalInValidation` to a run."""
    return (
        f"--trainer.callbacks+={__name__}.SignalInValidation",
        "--trainer.callbacks.epoch",
        str(epoch),
        "--trainer.callbacks.signum",
        str(int(signum)),
    )


#: What the stop line calls each signal.
STOPPED_BY: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
P_SCHEDULE_BY_STEP = (
    "--config",
    str(CONFIGS / "experiments" / "p_schedule.yaml"),
    "--trainer.callbacks.interval",
    "step",
    "--trainer.callbacks.lr_start_scale",
    "0.5",
)


@pytest.mark.parametrize(
    ("signum", "settings", "display"),
    [
        (signal.SIGTERM, (), ()),  # a cluster's notice before its time limit
        # with Lightning's progress bar (on by default; tiny.yaml turns it off)
        (signal.SIGTERM, (), ("--trainer.enable_progress_bar", "true")),
        # Ctrl-C, with a per-step p schedule that also scales the lr (state in a callback)
        (signal.SIGINT, P_SCHEDULE_BY_STEP, ()),
    ],
    ids=["sigterm", "sigterm-progress-bar", "ctrl-c-p-schedule"],
)
def test_a_run_stopped_mid_epoch_by_a_signal_resumes_exactly(
    tmp_path: Path,
    straight: Callable[..., Path],
    signum: int,
    settings: tuple[str, ...],
    display: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    padam_fit_on_path: None,
) -> None:
    options = ("--trainer.max_epochs", "3", *settings, *display, *signal_at_step(4, signum))
    args = ["fit", *tiny_cli_args(tmp_path, "stopped", *options, configs=CONFIGS)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 128 + signum
    run_dir = tmp_path / "stopped" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    # Saved where it stopped: step 4 is the first batch of the second epoch (3 batches each).
    assert where(record_of(last)) == (signal.Signals(signum).name, 1, 1, 4)
    assert not (run_dir / "finished.json").exists()
    line = stop_line(capsys.readouterr().err)
    command = shlex.join(["padam-fit", *args, "--ckpt_path", str(last)])
    assert line == (
        f"padam-fit: stopped by {STOPPED_BY[signum]}; saved {last} (1 epoch and 1 batch done, "
        f"step 4). To continue: {command}"
    )

    continue_printed(line)
    assert where(record_of(last)) == ("max_epochs", 3, 0, 9)
    assert_same_run(straight(*settings), run_dir)


@pytest.mark.parametrize(
    ("stop", "signum", "epoch", "resume"),
    [
        # While validating epoch 1 (tiny.yaml: 2 validation batches).
        (signal_in_validation(1, signal.SIGINT), signal.SIGINT, 2, True),
        (signal_in_validation(1, signal.SIGTERM), signal.SIGTERM, 2, False),
        # At epoch 1's last training batch: validation and the epoch's end follow it.
        (signal_at_step(6, signal.SIGINT), signal.SIGINT, 2, False),
        # In the run's first validation: the stop saves the run's first checkpoint.
        (signal_in_validation(0, signal.SIGINT), signal.SIGINT, 1, False),
    ],
    ids=[
        "ctrl-c-in-validation",
        "sigterm-in-validation",
        "ctrl-c-last-training-batch",
        "ctrl-c-first-validation",
    ],
)
def test_a_stop_in_validation_waits_for_the_epochs_end_and_saves_it(
    tmp_path: Path,
    straight: Callable[..., Path],
    stop: tuple[str, ...],
    signum: int,
    epoch: int,
    resume: bool,
    capsys: pytest.CaptureFixture[str],
    padam_fit_on_path: None,
) -> None:
    # Lightning cannot resume a validation half done: the run stops once the epoch is complete.
    args = [
        "fit",
        *tiny_cli_args(tmp_path, "run", "--trainer.max_epochs", "3", *stop, configs=CONFIGS),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 128 + signum
    run_dir = tmp_path / "run" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    step = BATCHES_PER_EPOCH * epoch
    assert where(record_of(last)) == (signal.Signals(signum).name, epoch, 0, step)
    assert not (run_dir / "finished.json").exists()
    line = stop_line(capsys.readouterr().err)
    command = shlex.join(["padam-fit", *args, "--ckpt_path", str(last)])
    assert line == (
        f"padam-fit: stopped by {STOPPED_BY[signum]}; saved {last} ({epoch} epoch"
        f"{'' if epoch == 1 else 's'} done, step {step}). To continue: {command}"
    )
    if resume:  # no epoch is skipped or trained twice
        continue_printed(line)
        assert_same_run(straight(), run_dir)


def test_a_second_ctrl_c_stops_at_once_without_saving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], padam_fit_on_path: None
) -> None:
    # Both at epoch 1's last training batch: the first stop waits for validation and the
    # epoch's end, the second does not wait.
    stop = signal_at_step(6, signal.SIGINT, times=2)
    args = [
        "fit",
        *tiny_cli_args(tmp_path, "run", "--trainer.max_epochs", "3", *stop, configs=CONFIGS),
    ]
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert exit_info.value.code == 130
    last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    assert where(record_of(last)) == (None, 1, 0, 3)  # epoch 1's start, as it was
    err = capsys.readouterr().err
    assert "Traceback" not in err
    command = shlex.join(["padam-fit", *args, "--ckpt_path", str(last)])
    assert stop_line(err) == (
        f"padam-fit: stopped by Ctrl-C without saving; {last} (1 epoch done, step 3) "
        f"continues the run: {command}"
    )


def test_ctrl_c_in_a_run_without_checkpoints_promises_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = signal_at_step(2, signal.SIGINT)
    args = tiny_cli_args(
        tmp_path, "run", "--trainer.enable_checkpointing", "false", *stop, configs=CONFIGS
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 130
    assert not list(tmp_path.rglob("*.ckpt"))
    err = capsys.readouterr().err
    # Nothing printed at the signal or at the stop may promise a checkpoint the run never saves.
    assert "saving a checkpoint" not in err, err
    line = stop_line(err)
    assert "saved" not in line and "To continue" not in line, line


class CrashAtStep(L.Callback):
    """Raise a RuntimeError at the end of a given training step (as an out-of-memory error)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("out of memory")


def test_after_a_crash_padam_fit_names_the_checkpoint_that_continues_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], padam_fit_on_path: None
) -> None:
    crash = (f"--trainer.callbacks+={__name__}.CrashAtStep", "--trainer.callbacks.step", "4")
    args = ["fit", *tiny_cli_args(tmp_path, "run", *crash, configs=CONFIGS)]
    with pytest.raises(RuntimeError, match="out of memory"):
        main(args)
    last = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    # Nothing is saved at a crash (it may come mid-step): last.ckpt is epoch 1's start.
    assert where(record_of(last)) == (None, 1, 0, 3)
    err = capsys.readouterr().err
    assert f"{last} (1 epoch done, step 3)" in err, err
    assert f"--ckpt_path {last}" in err, err


def test_a_failure_that_is_not_a_stop_keeps_the_last_epochs_checkpoint(tmp_path: Path) -> None:
    # Only Lightning's SIGTERM stop (a batch boundary) saves where the run was; any other
    # exception may come from the middle of a step, so the epoch's checkpoint is kept.
    last = tmp_path / "checkpoints" / "last.ckpt"

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_step == 4:
                raise RuntimeError("out of memory")

    trainer = _tiny_trainer(tmp_path, Crash(), max_epochs=3)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.fit(ImageClassifier(arch="wrn10_1"), datamodule=_tiny_data())
    # A checkpoint of a run still going: no stop recorded.
    assert where(record_of(last)) == (None, 1, 0, 3)
    assert not (tmp_path / "finished.json").exists()


class _RaiseLearningRate(L.Callback):
    """Make the weights overflow in a given epoch, and remember last.ckpt before it."""

    def __init__(self, from_epoch: int, last: Path) -> None:
        self.from_epoch = from_epoch
        self.last = last
        self.bytes_before: bytes | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.from_epoch:
            self.bytes_before = self.last.read_bytes()
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = float("inf")


def _tiny_trainer(tmp_path: Path, *callbacks: L.Callback, **kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "max_epochs": 4,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [RunRecord(), *callbacks],
    }
    trainer = L.Trainer(**{**settings, **kwargs})
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer


def _tiny_data() -> CIFARDataModule:
    return CIFARDataModule(
        dataset="synthetic", batch_size=16, synthetic_train_size=64, synthetic_test_size=16
    )


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    raise_lr = _RaiseLearningRate(from_epoch=1, last=last)
    trainer = _tiny_trainer(tmp_path, DivergenceGuard(), raise_lr)
    model = ImageClassifier(arch="wrn10_1", optimizer=lambda p: Padam(p, lr=0.1))
    with pytest.raises(TrainingDivergedError, match=r"at step \d+|by step \d+") as error:
        trainer.fit(model, datamodule=_tiny_data())
    assert "learning rate" in str(error.value)
    assert trainer.current_epoch == 1, "training must stop in the epoch that diverged"
    assert last.read_bytes() == raise_lr.bytes_before, "last.ckpt was overwritten"
    weights = load(last)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_divergence_from_the_command_line_names_the_step(
    tiny_fit_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*tiny_fit_args, "--model.optimizer.init_args.lr", "1e6"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    # padam-fit adds the DivergenceGuard by default: it names the step, epoch and batch.
    assert re.search(
        r"padam-fit: error: the training loss became (nan|inf) at step \d+ "
        r"\(epoch \d+, batch \d+\)",
        err,
    )
    assert "learning rate" in err
    # The library names no CLI option; padam-fit adds its own, once, and claims no checkpoint.
    assert err.count("--model.optimizer.init_args.lr") == 1 and "--trainer.precision" in err
    assert "No checkpoint was written after that step." in err
    assert "was kept" not in err
    assert "Traceback" not in err


class _OverflowAtStep(L.Callback):
    """Make one gradient infinite at a given step and record Padam's state around it."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state_before: dict[str, torch.Tensor] | None = None
        self.state_after: dict[str, torch.Tensor] | None = None
        self.scale_before = self.scale_after = 0.0

    @staticmethod
    def _snapshot(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        return {
            f"{i}.{key}": value.clone()
            for i, state in enumerate(optimizer.state.values())
            for key, value in state.items()
        }

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self.step:
            self.state_before = self._snapshot(trainer.optimizers[0])
            self.scale_before = trainer.precision_plugin.scaler.get_scale()  # type: ignore[attr-defined]
            grad = next(pl_module.parameters()).grad
            assert grad is not None
            grad[0].fill_(float("inf"))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.state_before is not None and self.state_after is None:
            self.state_after = self._snapshot(trainer.optimizers[0])
            self.scale_after = trainer.precision_plugin.scaler.get_scale()  # type: ignore[attr-defined]


class _SmallClassifier(ImageClassifier):
    """ImageClassifier with a linear network: fp16 convolutions are very slow on CPUs."""

    def __init__(self) -> None:
        super().__init__(arch="wrn10_1", optimizer=lambda p: Padam(p, lr=0.1))
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))


def test_fp16_grad_scaler_skips_overflow_steps_without_touching_padam_state(
    tmp_path: Path,
) -> None:
    # Lightning refuses precision="16-mixed" on CPU by flag, so pass the plugin it would build.
    overflow = _OverflowAtStep(step=2)
    trainer = _tiny_trainer(
        tmp_path, overflow, max_epochs=2, plugins=[MixedPrecision("16-mixed", device="cpu")]
    )
    trainer.fit(_SmallClassifier(), datamodule=_tiny_data())
    assert overflow.state_before is not None and overflow.state_after is not None
    assert overflow.state_before.keys() == overflow.state_after.keys()
    for key, before in overflow.state_before.items():
        assert torch.equal(before, overflow.state_after[key]), f"{key} changed on a skipped step"
    assert overflow.scale_after == overflow.scale_before / 2
    # Training went on after the skipped step and the state stayed finite.
    state = trainer.optimizers[0].state
    assert all(torch.isfinite(v).all() for s in state.values() for v in s.values())
    assert trainer.global_step == 6


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with the gloo backend",
)
@pytest.mark.slow  # separate padam-fit processes
def test_ddp_on_two_cpu_processes_matches_a_single_process_reference(tmp_path: Path) -> None:
    """DDP: each process trains on its shard, gradients are averaged, metrics are reduced.

    The reference is computed here in one process: the same initial weights, the epoch's order
    split into the two shards, the gradients of each shard averaged, one Padam step. (SyncBatchNorm
    needs GPUs, so each shard keeps its own batch-norm statistics, exactly as DDP on CPUs does;
    the running statistics in the checkpoint are those of process 0.)
    """
    args = tiny_cli_args(
        tmp_path,
        "ddp",
        "--trainer.max_epochs",
        "1",
        "--data.synthetic_train_size",
        "16",  # one batch of 8 per process
        "--data.batch_size",
        "8",
        "--data.eval_batch_size",
        "8",
    )
    result = subprocess.run(
        [*PADAM_FIT, "fit", *args, "--trainer.strategy", "ddp", "--trainer.devices", "2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp" / "version_0"
    trained = load(run_dir / "checkpoints" / "last.ckpt")
    assert trained["global_step"] == 1

    cli = build_cli(args, run=False)
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    order = torch.tensor(list(data.train_dataloader().sampler))
    shards = [order[rank::2][:8] for rank in range(2)]
    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    initial_buffers = {k: v.clone() for k, v in model.named_buffers()}
    losses, buffers = [], []
    for shard in shards:
        model.load_state_dict(initial_buffers, strict=False)  # each process has its own BN
        images, labels = data.make_batch(shard, train=True, epoch=0)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        (loss / 2).backward()  # DDP averages the gradients of the processes
        losses.append(loss.item())
        buffers.append({k: v.clone() for k, v in model.named_buffers()})
    optimizer.step()
    expected = {**dict(model.named_parameters()), **buffers[0]}
    for name, value in expected.items():
        torch.testing.assert_close(
            trained["state_dict"][name], value.detach(), rtol=1e-5, atol=1e-6, msg=name
        )
    # The logged losses are means over both processes' samples: training over the two shards;
    # validation over the test split, which Lightning's sampler deals out alternately, each
    # process evaluating its half with its own batch-norm statistics.
    logged = last_values(run_dir)
    assert logged["train/loss"][0][1] == pytest.approx(sum(losses) / 2, rel=1e-5)
    model.eval()
    num_test = len(data.split("test"))
    val_losses = []
    with torch.no_grad():
        for rank in range(2):
            model.load_state_dict(buffers[rank], strict=False)
            images, labels = data.make_batch(torch.arange(rank, num_test, 2), train=False, epoch=0)
            val_losses.append(torch.nn.functional.cross_entropy(model(images), labels).item())
    # The weights agree to ~1e-5 (float sums in another order), so the loss does to ~1e-4; the
    # two halves' losses differ by about 2%, so a value from one process alone would fail.
    assert logged["val/loss"][0][1] == pytest.approx(sum(val_losses) / 2, rel=1e-4)
    assert abs(val_losses[0] - val_losses[1]) > 1e-2 * val_losses[0]
