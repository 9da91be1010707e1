"""A finished run that is resumed again trains nothing, keeps its files, and says so."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from padam_lightning.data import CIFARDataModule
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.run_record import RunRecord

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")


def _trainer(tmp_path: Path, *callbacks: L.Callback, val_batches: int = 1) -> L.Trainer:
    """2 epochs of 2 batches, logging to ``tmp_path/run/version_0``; last.ckpt in ``ckpt/``."""
    return L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=val_batches,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,  # last.ckpt is the record's own
        callbacks=list(callbacks),
    )


def _data() -> CIFARDataModule:
    return CIFARDataModule(
        dataset="synthetic", batch_size=8, synthetic_train_size=16, synthetic_test_size=8
    )


def _fit(tmp_path: Path, ckpt_path: str | None = None) -> L.Trainer:
    trainer = _trainer(tmp_path, RunRecord(dirpath=tmp_path / "ckpt"))
    trainer.fit(ImageClassifier(arch="wrn10_1"), datamodule=_data(), ckpt_path=ckpt_path)
    return trainer


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run that reached its configured end: its ``last.ckpt`` and ``finished.json``."""
    _fit(tmp_path)
    return tmp_path / "ckpt" / "last.ckpt", tmp_path / "run" / "version_0" / "finished.json"


def test_resuming_a_finished_run_trains_nothing_and_says_how_to_go_on(
    tmp_path: Path, finished_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    last, finished = finished_run
    assert json.loads(finished.read_text())["stop"] == "max_epochs"
    before = last.read_bytes(), finished.read_bytes()
    capsys.readouterr()

    trainer = _fit(tmp_path, ckpt_path=str(last))

    assert trainer.global_step == 4
    assert (last.read_bytes(), finished.read_bytes()) == before
    assert "padam-fit: the run had already finished; raise --trainer.max_epochs to go on" in (
        capsys.readouterr().err
    )


def test_a_run_killed_before_its_finished_json_gets_it_from_its_resume(
    tmp_path: Path, finished_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    last, finished = finished_run
    expected = json.loads(finished.read_text())
    finished.unlink()  # as if killed between the last save and this file
    saved = last.read_bytes()
    capsys.readouterr()

    _fit(tmp_path, ckpt_path=str(last))

    written = json.loads(finished.read_text())
    assert {k: written[k] for k in ("epoch", "global_step", "stop")} == {
        k: expected[k] for k in ("epoch", "global_step", "stop")
    }
    assert last.read_bytes() == saved
    assert "already finished" not in capsys.readouterr().err


class _SignalAt(L.Callback):
    """Send this process a signal in one hook, as a user's Ctrl-C there would."""

    def __init__(self, hook: str, signum: int) -> None:
        self.signum, self.sent = signum, False
        setattr(self, hook, self._send)

    def _send(self, trainer: L.Trainer, *args: object) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(
    ("hook", "signum", "max_steps", "stop"),
    [
        # Before the final save (its hook): the run is ending at its configured end anyway.
        ("on_train_end", signal.SIGINT, None, "max_epochs"),
        ("on_train_end", signal.SIGTERM, None, "max_epochs"),
        # In the validation after the step that reaches max_steps (the stop waits for its end).
        ("on_validation_batch_start", signal.SIGINT, 2, "max_steps"),
        ("on_validation_batch_start", signal.SIGUSR1, 2, "max_steps"),
    ],
)
def test_one_signal_while_the_run_ends_at_its_configured_end_still_finishes_it(
    tmp_path: Path, hook: str, signum: int, max_steps: int | None, stop: str
) -> None:
    # Only a second signal stops at once: a run that stops by itself has received none.
    record = RunRecord(dirpath=tmp_path / "ckpt", max_steps=max_steps)
    # The signal's callback before the record: its signal arrives while the record's hook saves.
    trainer = _trainer(tmp_path, _SignalAt(hook, signum), record, val_batches=2)
    with contextlib.suppress(SIGTERMException):  # how a max_steps stop leaves fit()
        trainer.fit(ImageClassifier(arch="wrn10_1"), datamodule=_data())
    finished = json.loads((tmp_path / "run" / "version_0" / "finished.json").read_text())
    assert (finished["stop"], record.stop) == (stop, stop)
    assert record.saved == tmp_path / "ckpt" / "last.ckpt"


def test_a_second_signal_stops_at_once_only_after_a_first_one(tmp_path: Path) -> None:
    record = RunRecord()
    record.stop = "max_time"  # stopping by itself: a Ctrl-C now is the first signal
    record.on_signal(signal.SIGINT, None)
    assert record.stop == "max_time"
    with pytest.raises(KeyboardInterrupt):
        record.on_signal(signal.SIGINT, None)
    other = RunRecord()
    other.on_signal(signal.SIGTERM, None)
    assert other.stop == "SIGTERM"
    other.on_signal(signal.SIGUSR1, None)  # not a Ctrl-C: the graceful stop goes on
    with pytest.raises(KeyboardInterrupt):
        other.on_signal(signal.SIGINT, None)
