"""What a run shows in TensorBoard beyond its scalars: a layout, its hyperparameters, no empty runs.

:class:`TensorBoardDashboards` writes into each run's event file

- a Custom Scalars layout that puts the paper's per-epoch curves first: training loss and test
  error (``val/err``, the test split) of every run in one chart each, then the training
  error and test loss, the per-step training loss, and the optimizer's lr and p;
- the run's hyperparameters for the HParams dashboard: one row per run, whose first columns are
  ``run``, ``optimizer``, ``lr``, ``p`` and ``seed``, followed by the network, dataset, batch
  size, epochs and every other setting of the optimizer, scheduler and p schedule (see
  :data:`HPARAM_COLUMNS`), and whose first metrics are the final ``val/err`` and the best so
  far, ``val/err_best`` (a scalar this callback logs every epoch);

and removes the event file of an attempt that logged nothing (refused before its first step,
stopped by Ctrl-C or an exception before the first values were written), which TensorBoard would
otherwise list as an empty run. Only event files that hold nothing but their header, the layout
and the hyperparameters are removed; run folders, checkpoints and config files are never touched.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from google.protobuf import struct_pb2
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from padam_lightning.training.classifier import qualified_name
from padam_lightning.training.partial_schedule import PartialSchedule
from padam_lightning.training.run_record import RunRecord

#: The best ``val/err`` so far (the running minimum over epochs), for the HParams dashboard.
BEST_VAL_ERR_TAG = "val/err_best"

#: Custom Scalars layout: category -> chart title -> ``["Multiline", [tag regexes]]``. Every
#: chart shows one line per run (and per matching tag); a regex that matches nothing draws nothing,
#: so the released code's ``train_pass/*`` tags appear only in runs that log them.
LAYOUT: dict[str, dict[str, list[Any]]] = {
    "Paper curves, per epoch (val = the test split)": {
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
#: Optimizer settings with a column of their own (the rest are in ``optimizer_settings``).
_OPTIMIZER_COLUMNS = {
    "lr": "lr",
    "partial": "p",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
}

_STRING, _NUMBER, _BOOL = (
    api_pb2.DATA_TYPE_STRING,
    api_pb2.DATA_TYPE_FLOAT64,
    api_pb2.DATA_TYPE_BOOL,
)
#: The HParams dashboard's columns, in the order it shows them, with their types.
#:
#: What TensorBoard (2.21) does, and so how this is written: without a declared list of columns
#: it lists every hyperparameter in name order (those that differ between runs first) and every
#: scalar tag as a metric in name order, and shows the first five of each until a person picks
#: others, so ``val/err`` was not among them; it shows every number with five significant
#: digits (``10`` as ``10.000``) and has no integer type. So the columns are declared (the
#: hparams *experiment* summary) with the metrics in the order below and each hyperparameter
#: under a name that carries its position (``"03 lr"``: TensorBoard still sorts declared columns
#: by name) and a display name, which the HParams dashboard, the runs table of Time Series and
#: the CSV download show. Whole-number settings (seed, batch size, epochs) are text, so they read
#: ``10``. Every run declares the same columns (settings an optimizer lacks, such as SGD's ``p``,
#: stay empty), since TensorBoard takes one run's declaration for all runs.
#:
#: The cost of declaring: TensorBoard no longer builds value filters from the values it sees.
#: In the HParams dashboard numbers keep their range filter and the bool its checkboxes; text
#: columns can be sorted but not filtered (the run selector's regex still filters by run name).
HPARAM_COLUMNS: tuple[tuple[str, int], ...] = (
    ("run", _STRING),  # the run name (the sweep's, or padam-fit's <data>-<arch>-<optimizer>)
    ("optimizer", _STRING),  # Padam, SGDM, AMSGrad, ... as run names tell them apart
    ("lr", _NUMBER),  # the optimizer's configured (initial) learning rate
    ("p", _NUMBER),  # Padam's partial exponent
    ("seed", _STRING),
    ("network", _STRING),
    ("dataset", _STRING),
    ("batch_size", _STRING),
    ("max_epochs", _STRING),
    ("weight_decay", _NUMBER),
    ("momentum", _NUMBER),
    ("optimizer_settings", _STRING),  # every other constructor setting, ``key=value, ...``
    ("scheduler", _STRING),
    ("scheduler_settings", _STRING),
    ("p_schedule", _STRING),
    ("p_schedule_settings", _STRING),
    ("precision", _STRING),
    ("eval_batch_size", _STRING),
    ("augment", _BOOL),
    ("num_classes", _STRING),
    ("max_steps", _STRING),
    ("data_dir", _STRING),
    ("optimizer_class", _STRING),
)
#: The metric columns, in order: the paper's test error first (see :data:`HPARAM_COLUMNS`).
HPARAM_METRICS = (
    "val/err",
    BEST_VAL_ERR_TAG,
    "train/loss",
    "val/loss",
    "train/err",
    "train_pass/loss",
    "train_pass/err",
)


def hparam_text(value: Any) -> str:
    """A setting as text for the HParams dashboard: ``10``, ``0.1``, ``[100, 150]``, ``none``.

    Lists, tuples and counters (e.g. MultiStepLR's milestones) become ``[100, 150]``, one-element
    tensors their number.
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping) and all(isinstance(k, int) for k in value):
        return str(sorted(value.elements()) if hasattr(value, "elements") else sorted(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hparam_text(item) for item in value) + "]"
    return str(value)


def optimizer_title(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer as run names tell them apart: ``Padam``, ``SGDM``, ``AMSGrad``, ``Adam``.

    SGD with momentum is ``SGDM``, Adam with ``amsgrad`` is ``AMSGrad`` (AdamW with it ``AdamW
    (amsgrad)``), any other optimizer its class name: padam-fit's run names' rule
    (``padam_lightning.cli.padam_cli.optimizer_label``), as padam-report titles its figures
    (``padam_lightning.experiments.run_logs.optimizer_title``, which reads it from a config).
    """
    name, settings = type(optimizer).__name__, optimizer.defaults
    if name == "SGD" and settings.get("momentum"):
        return "SGDM"
    if name in ("Adam", "AdamW") and settings.get("amsgrad"):
        return "AMSGrad" if name == "Adam" else "AdamW (amsgrad)"
    return name


def _settings_text(settings: Mapping[str, Any]) -> str:
    """``{"gamma": 0.1, "milestones": [1]}`` -> ``gamma=0.1, milestones=[1]`` (``none``: empty)."""
    return ", ".join(f"{key}={hparam_text(value)}" for key, value in settings.items()) or "none"


def _run_name(trainer: L.Trainer) -> str:
    """The run's name: a sweep's run (the logger's version), else the logger's name."""
    for logger in trainer.loggers:
        version = str(logger.version)
        if logger.version is not None and not re.fullmatch(r"version_\d+|\d+", version):
            return version
        if logger.name:
            return str(logger.name)
    return "none"


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, bool | float | str]:
    """The hyperparameters that tell a run apart, as the HParams dashboard lists them.

    Read from the objects the run trains with (after ``configure_optimizers``), not from the
    config file, so they hold with or without the CLI: the optimizer's constructor settings
    (``optimizer.defaults``, unchanged by schedules or a resume), the scheduler's settings, the
    p schedule callback's, the data module's and the trainer's.

    Returns:
        The columns of :data:`HPARAM_COLUMNS` that apply to the run, in that order, each a
        number, a bool or text as the column's type says (``p`` only for an optimizer that has
        one). Settings that have no column of their own are in the ``*_settings`` columns as
        ``key=value`` pairs: every constructor setting of the optimizer (and of any further
        optimizer, after ``;``), every scheduler setting, every setting the p schedule stores.
    """
    module_hparams = dict(getattr(pl_module, "hparams", {}))
    params: dict[str, Any] = {"run": _run_name(trainer)}
    settings: dict[str, Any] = {}
    optimizers = list(trainer.optimizers)
    if optimizers:
        optimizer = optimizers[0]
        defaults = dict(sorted(optimizer.defaults.items()))
        params["optimizer"] = optimizer_title(optimizer)
        params["optimizer_class"] = qualified_name(type(optimizer))
        for key, column in _OPTIMIZER_COLUMNS.items():
            if key in defaults:
                params[column] = defaults.pop(key)
        settings["optimizer_settings"] = _settings_text(defaults)
        for extra in optimizers[1:]:
            extra_settings = _settings_text(dict(sorted(extra.defaults.items())))
            settings["optimizer_settings"] += f"; {qualified_name(type(extra))}: {extra_settings}"
    params["seed"] = os.environ.get("PL_GLOBAL_SEED") or "none"
    params["network"] = module_hparams.get("arch", type(pl_module).__name__)
    datamodule = getattr(trainer, "datamodule", None)
    for name in ("dataset", "data_dir", "batch_size", "eval_batch_size", "augment"):
        if datamodule is not None and hasattr(datamodule, name):
            params[name] = getattr(datamodule, name)
    params["num_classes"] = module_hparams.get("num_classes")
    schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
    params["scheduler"] = type(schedulers[0]).__name__ if schedulers else "none"
    scheduler_settings = []
    for scheduler in schedulers:
        state = {
            key: value
            for key, value in sorted(scheduler.state_dict().items())
            if not key.startswith("_") and key not in _SCHEDULER_PROGRESS
        }
        scheduler_settings.append(_settings_text(state))
    settings["scheduler_settings"] = "; ".join(scheduler_settings) or "none"
    # (Trainer.callbacks is set by Lightning's callback connector, not declared on the class.)
    callbacks = getattr(trainer, "callbacks", [])
    p_schedules = [cb for cb in callbacks if isinstance(cb, PartialSchedule)]
    params["p_schedule"] = p_schedules[0].shape if p_schedules else "none"
    # The settings its checkpoints store, as configured (``total`` None: max_epochs).
    settings["p_schedule_settings"] = (
        _settings_text({key: getattr(p_schedules[0], key) for key in p_schedules[0].config()})
        if p_schedules
        else "none"
    )
    params["precision"] = trainer.precision
    params["max_epochs"] = trainer.max_epochs
    # padam-fit ends a run at max_steps with its RunRecord (the trainer's own stays -1).
    records = [cb for cb in callbacks if isinstance(cb, RunRecord) and cb.max_steps is not None]
    params["max_steps"] = records[0].max_steps if records else trainer.max_steps
    params.update(settings)
    values: dict[str, bool | float | str] = {}
    for column, kind in HPARAM_COLUMNS:
        if column not in params:
            continue
        value = params[column]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if kind == _NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
            values[column] = float(value)
        elif kind == _BOOL and isinstance(value, bool):
            values[column] = value
        else:  # text; and a number-typed setting that is not one (e.g. Adam's betas as lr)
            values[column] = hparam_text(value)
    return values


def _column_name(index: int, column: str) -> str:
    """The internal name that puts a column in its place (TensorBoard sorts by name)."""
    return f"{index + 1:02d} {column}"


def hparams_summaries(values: Mapping[str, bool | float | str]) -> tuple[Summary, Summary]:
    """The HParams plugin's experiment (the columns) and session start (this run's values).

    Args:
        values: :func:`run_hparams`'s columns and values.

    Returns:
        The two summaries to write into the run's event file.
    """
    experiment = api_pb2.Experiment(
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HPARAM_METRICS
        ],
    )
    for index, (column, kind) in enumerate(HPARAM_COLUMNS):
        info = experiment.hparam_infos.add(
            name=_column_name(index, column), display_name=column, type=kind
        )
        if kind == _BOOL:  # every value is known, so the dashboard offers them as a filter
            info.domain_discrete.values.extend(
                struct_pb2.Value(bool_value=value) for value in (False, True)
            )
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for index, (column, _) in enumerate(HPARAM_COLUMNS):
        if column not in values:
            continue
        value, slot = values[column], start.hparams[_column_name(index, column)]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, float):
            slot.number_value = value
        else:
            slot.string_value = value
    return (
        _hparams_summary(hparams_metadata.EXPERIMENT_TAG, experiment=experiment),
        _hparams_summary(hparams_metadata.SESSION_START_INFO_TAG, session_start_info=start),
    )


def _hparams_summary(tag: str, **content: Any) -> Summary:
    data = plugin_data_pb2.HParamsPluginData(**content)
    return Summary(
        value=[
            Summary.Value(
                tag=tag,
                metadata=hparams_metadata.create_summary_metadata(data),
                tensor=hparams_metadata.NULL_TENSOR,
            )
        ]
    )


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
        # The experiment declares the columns (the same in every run: TensorBoard takes one
        # run's for all), the session start holds this run's values.
        experiment, session_start = hparams_summaries(run_hparams(trainer, pl_module))
        for logger in loggers:
            writer = logger.experiment
            writer.add_custom_scalars(LAYOUT)
            writer._get_file_writer().add_summary(experiment)
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
