"""Helpers for report tests: run folders with a config.yaml, a run.json and event files.

The event files are written with ``torch.utils.tensorboard.SummaryWriter`` in the layout
padam-fit's TensorBoardLogger produces: every scalar at Lightning's global step; the per-step
``train/loss_step`` at each step and each epoch's values at the last step of the epoch, each with
Lightning's ``epoch`` scalar (0-based) at the same step. A resumed attempt opens its writer with
``purge_step`` = the step it resumes from. Scalars are read back independently of the report
from the raw event records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import SessionLog
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

EVENT_FILES = "events.out.tfevents.*"
STEPS_PER_EPOCH = 10


def config(
    *,
    arch: str = "resnet18",
    optimizer: str = "padam",
    lr: float = 0.1,
    p: float = 0.125,
    seed: int = 0,
    dataset: str = "cifar10",
    max_epochs: int = 5,
    schedule: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A config.yaml as padam-fit resolves it (the keys the report reads, plus a few others)."""
    optimizers = {
        "padam": {
            "class_path": "padam_lightning.optim.Padam",
            "init_args": {"lr": lr, "partial": p, "amsgrad": True, "weight_decay": 5e-4},
        },
        "sgdm": {
            "class_path": "torch.optim.SGD",
            "init_args": {"lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
        },
        "adam": {
            "class_path": "torch.optim.Adam",
            "init_args": {"lr": lr, "amsgrad": False, "weight_decay": 5e-4},
        },
        "amsgrad": {
            "class_path": "torch.optim.Adam",
            "init_args": {"lr": lr, "amsgrad": True, "weight_decay": 5e-4},
        },
    }
    callbacks = None
    if schedule is not None:
        callbacks = [
            {
                "class_path": "padam_lightning.training.partial_schedule.PartialSchedule",
                "init_args": schedule,
            }
        ]
    return {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": max_epochs,
            "callbacks": callbacks,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "somewhere", "version": f"v{seed}"},
            },
        },
        "model": {"arch": arch, "num_classes": 10, "optimizer": optimizers[optimizer]},
        "data": {"dataset": dataset, "data_dir": "data", "batch_size": 128},
        "ckpt_path": None,
    }


@contextmanager
def attempt_writer(
    run_dir: Path, attempt: int = 0, purge_step: int | None = None
) -> Iterator[SummaryWriter]:
    """A ``SummaryWriter`` for one attempt of a run, whose file sorts by ``attempt``.

    TensorBoard reads a folder's files in name order; the writer names its file by the clock's
    second and a per-process counter, so two files a test writes within a second could sort
    either way (counter 10 before 9). The file is renamed after the attempt's number instead.
    """
    before = set(run_dir.glob(EVENT_FILES))
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
    try:
        yield writer
    finally:
        writer.close()
        (path,) = set(run_dir.glob(EVENT_FILES)) - before
        path.rename(run_dir / f"events.out.tfevents.{attempt:010d}.fake")


def write_run(
    run_dir: Path,
    run_config: dict[str, Any],
    curves: Mapping[str, Sequence[float | None]],
    *,
    first_epoch: int = 1,
    attempt: int = 0,
    purge_step: int | None = None,
    finished: bool = True,
    axes: dict[str, tuple[str, str] | tuple[str, str, int]] | None = None,
) -> None:
    """Write ``curves`` (tag -> value per epoch, from ``first_epoch``) as one attempt's file.

    ``axes`` (axis -> (label, title[, index of the choice in the sweep file])) writes a
    ``run.json`` as padam-sweep does, with the config's seed; without it the folder is a plain
    padam-fit run. A resumed attempt passes its ``attempt`` number and ``purge_step``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(run_config))
    if axes is not None:
        identity = {
            "axes": {
                axis: {"label": value[0], "title": value[1], "index": (*value, 0)[2]}
                for axis, value in axes.items()
            },
            "seed": run_config["seed_everything"],
        }
        (run_dir / "run.json").write_text(json.dumps(identity))
    with attempt_writer(run_dir, attempt, purge_step) as writer:
        for index in range(len(next(iter(curves.values())))):
            epoch = first_epoch + index - 1  # Lightning's 0-based index
            for step in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH):
                writer.add_scalar("train/loss_step", 1.0, step)
                writer.add_scalar("epoch", epoch, step)
            # A separate log call at the epoch's last step (None: not logged this epoch).
            for tag, values in curves.items():
                if values[index] is not None:
                    writer.add_scalar(tag, values[index], step)
            writer.add_scalar("epoch", epoch, step)
    if finished:
        (run_dir / "finished.json").write_text("{}")


def read_scalars_independently(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from the raw event records, in file order.

    A later record of a step wins, and a writer's ``purge_step`` (its ``SessionLog.START``
    event) drops the points at that step and later that earlier records wrote.
    """
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob(EVENT_FILES)):
        for event in EventFileLoader(str(path)).Load():
            if event.session_log.status == SessionLog.START:
                for points in scalars.values():
                    for step in [s for s in points if s >= event.step]:
                        del points[step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tensor_util.make_ndarray(value.tensor))
                else:
                    continue  # not a scalar, e.g. the custom-scalars layout of TensorBoard
                scalars.setdefault(value.tag, {})[event.step] = number
    return {tag: dict(sorted(points.items())) for tag, points in scalars.items()}
