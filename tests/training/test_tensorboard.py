"""What a run leaves in TensorBoard: the Custom Scalars layout, HParams table, no empty runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
)
from torch.utils.tensorboard import SummaryWriter

from padam_lightning.cli import main
from padam_lightning.data import CIFARDataModule
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import ImageClassifier
from padam_lightning.training.partial_schedule import PartialSchedule
from padam_lightning.training.tensorboard import (
    BEST_VAL_ERR_TAG,
    HPARAM_COLUMNS,
    LAYOUT,
    TensorBoardDashboards,
    holds_logged_data,
    hparams_summaries,
    remove_empty_event_files,
    run_hparams,
)


def _accumulator(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _hparams_table(logdir: Path) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """What TensorBoard's HParams plugin serves for ``logdir``, as its dashboard gets it.

    Returns:
        The hyperparameter columns (display names) and metric columns in the order the
        dashboard shows them, and each run's values by column.
    """
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)
    )
    request_context = context.RequestContext()
    experiment = get_experiment.Handler(
        request_context, backend, "", api_pb2.GetExperimentRequest()
    ).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, allowed_statuses=list(api_pb2.Status.values())
    )
    for info in experiment.hparam_infos:
        request.col_params.add(hparam=info.name, include_in_result=True)
    for metric in experiment.metric_infos:
        request.col_params.add(metric=metric.name, include_in_result=True)
    groups = list_session_groups.Handler(request_context, backend, "", request).run()
    shown = {info.name: info.display_name or info.name for info in experiment.hparam_infos}
    rows = {}
    for group in groups.session_groups:
        row: dict[str, Any] = {
            shown[name]: getattr(value, str(value.WhichOneof("kind")))
            for name, value in group.hparams.items()
        }
        row.update({metric.name.tag: metric.value for metric in group.metric_values})
        rows[group.name] = row
    columns = [shown[info.name] for info in experiment.hparam_infos]
    return columns, [metric.name.tag for metric in experiment.metric_infos], rows


def test_fit_records_layout_hparams_and_best_error(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    main([*tiny_fit_args, "--trainer.max_epochs", "3"])
    accumulator = _accumulator(tmp_path / "logs" / "run" / "version_0")

    # The layout: the paper's curves first, training loss then test error, one line per run.
    # (The layout is the summary's tensor value, which is where TensorBoard's plugin reads it.)
    (event,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    first = layout.category[0]
    assert first.title.startswith("Paper curves")
    assert list(first.chart[0].multiline.tag) == [r"^train/loss$", r"^train_pass/loss$"]
    assert list(first.chart[1].multiline.tag) == [r"^val/err$"]
    assert [category.title for category in layout.category] == list(LAYOUT)

    # The HParams dashboard, as TensorBoard's plugin serves it: the columns a person reads
    # first are the run, its optimizer, lr, p and seed, then the test error.
    columns, metrics, rows = _hparams_table(tmp_path / "logs")
    assert columns == [column for column, _ in HPARAM_COLUMNS]
    assert columns[:5] == ["run", "optimizer", "lr", "p", "seed"]
    assert metrics[:2] == ["val/err", "val/err_best"]
    (row,) = rows.values()
    # Whole numbers are text, so the dashboard shows 3, not 3.000; real numbers stay numbers
    # (filtered by range), a bool a bool.
    expected = {
        "run": "run",
        "optimizer": "Padam",
        "lr": pytest.approx(0.1),
        "p": pytest.approx(0.125),
        "seed": "0",
        "network": "wrn10_1",
        "dataset": "synthetic",
        "batch_size": "16",
        "max_epochs": "3",
        "weight_decay": pytest.approx(0.0005),
        "optimizer_settings": "amsgrad=True, betas=[0.9, 0.999], decoupled_weight_decay=False, "
        "eps=1e-08, foreach=none, fused=none, maximize=False",
        "scheduler": "MultiStepLR",
        "scheduler_settings": "gamma=0.1, milestones=[1]",
        "p_schedule": "none",
        "p_schedule_settings": "none",
        "precision": "32-true",
        "eval_batch_size": "16",
        "augment": True,
        "num_classes": "10",
        "max_steps": "-1",
        "data_dir": "data",
        "optimizer_class": "padam_lightning.optim.padam.Padam",
    }
    assert {column: row.get(column) for column in expected} == expected
    assert "momentum" not in row  # Padam has none: the cell is empty

    # val/err_best is the running minimum of val/err, epoch by epoch, at the same steps.
    val_err = [(event.step, event.value) for event in accumulator.Scalars("val/err")]
    best = [(event.step, event.value) for event in accumulator.Scalars(BEST_VAL_ERR_TAG)]
    running_min = [
        (step, min(value for _, value in val_err[: index + 1]))
        for index, (step, _) in enumerate(val_err)
    ]
    assert len(val_err) == 3
    assert [value for _, value in best] == pytest.approx([value for _, value in running_min])
    assert row["val/err"] == pytest.approx(val_err[-1][1])


def _hparams_of(optimizer: torch.optim.Optimizer, **trainer_args: Any) -> dict[str, Any]:
    trainer = L.Trainer(logger=False, enable_checkpointing=False, **trainer_args)
    trainer.optimizers = [optimizer]
    return run_hparams(trainer, L.LightningModule())


def test_runs_of_different_optimizers_share_the_columns(tmp_path: Path) -> None:
    # TensorBoard takes one run's declared columns for all runs: every run declares the same,
    # so an SGD run beside a Padam run loses none of its settings, and has no p.
    weights = [torch.nn.Parameter(torch.zeros(2))]
    runs = {
        "sgdm": _hparams_of(torch.optim.SGD(weights, lr=0.05, momentum=0.9), max_epochs=200),
        "padam": _hparams_of(Padam(weights, lr=0.1, partial=0.125)),
        "amsgrad": _hparams_of(torch.optim.Adam(weights, lr=0.001, amsgrad=True)),
    }
    for name, values in runs.items():
        writer = SummaryWriter(str(tmp_path / name))
        for summary in hparams_summaries(values):
            writer._get_file_writer().add_summary(summary)
        writer.add_scalar("val/err", 0.5, 0)
        writer.close()
    columns, metrics, rows = _hparams_table(tmp_path)
    assert columns[:5] == ["run", "optimizer", "lr", "p", "seed"]
    assert metrics[0] == "val/err"
    assert rows["sgdm"]["optimizer"] == "SGDM" and "p" not in rows["sgdm"]
    assert rows["sgdm"]["momentum"] == pytest.approx(0.9)
    assert rows["sgdm"]["max_epochs"] == "200"
    assert rows["sgdm"]["optimizer_settings"] == (
        "dampening=0, differentiable=False, foreach=none, fused=none, maximize=False, "
        "nesterov=False"
    )
    assert rows["padam"]["optimizer"] == "Padam" and rows["padam"]["p"] == pytest.approx(0.125)
    assert rows["amsgrad"]["optimizer"] == "AMSGrad"
    assert rows["amsgrad"]["lr"] == pytest.approx(0.001)


def test_p_schedule_settings_are_recorded(tiny_fit_args: list[str], tmp_path: Path) -> None:
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: padam_lightning.training.partial_schedule.PartialSchedule\n"
        "      init_args: {p_start: 0.25, p_end: 0.0625, shape: linear, total: 2}\n"
    )
    main([*tiny_fit_args, "--config", str(schedule), "--trainer.max_steps", "4"])
    _, _, rows = _hparams_table(tmp_path / "logs")
    (row,) = rows.values()
    assert row["p_schedule"] == "linear"
    assert row["p_schedule_settings"].startswith("p_start=0.25, p_end=0.0625, shape=linear, ")
    assert "total=2" in row["p_schedule_settings"]
    assert row["max_steps"] == "4"  # padam-fit's own stop at max_steps, not the trainer's -1


class _WarmupSchedule(PartialSchedule):
    """A schedule with one more setting than PartialSchedule's (as a subclass or a new version)."""

    def __init__(self, p_start: float, warmup: int = 3, **kwargs: Any) -> None:
        super().__init__(p_start, **kwargs)
        self.warmup = warmup

    def config(self) -> dict[str, Any]:
        return {**super().config(), "warmup": self.warmup}


def test_the_hparams_record_every_setting_the_schedule_stores() -> None:
    # The record follows the schedule's own list of settings, so the two cannot drift apart.
    schedule = _WarmupSchedule(0.25, p_end=0.0625, total=5, lr_end_scale=0.5)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, callbacks=[schedule])
    hparams = run_hparams(trainer, L.LightningModule())
    assert hparams["p_schedule_settings"] == (
        "p_start=0.25, p_end=0.0625, shape=linear, interval=epoch, total=5, milestones=[], "
        "lr_start_scale=1, lr_end_scale=0.5, warmup=3"
    )


class _Fails(L.Callback):
    """Raises at the first training batch: an attempt stopped before anything was logged."""

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("stopped before the first step")


def _tiny_trainer(tmp_path: Path, callbacks: list[L.Callback]) -> tuple[L.Trainer, Path]:
    logger = TensorBoardLogger(str(tmp_path), name="run", default_hp_metric=False)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        callbacks=[TensorBoardDashboards(), *callbacks],
    )
    return trainer, Path(logger.log_dir)


def _tiny_fit(trainer: L.Trainer) -> None:
    datamodule = CIFARDataModule(
        dataset="synthetic", batch_size=8, eval_batch_size=8, synthetic_train_size=16,
        synthetic_test_size=8,
    )  # fmt: skip
    trainer.fit(ImageClassifier(arch="wrn10_1"), datamodule=datamodule)


def test_an_attempt_that_logged_nothing_leaves_no_event_file(tmp_path: Path) -> None:
    trainer, run_dir = _tiny_trainer(tmp_path, [_Fails()])
    with pytest.raises(RuntimeError, match="before the first step"):
        _tiny_fit(trainer)
    # The folder and what Lightning wrote there stay; only the empty event file went.
    assert run_dir.is_dir() and (run_dir / "hparams.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*")) == []


def test_a_run_that_logged_keeps_its_event_file(tmp_path: Path) -> None:
    trainer, run_dir = _tiny_trainer(tmp_path, [])
    _tiny_fit(trainer)
    (event_file,) = run_dir.glob("events.out.tfevents.*")
    assert holds_logged_data(event_file)


def _event_file(folder: Path, pid: int, host: str, scalar: bool) -> Path:
    """An event file as another process would have left it (its name carries host and pid)."""
    writer = SummaryWriter(str(folder))
    writer.add_custom_scalars(LAYOUT)
    if scalar:
        writer.add_scalar("val/err", 0.5, 1)
    writer.close()
    (written,) = [p for p in folder.glob("events.out.tfevents.*") if f".{os.getpid()}." in p.name]
    stamp = written.name.split(".")[3]
    target = folder / f"events.out.tfevents.{stamp}.{host}.{pid}.{'1' if scalar else '0'}"
    written.rename(target)
    return target


def test_empty_event_files_of_exited_processes_are_removed(tmp_path: Path) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid, live_pid, host = int(exited.stdout), os.getppid(), socket.gethostname()
    empty_dead = _event_file(tmp_path, dead_pid, host, scalar=False)
    with_data_dead = _event_file(tmp_path, dead_pid + 1_000_000, host, scalar=True)
    empty_live = _event_file(tmp_path, live_pid, host, scalar=False)
    empty_elsewhere = _event_file(tmp_path, dead_pid, "another-host", scalar=False)
    assert not holds_logged_data(empty_dead) and holds_logged_data(with_data_dead)

    assert remove_empty_event_files(tmp_path) == [empty_dead]
    assert sorted(tmp_path.iterdir()) == sorted([with_data_dead, empty_live, empty_elsewhere])


def test_a_new_run_removes_empty_event_files_of_killed_attempts_beside_it(tmp_path: Path) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid, host = int(exited.stdout), socket.gethostname()
    killed, logged = tmp_path / "run" / "version_0", tmp_path / "run" / "version_1"
    killed.mkdir(parents=True)
    logged.mkdir()
    empty = _event_file(killed, dead_pid, host, scalar=False)
    with_data = _event_file(logged, dead_pid, host, scalar=True)
    trainer, run_dir = _tiny_trainer(tmp_path, [])
    assert run_dir.name == "version_2"
    _tiny_fit(trainer)
    assert not empty.exists() and killed.is_dir()
    assert with_data.exists()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
