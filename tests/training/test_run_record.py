"""A finished run that is resumed again trains nothing, keeps its files, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from padam_lightning.data import CIFARDataModule
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.run_record import RunRecord

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")


def _fit(tmp_path: Path, ckpt_path: str | None = None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,  # last.ckpt is the record's own
        callbacks=[RunRecord(dirpath=tmp_path / "ckpt")],
    )
    data = CIFARDataModule(
        dataset="synthetic", batch_size=8, synthetic_train_size=16, synthetic_test_size=8
    )
    trainer.fit(ImageClassifier(arch="wrn10_1"), datamodule=data, ckpt_path=ckpt_path)
    return trainer


def test_resuming_a_finished_run_trains_nothing_and_says_how_to_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit(tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    finished = tmp_path / "run" / "version_0" / "finished.json"
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
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit(tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    finished = tmp_path / "run" / "version_0" / "finished.json"
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
