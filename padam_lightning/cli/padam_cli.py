"""``padam-fit``: train and evaluate image classifiers from config files (a LightningCLI).

Where a run logs, which checkpoint continues it, how it stops and how mistakes are reported;
docs/training.md and docs/resume.md are the manual.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer import Trainer
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import padam_lightning.cli
from padam_lightning.cli import EXIT_PRUNED
from padam_lightning.cli.config_files import check_config_files
from padam_lightning.cli.parse_errors import option_strings, summarize_parse_error
from padam_lightning.cli.resume import check_network, check_resume, read_checkpoint, resume_command
from padam_lightning.cli.run_layout import (
    CONFIG_FILE,
    DEFAULT_LOG_DIR,
    EVAL_FOLDER,
    LAST_CHECKPOINT_PATH,
    without_ckpt_path,
)
from padam_lightning.cli.storage import (
    STORAGE_ERRNOS,
    AtomicCheckpointIO,
    check_writable,
    storage_error_from,
    write_text_atomically,
)
from padam_lightning.data import CIFARDataModule
from padam_lightning.errors import TrainingDivergedError, UserError
from padam_lightning.optim import Padam
from padam_lightning.training.classifier import (
    DEFAULT_OPTIMIZER_ARGS,
    ImageClassifier,
    check_precision,
    qualified_name,
)
from padam_lightning.training.divergence import DivergenceGuard
from padam_lightning.training.predictions import PredictionWriter
from padam_lightning.training.run_estimate import RunTimeEstimate
from padam_lightning.training.run_record import FINISHED_REASONS, RunRecord, read_record
from padam_lightning.training.tensorboard import TensorBoardDashboards

#: What ``padam-fit`` without arguments prints (to stderr, exit status 2).
USAGE = """\
usage: padam-fit {fit,validate,test,predict} --config FILE [--config FILE ...] [--KEY VALUE ...]

  padam-fit fit --config configs/wrn.yaml --config configs/tiny.yaml   # a few-second CPU check
  padam-fit fit --config configs/wrn.yaml                             # the paper's WRN-16-4 run

padam-fit --help and padam-fit fit --help list every option."""

DESCRIPTION = (
    "Train and evaluate VGG, ResNet and wide ResNet classifiers on CIFAR-10/100 (or a folder of "
    "images) with Padam or its baselines, from config files: "
    "padam-fit fit --config configs/wrn.yaml. Logs go to TensorBoard under lightning_logs/."
)

#: Each stop's name in its line and its exit status (a signal's: 128 + N; a finished one: no line).
_STOPS = {
    "SIGINT": ("Ctrl-C", 128 + signal.SIGINT),
    "SIGTERM": ("SIGTERM", 128 + signal.SIGTERM),
    "SIGUSR1": ("SIGUSR1 (a SLURM requeue notice)", 128 + signal.SIGUSR1),
    "max_time": ("--trainer.max_time", 0),
    "pruned": ("a search's pruner", EXIT_PRUNED),
}

#: What padam-fit adds to the library's divergence message: its own options and resume policy.
DIVERGENCE_HINT = (
    " In padam-fit those are --model.optimizer.init_args.lr and --trainer.precision (bf16-mixed "
    "or 32-true), in a new run: a resume keeps the settings stored in the run's checkpoint."
)

#: The file under ``<save_dir>/<name>`` naming the run a requeued SLURM job's command continues.
_REQUEUE_MARKER = ".slurm-{job}-{command}.json"

#: The run this process trains and its command's arguments (for the stop line).
_running: tuple[RunRecord, list[str] | None] | None = None
#: Whether a subcommand has begun (read by :func:`padam_lightning.cli.main` at a Ctrl-C).
subcommand_started = False


def optimizer_label(optimizer: Any) -> str:
    """Short name of a ``model.optimizer`` config value (``padam``, ``sgdm``, ``amsgrad``...)."""
    if optimizer is None:
        return "padam"
    as_dict = optimizer.as_dict() if isinstance(optimizer, Namespace) else dict(optimizer)
    class_name = str(as_dict.get("class_path", "")).rsplit(".", 1)[-1].lower()
    init_args = as_dict.get("init_args") or {}
    if class_name == "sgd":
        return "sgdm" if init_args.get("momentum", 0) else "sgd"
    if class_name in ("adam", "adamw") and init_args.get("amsgrad"):
        return "amsgrad" if class_name == "adam" else "adamw-amsgrad"
    return class_name or "optimizer"


def run_name(config: Namespace) -> str:
    """``<data>-<arch>-<optimizer>``; ``<data>`` is the dataset or an image folder's own name."""
    data = config.get("data") if isinstance(config.get("data"), Namespace) else Namespace()
    source = str(data.get("dataset", "data"))
    if source == "imagefolder" and data.get("data_dir"):
        source = Path(str(data.data_dir)).resolve().name or source
    model = config.model
    return "-".join((source, str(model.get("arch", "model")), optimizer_label(model.optimizer)))


def _trains_on_cuda(accelerator: Any) -> bool:
    """Whether the trainer's ``accelerator`` setting will pick a CUDA GPU on this machine."""
    if not torch.cuda.is_available():
        return False
    if accelerator is None or isinstance(accelerator, str):
        return (accelerator or "auto") in ("auto", "gpu", "cuda")
    return "cuda" in type(accelerator).__name__.lower()


def _latest_run_checkpoint(run_root: Path) -> Path:
    """``last.ckpt`` (it may not exist) of the run under ``run_root`` that training wrote last."""
    runs = [run for run in run_root.glob("*") if run.is_dir() and run.name != EVAL_FOLDER]
    runs = [run for run in runs if (run / CONFIG_FILE).is_file()] or runs  # not one refused

    def last_trained(run: Path) -> tuple[float, int]:
        written = [run / CONFIG_FILE, run / LAST_CHECKPOINT_PATH, *run.glob("events.out.*")]
        times = [path.stat().st_mtime for path in written if path.is_file()]
        # File times tick coarsely (a few ms): on a tie the higher version_N is the newer run.
        number = run.name.removeprefix("version_")
        return max(times, default=run.stat().st_mtime), int(number) if number.isdigit() else -1

    return run_root / max(runs, key=last_trained, default=Path("*")).name / LAST_CHECKPOINT_PATH


def stop_message(record: RunRecord, args: list[str] | None) -> str:
    """One line: what stopped the run, what is saved, and the command that continues it."""
    what = _STOPS.get(record.stop or "", ("an error", 1))[0]
    if record.saved is not None:
        timed = record.stop == "max_time"  # it limits the run's training time in all
        kept = without_ckpt_path(args, "--trainer.max_time") if timed and args else args
        command = resume_command(kept, record.saved) + (" --trainer.max_time null" if timed else "")
        how = " with no time limit (or a longer --trainer.max_time for null)" if timed else ""
        return (
            f"padam-fit: stopped by {what}; saved {record.saved} ({_where(record.saved_state)})."
            f" To continue{how}: {command}"
        )
    last = record.last_checkpoint(record.trainer) if record.trainer is not None else None
    if last is not None and last.is_file():
        where = f" ({_where(record.last_state)})" if record.last_state else ""
        return (
            f"padam-fit: stopped by {what} without saving; {last}{where} continues the run: "
            f"{resume_command(args, last)}"
        )
    return f"padam-fit: stopped by {what} before the run's first checkpoint; start it again."


def _where(state: dict[str, Any]) -> str:
    """``2 epochs and 3 batches done, step 11`` from a run record."""
    epochs, batches = state["epoch"], state["batches"]
    done = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    if batches:
        done += f" and {batches} batch{'' if batches == 1 else 'es'}"
    return f"{done} done, step {state['global_step']}"


def _slurm_job() -> str | None:
    """This SLURM job's id (``<array job>_<task>`` in an array), None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID") if SLURMEnvironment.detect() else None


def _lock_run(run_dir: Path) -> Any:
    """Lock the run folder itself (``flock``: nothing written); UserError if another holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(folder)
        raise UserError(
            f"{run_dir} is being trained by another padam-fit; wait for it to end, or start a "
            "new run without --ckpt_path."
        ) from None
    return SimpleNamespace(close=functools.partial(os.close, folder))


def check_numeric_settings(config: Namespace) -> None:
    """Refuse (UserError, naming it) a setting of the right type that Lightning fails on."""
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        raise UserError(
            f"seed_everything: {seed} is out of range; expected an integer from 0 to {2**32 - 1} "
            "(numpy's seed range), true (a random seed) or false (no seeding)."
        )
    for section in ("trainer", "model", "data"):
        if section in config and not isinstance(config.get(section), Namespace):
            raise UserError(f"{section}: expected a mapping of settings, got {config[section]!r}.")
    for key in ("check_val_every_n_epoch", "accumulate_grad_batches"):
        value = config.get("trainer", Namespace()).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise UserError(f"trainer.{key}: expected a positive integer, got {value}.")


def _plain_config(config: Namespace) -> dict[str, Any]:
    """A fit's settings as plain data, without the command's own bookkeeping keys."""
    plain = config.clone().as_dict()
    return {k: v for k, v in plain.items() if k not in ("config", "ckpt_path", "subcommand")}


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config atomically: ``config.yaml`` (fit) or ``config-<stage>.yaml``."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Pick the file name for this stage, then save."""
        name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
        if name != "fit":
            self.config_filename = f"config-{name}.yaml"
        self._log_dir = trainer.log_dir  # on every process: under DDP it is a collective call
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Write the config file atomically (``save_to_log_dir`` is off: Lightning's is not)."""
        if self._log_dir is not None and trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            write_text_atomically(Path(self._log_dir) / self.config_filename, text)


class PadamCLI(LightningCLI):
    """LightningCLI with this project's run folders, run record, resume checks and errors."""

    _ckpt_path: Path | None = None  # the checkpoint this command resumes or evaluates
    _saved_record: dict[str, Any] | None = None  # its run record
    _saved_hparams: dict[str, Any] | None = None  # {"hyper_parameters": its hyperparameters}
    _requeue_marker: Path | None = None
    _max_time: timedelta | None = None
    _max_steps: int | None = None
    _command_args: list[str] | None = None  # for the resume command
    _parsers: tuple[LightningArgumentParser, ...] = ()  # their options are suggested for typos
    record: RunRecord | None = None  # fit only

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the best-checkpoint options, Padam as the default, and link the class count."""
        self._parsers = (*self._parsers, parser)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/err",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": False,  # last.ckpt is the RunRecord's
                "checkpoint.save_on_train_epoch_end": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-err{val/err:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                # A parsed default (not only the module's fallback), so that Padam's options can
                # be set without naming the class: --model.optimizer.init_args.partial.
                "model.optimizer": {
                    "class_path": qualified_name(Padam),
                    "init_args": dict(DEFAULT_OPTIMIZER_ARGS),
                },
            }
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, fill in defaults, find and read the checkpoint; UserError before any write."""
        command = sys.argv[1:] if args is None else args
        self._command_args = [str(a) for a in command] if isinstance(command, list) else None
        check_config_files(self._command_args or [])
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            options = option_strings([parser, *self._parsers])
            raise UserError(summarize_parse_error(str(err), options)) from None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        check_numeric_settings(config)
        trainer = config.trainer
        on_cuda = _trains_on_cuda(trainer.get("accelerator"))
        if trainer.get("precision") is None and on_cuda:
            # Mixed precision where the hardware has it; CPU runs stay in fp32.
            trainer.precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        check_precision(trainer.get("precision"))  # before Lightning's own traceback
        if trainer.get("benchmark") is None and not trainer.get("deterministic") and on_cuda:
            # cuDNN autotuning pays off: CIFAR's convolution shapes are fixed. Keep equal to
            # benchmarks/_timing.py's CUDNN_BENCHMARK (benchmarks/gpu.sh measures both).
            trainer.benchmark = True
        logger, logger_args, run_root = trainer.get("logger"), None, None
        if isinstance(logger, Namespace) and "TensorBoardLogger" in str(logger.get("class_path")):
            logger_args = logger.init_args = logger.get("init_args") or Namespace()
            save_dir = str(logger_args.get("save_dir") or DEFAULT_LOG_DIR)
            if trainer.get("default_root_dir") is not None and save_dir == DEFAULT_LOG_DIR:
                # Under --trainer.default_root_dir, as Lightning's default logger logs.
                save_dir = logger_args["save_dir"] = str(Path(trainer.default_root_dir, save_dir))
            logger_args["name"] = logger_args.get("name") or run_name(config)
            run_root = Path(save_dir, logger_args.name)
        if not subcommand:
            return
        ckpt_path, job = config.get("ckpt_path"), _slurm_job()
        # Put back in instantiate_trainer: LightningCLI would otherwise parse the checkpoint's
        # hyperparameters over this command's model settings.
        config.ckpt_path = None
        root = Path(trainer.get("default_root_dir") or ".")
        hpc = sorted(p for p in root.glob("*") if "hpc_ckpt_" in p.name)  # Lightning's own test
        if ckpt_path is None and job is not None and hpc:
            raise UserError(
                f"{hpc[-1]} would be restored into this run (under SLURM without --ckpt_path, "
                "Lightning restores hpc_ckpt_N.ckpt after any name in --trainer.default_root_dir "
                "that holds hpc_ckpt_N), and padam-fit did not write it: move it away."
            )
        if subcommand == "fit":
            # The RunRecord's: Lightning's own end the epoch they stop in as if it were complete.
            self._max_steps, max_time = trainer.get("max_steps"), trainer.get("max_time")
            trainer.max_time, trainer.max_steps = None, -1
            try:  # as Lightning reads it: DD:HH:MM:SS, a mapping or a timedelta
                seconds = Timer(duration=max_time).time_remaining() if max_time else None
            except (TypeError, MisconfigurationException):
                raise UserError(
                    f"trainer.max_time: {max_time!r} is not a duration; write DD:HH:MM:SS, e.g. "
                    "00:11:50:00."
                ) from None
            self._max_time = timedelta(seconds=seconds) if seconds is not None else None
            if run_root is not None and job is not None:
                # Each command of the job (its arguments) has its own run: seed 0's, seed 1's.
                key = json.dumps(without_ckpt_path(self._command_args or [])).encode()
                digest = hashlib.sha256(key).hexdigest()[:16]
                marker = self._requeue_marker = run_root / _REQUEUE_MARKER.format(
                    job=job, command=digest
                )
                if ckpt_path is None and marker.is_file():
                    # A requeued SLURM job runs its commands again: each continues its own run.
                    last = run_root / json.loads(marker.read_text())["run"] / LAST_CHECKPOINT_PATH
                    ckpt_path = str(last) if last.is_file() else None
        if ckpt_path is not None:
            version = logger_args.get("version") if logger_args is not None else None
            self._ckpt_path = _find_checkpoint(str(ckpt_path), run_root, version)
            checkpoint = read_checkpoint(self._ckpt_path)
            self._saved_record = read_record(checkpoint)
            self._saved_hparams = {"hyper_parameters": checkpoint.get("hyper_parameters") or {}}
            if logger_args is not None and subcommand == "fit":
                # TensorBoard drops the stopped attempt's points from this step on.
                logger_args["purge_step"] = int(checkpoint.get("global_step", 0))
        if logger_args is not None and run_root is not None and logger_args.get("version") is None:
            self._choose_log_folder(logger_args, subcommand, run_root)

    def _choose_log_folder(self, logger_args: Namespace, stage: str, run_root: Path) -> None:
        """A resumed run logs on in its own folder; an evaluation in ``<run>/eval/<stage>-<N>``."""
        path = self._ckpt_path
        run_dir = path.parent.parent if path and path.parent.name == "checkpoints" else None
        if stage != "fit":
            folder = run_dir or run_root
            taken = {path.name for path in (folder / EVAL_FOLDER).glob(f"{stage}-*")}
            free = next(n for n in range(len(taken) + 1) if f"{stage}-{n}" not in taken)
            logger_args["save_dir"], logger_args["name"] = folder, EVAL_FOLDER
            logger_args["version"] = f"{stage}-{free}"
        elif run_dir is not None and run_dir.parent.resolve() == run_root.resolve():
            # version_N as an int: the progress bar shows v_num=N (a string's last 4 characters).
            number = run_dir.name.removeprefix("version_")
            plain = number.isdigit() and f"version_{int(number)}" == run_dir.name
            logger_args["version"] = int(number) if plain else run_dir.name

    def _begin(self) -> None:
        """Refuse another network's checkpoint, and overwrites without a logger (UserError)."""
        global subcommand_started
        subcommand_started = True
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            if signal.getsignal(signum) is padam_lightning.cli.stop_before_start:
                signal.signal(signum, _stop_signal)  # Lightning's SIGTERM handler calls it too
        stage = self.subcommand or "fit"
        if self._ckpt_path is not None:
            # The class count comes from the data when the model is built (an image folder's).
            arch, classes = self.model.hparams["arch"], self.model.hparams["num_classes"]
            check_network(self._ckpt_path, self._saved_hparams or {}, arch, classes, stage != "fit")
        root = Path(self.trainer.default_root_dir)
        checkpoints = root / LAST_CHECKPOINT_PATH.parent
        here = self._ckpt_path and self._ckpt_path.resolve().parent == checkpoints.resolve()
        if self.trainer.loggers or (stage == "fit" and here):
            return  # each run has its own folder, or this is the run that owns this one
        config_file = root / (CONFIG_FILE if stage == "fit" else f"config-{stage}.yaml")
        taken = [config_file] if config_file.exists() else []
        if stage == "fit" and self.trainer.checkpoint_callbacks and checkpoints.is_dir():
            taken += sorted(checkpoints.glob("*.ckpt"))[:1]
        if taken:
            writes = f"{config_file.name} and checkpoints/" if stage == "fit" else config_file.name
            raise UserError(
                f"without a logger, {stage} writes {writes} into {root} (the default_root_dir), "
                f"and {taken[0]} already exists; padam-fit does not overwrite it. Pass another "
                "--trainer.default_root_dir, or keep the logger (a folder per run)."
            )

    before_validate = before_test = before_predict = _begin

    def before_fit(self) -> None:
        """Refuse what the run cannot do before anything is written; then hold the run folder."""
        self._begin()
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        check_writable(run_dir)
        if self._ckpt_path is not None and self._saved_record is not None:
            configured = _plain_config(self.config["fit"])
            check_resume(self._ckpt_path, self._saved_record, configured, self.trainer.world_size)
        if self.trainer.global_rank == 0 and self.record is not None:
            self.record.lock = _lock_run(run_dir)  # the RunRecord releases it when the fit ends
            if self._requeue_marker is not None:  # kept: a requeued finished run ends at once
                write_text_atomically(self._requeue_marker, json.dumps({"run": run_dir.name}))

    def _after_evaluation(self) -> None:
        """Say where an evaluation's results went (they are not in the run's own curves)."""
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if log_dir is not None:
            rank_zero_only(print)(f"padam-fit: {self.subcommand} results logged to {log_dir}")

    after_validate = after_test = _after_evaluation

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        """No ``checkpoint`` callback (added only here) under enable_checkpointing false."""
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer: atomic saves, the run record, SLURM's signal; UserError: bad setting."""
        configured_plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        if _slurm_job() is not None and not configured_plugins:
            # SIGUSR1 is the RunRecord's (a stop at a batch boundary, saved in the run folder);
            # Lightning's own handler saves hpc_ckpt_N.ckpt mid-step into default_root_dir.
            kwargs.setdefault("plugins", [SLURMEnvironment(auto_requeue=False)])
        try:
            trainer = super().instantiate_trainer(**kwargs)
            environment = getattr(trainer.strategy, "cluster_environment", None)
            if environment is not None:
                environment.validate_settings(trainer.num_devices, trainer.num_nodes)
        except (ValueError, TypeError, MisconfigurationException) as err:
            # Trainer.__init__ only resolves its arguments: an error there is a bad setting.
            raise UserError(f"invalid trainer setting: {err}") from None
        if self._ckpt_path is not None:
            # Back into the config (its saved copy names it), now that LightningCLI passed over it.
            self.config[self.subcommand].ckpt_path = str(self._ckpt_path)
            self.config_init[self.subcommand].ckpt_path = str(self._ckpt_path)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if self.subcommand == "fit":
            steps = self._max_steps if self._max_steps not in (None, -1) else None
            self.record = RunRecord(_plain_config(self.config["fit"]), self._max_time, steps)
            trainer.callbacks.append(self.record)  # type: ignore[attr-defined]
            global _running
            _running = (self.record, self._command_args)
        return trainer


def _stop_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGUSR1 from the subcommand's start: a fit stops at a batch boundary, else at once.

    A no-op once the fit stops: RunRecord._forward calls Lightning's handler, which calls this.
    """
    if _running is None:
        padam_lightning.cli.stop_before_start(signum, frame)
    elif _running[0].stop is None:
        _running[0].on_signal(signum, frame)


def _find_checkpoint(ckpt_path: str, run_root: Path | None, version: Any) -> Path:
    """``last`` as the latest run's ``last.ckpt`` (or ``version``'s); UserError if there is none."""
    if ckpt_path != "last":
        return Path(ckpt_path)  # read_checkpoint says what is wrong with it
    if run_root is None:
        raise UserError(
            "--ckpt_path last needs the TensorBoard logger to find the run folder; pass "
            "the checkpoint file instead: --ckpt_path PATH/last.ckpt"
        )
    folder = f"version_{version}" if isinstance(version, int) else str(version)
    path = run_root / folder / LAST_CHECKPOINT_PATH
    if version is None:
        path = _latest_run_checkpoint(run_root)
    if not path.is_file():
        raise UserError(
            f"--ckpt_path last: no checkpoint found at {path}. Start the run without "
            "--ckpt_path, or pass the logger folder of the run to resume "
            "(--trainer.logger.init_args.name/version) or the file itself."
        )
    return path


def build_cli(args: ArgsType = None, run: bool = True) -> PadamCLI:
    """Construct (and by default run) the ``padam-fit`` command line."""
    logger = "lightning.pytorch.loggers.TensorBoardLogger"
    return PadamCLI(
        ImageClassifier,
        CIFARDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        trainer_defaults={
            "logger": {
                "class_path": logger,
                "init_args": {
                    "save_dir": DEFAULT_LOG_DIR,
                    "name": None,
                    "default_hp_metric": False,
                },
            },
            "callbacks": [
                DivergenceGuard(),  # NaN/inf loss: stop, naming the step; no diverged checkpoint
                RunTimeEstimate(),
                TensorBoardDashboards(),
                PredictionWriter(),
            ],
        },
        # exit_on_error=False: a parse error is an exception, which parse_arguments makes one line.
        parser_kwargs={"description": DESCRIPTION, "exit_on_error": False, "allow_abbrev": False},
    )


def _without_noise(record: logging.LogRecord) -> bool:
    """Drop Lightning's lines a user cannot act on (its cloud-logger tip, 'Received SIGTERM')."""
    return not any(noise in record.getMessage() for noise in ("litlogger", "Received SIGTERM"))


def _quiet_known_warnings() -> None:
    """Silence warnings that are expected here and would only confuse users."""
    for name in ("utilities.rank_zero", "trainer.connectors.signal_connector"):
        logging.getLogger(f"lightning.pytorch.{name}").addFilter(_without_noise)
    logging.getLogger("lightning.fabric.utilities.rank_zero").addFilter(_without_noise)
    # The loaders yield index batches; images are gathered on the device, so no workers.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Emitted by Lightning's own code under recent torch releases; nothing a user can change.
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # A resumed run writes into its own run folder, which holds its checkpoints.
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")


def main(args: ArgsType = None) -> None:
    """Entry point of ``padam-fit``: user mistakes print one line and exit non-zero."""
    _quiet_known_warnings()
    threading.excepthook = _quiet_storage_errors_in_threads
    if (sys.argv[1:] if args is None else args) == []:
        print(USAGE, file=sys.stderr)
        sys.exit(UserError.exit_code)
    global _running
    _running = None
    try:
        build_cli(args)
    except (UserError, MisconfigurationException, ArgumentError) as err:
        # MisconfigurationException: Lightning's own checks of trainer settings at fit time.
        message = summarize_parse_error(str(err)) if isinstance(err, ArgumentError) else str(err)
        if isinstance(err, TrainingDivergedError):
            message += DIVERGENCE_HINT
        rank_zero_only(print)(f"padam-fit: error: {message}", file=sys.stderr)
        sys.exit(err.exit_code if isinstance(err, UserError) else UserError.exit_code)
    except BaseException as err:
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            # A full or read-only disk under another library's writer (TensorBoard, hparams).
            error = storage_error_from(err, kept="checkpoints saved before are intact")
            rank_zero_only(print)(f"padam-fit: error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        stop = _running[0].stop if _running is not None else None
        if stop is None:
            if isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt):
                raise err.__context__ from None  # a stop in an evaluation: one line, 130/143
            raise
        if stop not in FINISHED_REASONS:
            rank_zero_only(print)("\n" + stop_message(*_running), file=sys.stderr)
        if isinstance(err, Exception):
            raise  # a crash: its traceback is a bug to report
        _exit_as_stopped(stop)
    if _running is not None and _running[0].stop is not None:
        _exit_as_stopped(_running[0].stop)  # a pruned run that reached its epoch's end


def _quiet_storage_errors_in_threads(hook: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread hits the same full disk; the main thread reports it once."""
    if not isinstance(hook.exc_value, OSError) or hook.exc_value.errno not in STORAGE_ERRNOS:
        threading.__excepthook__(hook)


def _exit_as_stopped(stop: str) -> None:
    """Exit with the stop's status (a finished run's 0: return); requeue a SIGUSR1 stop's job."""
    record = _running[0] if _running is not None else None
    job, trainer = _slurm_job(), record.trainer if record else None
    if stop == "SIGUSR1" and job and record and record.saved and trainer and trainer.is_global_zero:
        # Its next start continues the run (see parse_arguments and before_fit).
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        outcome = f"could not requeue: {result.stderr.strip()}" if result.returncode else "requeued"
        print(f"padam-fit: SLURM job {job} {outcome}", file=sys.stderr)
    status = _STOPS.get(stop, ("", 0 if stop in FINISHED_REASONS else 1))[1]
    if status or stop not in FINISHED_REASONS:
        sys.exit(status)


if __name__ == "__main__":
    main()
