"""What a run shows in TensorBoard beyond its scalars: a layout, its hyperparameters, no empty runs.

:class:`TensorBoardDashboards` writes into each run's event file

- a Custom Scalars layout that puts the paper's per-epoch curves first: training loss and test
  error (``val/err``, the CIFAR test split) of every run in one chart each, then the training
  error and test loss, the per-step training loss, and the optimizer's lr and p;
- the run's hyperparameters for the HParams dashboard (network, dataset, optimizer class and
  every setting, scheduler and its settings, p schedule, seed, precision, batch sizes, epochs),
  whose metric columns include the final ``val/err`` and the best so far, ``val/err_best``, a
  scalar this callback logs every epoch;

and removes the event file of an attempt that logged nothing (refused before its first step,
stopped by Ctrl-C or an exception before the first values were written), which TensorBoard would
otherwise list as an empty run. Only event files that hold nothing but their header, the layout
and the hyperparameters are removed; run folders, checkpoints and config files are never touched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard.summary import hparams as hparams_summary

from padam_lightning.training.classifier import qualified_name
from padam_lightning.training.partial_schedule import PartialSchedule

#: The best ``val/err`` so far (the running minimum over epochs), for the HParams dashboard.
BEST_VAL_ERR_TAG = "val/err_best"

#: Custom Scalars layout: category -> chart title -> ``["Multiline", [tag regexes]]``. Every
#: chart shows one line per run (and per matching tag); a regex that matches nothing draws nothing,
#: so the released code's ``train_pass/*`` tags appear only in runs that log them.
LAYOUT: dict[str, dict[str, list[Any]]] = {
    "Paper curves, per epoch (val = the CIFAR test split)": {
        "training loss (train/loss; train_pass/loss: the released code's extra pass)": [
            "Multiline",
            [r"^train/loss$", r"^train_pass/loss$"],
        ],
        "test error (val/err, a fraction)": ["Multiline", [r"^val/err$"]],
        "training error (train/err; train_pass/err)": [
            "Multiline",
            [r"^train/err$", r"^train_pass/err$"],
        ],
        "test loss (val/loss)": ["Multiline", [r"^val/loss$"]],
    },
    "Progress, per step": {
        "training loss every log_every_n_steps steps (train/loss_step)": [
            "Multiline",
            [r"^train/loss_step$"],
        ],
    },
    "Optimizer, per epoch": {
        "learning rate (optim/lr)": ["Multiline", [r"^optim/lr$"]],
        "partial exponent p (optim/partial)": ["Multiline", [r"^optim/partial$"]],
    },
}

#: Summary tags this module writes that are not logged data (their presence alone keeps no file).
_METADATA_TAGS = frozenset(
    {
        layout_metadata.CONFIG_SUMMARY_TAG,
        hparams_metadata.EXPERIMENT_TAG,
        hparams_metadata.SESSION_START_INFO_TAG,
        hparams_metadata.SESSION_END_INFO_TAG,
    }
)
#: Scheduler state entries that are progress, not settings.
_SCHEDULER_PROGRESS = frozenset({"base_lrs", "last_epoch", "verbose"})


def hparam_value(value: Any) -> bool | int | float | str:
    """A value the HParams plugin can store: numbers, bools and strings as they are, else text.

    Lists, tuples and counters (e.g. MultiStepLR's milestones) become ``"[100, 150]"``, None
    becomes ``"none"``, one-element tensors their number.
    """
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if value is None:
        return "none"
    if isinstance(value, Mapping) and all(isinstance(k, int) for k in value):
        return str(sorted(value.elements()) if hasattr(value, "elements") else sorted(value))
    if isinstance(value, list | tuple):
        return str([hparam_value(item) for item in value])
    return str(value)


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The hyperparameters that tell a run apart, as the HParams dashboard lists them.

    Read from the objects the run trains with (after ``configure_optimizers``), not from the
    config file, so they hold with or without the CLI: the optimizer's constructor settings
    (``optimizer.defaults``, unchanged by schedules or a resume), the scheduler's settings, the
    p schedule callback's, the data module's and the trainer's.

    Returns:
        Names such as ``network``, ``optimizer``, ``optimizer/lr``, ``scheduler/milestones``,
        ``p_schedule/p_start``, ``seed``, ``precision``, ``batch_size``, ``max_epochs``, mapped
        to bools, numbers or strings.
    """
    module_hparams = dict(getattr(pl_module, "hparams", {}))
    params: dict[str, Any] = {"network": module_hparams.get("arch", type(pl_module).__name__)}
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        for name in ("dataset", "data_dir", "batch_size", "eval_batch_size", "augment"):
            if hasattr(datamodule, name):
                params[name] = getattr(datamodule, name)
    params["num_classes"] = module_hparams.get("num_classes")
    for index, optimizer in enumerate(trainer.optimizers):
        prefix = "optimizer" if index == 0 else f"optimizer{index}"
        params[prefix] = qualified_name(type(optimizer))
        for key, value in sorted(optimizer.defaults.items()):
            params[f"{prefix}/{key}"] = value
    schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
    params["scheduler"] = qualified_name(type(schedulers[0])) if schedulers else "none"
    for index, scheduler in enumerate(schedulers):
        prefix = "scheduler" if index == 0 else f"scheduler{index}"
        for key, value in sorted(scheduler.state_dict().items()):
            if not key.startswith("_") and key not in _SCHEDULER_PROGRESS:
                params[f"{prefix}/{key}"] = value
    # (Trainer.callbacks is set by Lightning's callback connector, not declared on the class.)
    callbacks = getattr(trainer, "callbacks", [])
    p_schedules = [cb for cb in callbacks if isinstance(cb, PartialSchedule)]
    params["p_schedule"] = "none" if not p_schedules else p_schedules[0].shape
    for schedule in p_schedules[:1]:
        # The settings its checkpoints store, as configured (``total`` None: max_epochs).
        for key in schedule.config():
            params[f"p_schedule/{key}"] = getattr(schedule, key)
    # A number, so that the HParams tab sorts and filters runs by seed numerically.
    seed = os.environ.get("PL_GLOBAL_SEED", "")
    params["seed"] = int(seed) if seed.lstrip("-").isdigit() else "none"
    params["precision"] = str(trainer.precision)
    params["max_epochs"] = trainer.max_epochs
    params["max_steps"] = trainer.max_steps
    return {name: hparam_value(value) for name, value in params.items()}


def _tensorboard_loggers(trainer: L.Trainer) -> Iterator[TensorBoardLogger]:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            yield logger


def _event_file(logger: TensorBoardLogger) -> Path | None:
    """The event file this process writes for ``logger`` (None before it is created)."""
    writer = logger._experiment  # not .experiment: that would create the file
    file_writer = getattr(writer, "file_writer", None)
    event_writer = getattr(file_writer, "event_writer", None)
    name = getattr(event_writer, "_file_name", None)
    return Path(name) if name else None


def holds_logged_data(path: Path) -> bool:
    """Whether an event file holds anything besides its header, a layout and hyperparameters.

    Anything else (a scalar, histogram, image, text, graph or run metadata) counts as data. A file
    that cannot be read completely counts as data too: when in doubt, keep it.
    """
    try:
        for event in EventFileLoader(str(path)).Load():
            kind = event.WhichOneof("what")
            if kind == "file_version":
                continue
            if kind != "summary":
                return True
            if any(value.tag not in _METADATA_TAGS for value in event.summary.value):
                return True
    except Exception:  # a damaged or foreign file: keep it
        return True
    return False


def _pid_of(path: Path) -> tuple[str, int] | None:
    """(host, pid) from an event file name ``events.out.tfevents.<time>.<host>.<pid>.<n>``."""
    parts = path.name.split(".")
    if len(parts) < 7 or not parts[-2].isdigit():
        return None
    return ".".join(parts[4:-2]), int(parts[-2])


def process_is_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a file it writes may still grow)."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_empty_event_files(folder: Path, keep: Path | None = None) -> list[Path]:
    """Remove event files in ``folder`` that hold no logged data and whose writer has exited.

    These are left by attempts killed before their first values were written (a SIGKILL leaves
    no chance to clean up at the time). Only files written on this host by processes no longer
    running are considered, so a run writing into the folder right now is left alone.

    Args:
        folder: A run folder.
        keep: An event file never to remove (this process's own).

    Returns:
        The files removed.
    """
    removed = []
    host = socket.gethostname()
    for path in folder.glob("events.out.tfevents.*"):
        origin = _pid_of(path)
        if path == keep or origin is None or origin[0] != host:
            continue
        if origin[1] != os.getpid() and process_is_alive(origin[1]):
            continue
        if not holds_logged_data(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class TensorBoardDashboards(L.Callback):
    """Write the Custom Scalars layout and the HParams record; drop event files that stay empty.

    The layout and hyperparameters are written once per fit, when training starts (after a
    resume has restored the optimizer and schedule, so the settings are the run's own). The best
    ``val/err`` so far is logged as ``val/err_best`` at the end of every epoch that evaluated,
    and is kept in checkpoints so a resumed run continues the same minimum.

    When a fit ends, by finishing, an exception or an interrupt, and this process's event file
    holds nothing but its header, the layout and the hyperparameters, the file is closed and
    removed. Empty event files of earlier attempts that were killed outright (no hook ran) are
    removed when the next run starts in their folder or beside it (the same logger name), if they
    were written on this host by a process that has exited.
    """

    def __init__(self) -> None:
        self.best_val_err: float | None = None
        self._new_val_err: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the layout and the run's hyperparameters (process 0)."""
        loggers = list(_tensorboard_loggers(trainer))
        if not loggers or not trainer.is_global_zero:
            return
        params = run_hparams(trainer, pl_module)
        # Only the session's start (its hyperparameters): no per-run "experiment" summary,
        # because TensorBoard takes the first run's one as the column list for all runs, which
        # would hide the settings of other optimizers in a sweep. Without it, TensorBoard lists
        # every hyperparameter of every run and every scalar tag (val/err, val/err_best, ...)
        # as a metric.
        _, session_start, _ = hparams_summary(params, {})
        for logger in loggers:
            writer = logger.experiment
            writer.add_custom_scalars(LAYOUT)
            writer._get_file_writer().add_summary(session_start)
            writer.flush()
            # Attempts killed (SIGKILL) before logging, in this run folder (a resume) or beside
            # it (earlier versions of the same name), left empty files no hook could remove.
            run_dir = Path(writer.get_logdir())
            for folder in {run_dir, *(p for p in run_dir.parent.iterdir() if p.is_dir())}:
                remove_empty_event_files(folder, keep=_event_file(logger))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Note this epoch's ``val/err`` (not the sanity check's)."""
        value = trainer.callback_metrics.get("val/err")
        if not trainer.sanity_checking and isinstance(value, torch.Tensor):
            self._new_val_err = float(value)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the best ``val/err`` so far with the epoch's other metrics."""
        if self._new_val_err is None:
            return
        value, self._new_val_err = self._new_val_err, None
        if self.best_val_err is None or value < self.best_val_err:
            self.best_val_err = value
        pl_module.log(BEST_VAL_ERR_TAG, self.best_val_err, on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        """The best ``val/err`` so far, saved in checkpoints."""
        return {"best_val_err": self.best_val_err}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the minimum of the run being resumed."""
        self.best_val_err = state_dict.get("best_val_err")

    def _drop_if_empty(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        for logger in _tensorboard_loggers(trainer):
            path = _event_file(logger)
            if path is None or not path.is_file():
                continue
            logger.experiment.flush()
            if not holds_logged_data(path):
                # Closed first so no later flush writes into a removed file; Lightning's own
                # finalize then flushes and closes a closed writer, which is a no-op.
                logger.experiment.close()
                path.unlink(missing_ok=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """An attempt that stopped (refused, interrupted, crashed) before logging leaves no run."""
        self._drop_if_empty(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """A fit that ended without logging anything (e.g. ``max_epochs: 0``) leaves no run."""
        if stage == "fit":
            self._drop_if_empty(trainer)
