"""Helpers for report tests: run folders with a config.yaml, a run.json and event files.

The event files are written with ``torch.utils.tensorboard.SummaryWriter`` in either layout
Lightning's TensorBoardLogger produces for epoch-level metrics: each epoch's scalars at the global
step of the epoch's last batch, together with an ``epoch`` scalar (0-based) at the same step
(``epoch_as_step=False``, older runs), or at the epoch index as the step (newer runs, which log
``step``). Per-step scalars (``train/loss_step`` with an ``epoch`` scalar, twice an epoch) are
written beside them in both. Scalars are read back independently of the report with
TensorBoard's raw event-file loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

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


def write_run(
    run_dir: Path,
    run_config: dict[str, Any],
    curves: dict[str, list[float]],
    *,
    first_epoch: int = 1,
    wall_time: float = 1000.0,
    suffix: str = "",
    finished: bool = True,
    axes: dict[str, tuple[str, str] | tuple[str, str, int]] | None = None,
    epoch_as_step: bool = False,
) -> None:
    """Write ``curves`` (tag -> value per epoch, from ``first_epoch``) as one event file.

    ``axes`` (axis -> (label, title[, index of the choice in the sweep file])) writes a
    ``run.json`` as padam-sweep does, with the config's seed; without it the folder is a plain
    padam-fit run.
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
    writer = SummaryWriter(log_dir=str(run_dir), filename_suffix=suffix)
    length = len(next(iter(curves.values())))
    for index in range(length):
        epoch = first_epoch + index
        step = epoch * STEPS_PER_EPOCH - 1
        when = wall_time + epoch
        if epoch_as_step:
            for tag, values in curves.items():
                writer.add_scalar(tag, values[index], epoch - 1, walltime=when)
        else:
            writer.add_scalar("epoch", epoch - 1, step, walltime=when)
            for tag, values in curves.items():
                writer.add_scalar(tag, values[index], step, walltime=when)
        # Per-step scalars (several per epoch, each with an epoch scalar) are not epoch curves.
        for earlier in (step - 2, step - 1):
            writer.add_scalar("train/loss_step", 1.0, earlier, walltime=when)
            writer.add_scalar("epoch", epoch - 1, earlier, walltime=when)
    writer.close()
    if finished:
        (run_dir / "finished.json").write_text("{}")


def read_scalars_independently(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from the raw event records, the later file winning on a step."""
    scalars: dict[str, dict[int, tuple[float, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tensor_util.make_ndarray(value.tensor))
                else:
                    continue  # not a scalar, e.g. the custom-scalars layout of TensorBoard
                previous = scalars.setdefault(value.tag, {}).get(event.step)
                if previous is None or event.wall_time >= previous[0]:
                    scalars[value.tag][event.step] = (event.wall_time, number)
    return {tag: {s: v for s, (_, v) in steps.items()} for tag, steps in scalars.items()}
