"""``padam-fit``: train and evaluate image classifiers from config files (a LightningCLI).

Examples::

    padam-fit fit --config configs/wrn.yaml
    padam-fit fit --config configs/resnet18.yaml --config configs/optim/sgdm.yaml
    padam-fit fit --config configs/wrn.yaml --ckpt_path last          # resume the latest run
    padam-fit fit --config configs/wrn.yaml --print_config            # show what would run
    padam-fit test --config configs/wrn.yaml --ckpt_path PATH.ckpt

Runs log to TensorBoard under ``lightning_logs/<data>-<arch>-<optimizer>/version_N`` (``<data>``:
the dataset, or an image folder's own name; or the folder given by
``--trainer.logger.init_args.{save_dir,name,version}``); each run folder holds the resolved
``config.yaml``, ``checkpoints/last.ckpt``, the best checkpoint by ``val/err`` and, once the run
has finished, ``finished.json``. ``validate``/``test``/``predict`` of a run's checkpoint log to
``<run>/eval/<stage>-<N>`` and leave the run's own files alone. Ctrl-C or SIGTERM stops a fit at
a batch boundary with ``last.ckpt`` saved there and prints the command that resumes it.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
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

from padam_lightning.cli.checkpointing import (
    AtomicCheckpointIO,
    Interruption,
    LastCheckpoint,
    RunSummary,
)
from padam_lightning.cli.config_files import (
    check_callback_stacking,
    check_not_sweep_files,
    config_file_args,
)
from padam_lightning.cli.parse_errors import option_strings, summarize_parse_error
from padam_lightning.cli.resume import (
    check_callbacks,
    check_data,
    check_network,
    check_optimizer,
    check_schedulers,
    read_checkpoint,
)
from padam_lightning.cli.run_layout import (
    CONFIG_FILE,
    DEFAULT_LOG_DIR,
    EVAL_FOLDER,
    LAST_CHECKPOINT_PATH,
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
from padam_lightning.training.partial_schedule import PartialSchedule
from padam_lightning.training.predictions import PredictionWriter
from padam_lightning.training.run_estimate import RunTimeEstimate
from padam_lightning.training.tensorboard import TensorBoardDashboards

#: What ``padam-fit`` without arguments prints (to stderr, exit status 2).
USAGE = """\
usage: padam-fit {fit,validate,test,predict} --config FILE [--config FILE ...] [--KEY VALUE ...]

  padam-fit fit --config configs/wrn.yaml --config configs/tiny.yaml   # a few-second CPU check
  padam-fit fit --config configs/wrn.yaml                             # the paper's WRN-16-4 run

padam-fit --help and padam-fit fit --help list every option."""

#: Whether a subcommand (fit, validate, ...) has begun: a Ctrl-C before it stopped the start-up
#: (read by :func:`padam_lightning.cli.main`).
subcommand_started = False

#: The largest seed ``seed_everything`` takes (numpy's seeds are unsigned 32-bit integers).
_MAX_SEED = 2**32 - 1

#: The subcommands that evaluate a checkpoint; they log to ``<run>/eval/<stage>-<N>``.
EVALUATION_STAGES = ("validate", "test", "predict")

DESCRIPTION = (
    "Train and evaluate VGG, ResNet and wide ResNet classifiers on CIFAR-10/100 (or a folder of "
    "images) with Padam or its baselines, from config files: "
    "padam-fit fit --config configs/wrn.yaml. Logs go to TensorBoard under lightning_logs/."
)


def optimizer_label(optimizer: Any) -> str:
    """Short name of a configured optimizer (``padam``, ``sgdm``, ``adam``, ``amsgrad``...).

    Args:
        optimizer: The ``model.optimizer`` config value: a ``class_path`` / ``init_args``
            namespace or dict, or ``None`` for the default (Padam).
    """
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


def _trains_on_cuda(accelerator: Any) -> bool:
    """Whether the trainer's ``accelerator`` setting will pick a CUDA GPU on this machine."""
    if not torch.cuda.is_available():
        return False
    if accelerator is None or isinstance(accelerator, str):
        return (accelerator or "auto") in ("auto", "gpu", "cuda")
    return "cuda" in type(accelerator).__name__.lower()


def _schedules_the_optimizer(callbacks: Any) -> bool:
    """Whether the configured trainer callbacks include a PartialSchedule (it changes lr and p)."""
    entries = callbacks if isinstance(callbacks, list) else [callbacks]
    names = [
        str(entry.get("class_path") if isinstance(entry, Namespace) else entry)
        for entry in entries
        if entry is not None
    ]
    return any(PartialSchedule.__name__ in name for name in names)


def _latest_run_checkpoint(run_root: Path) -> Path:
    """``last.ckpt`` of the run folder under ``run_root`` trained most recently (it may not exist).

    Only the latest run is considered: when it crashed before its first checkpoint, resuming an
    older run in its place would be a silent surprise, so the caller reports the missing file.
    Folders without ``config.yaml`` (written before the first training step) are left out when
    others have one: there a run failed before it started, e.g. because its data was missing.
    "Trained" counts the files training writes (``config.yaml``, ``last.ckpt``, the event files),
    not the folder's own time: evaluating a run's checkpoint (:data:`EVAL_FOLDER`) must not make
    it the latest.
    """
    runs = _run_folders(run_root)
    started = [folder for folder in runs if (folder / CONFIG_FILE).is_file()]
    runs = started or runs
    if not runs:
        return run_root / "*" / LAST_CHECKPOINT_PATH

    def last_trained(folder: Path) -> tuple[float, int]:
        written = [
            path for path in (folder / CONFIG_FILE, folder / LAST_CHECKPOINT_PATH) if path.is_file()
        ]
        written += folder.glob("events.out.tfevents.*")
        used = max((path.stat().st_mtime for path in written), default=folder.stat().st_mtime)
        # File times tick coarsely (a few ms): on a tie the higher version_N is the newer run.
        number = folder.name.removeprefix("version_")
        return used, int(number) if number.isdigit() else -1

    return max(runs, key=last_trained) / LAST_CHECKPOINT_PATH


def _evaluation_version(run_dir: Path, stage: str) -> str:
    """``<stage>-<N>``: the TensorBoard logger's version for an evaluation of ``run_dir``.

    Results go to ``<run_dir>/eval/<stage>-<N>`` (N counts up from 0), never into the training
    run's own event files, so the run's curves, ``finished.json`` and its place as the latest run
    stay as they were.
    """
    folder = run_dir / EVAL_FOLDER
    taken = {path.name for path in folder.glob(f"{stage}-*")} if folder.is_dir() else set()
    number = next(n for n in range(len(taken) + 1) if f"{stage}-{n}" not in taken)
    return f"{stage}-{number}"


def resume_command(args: Sequence[str] | None, last: Path) -> str:
    """The ``padam-fit`` command that continues a stopped run from its ``last.ckpt``.

    The run's own arguments with ``--ckpt_path`` set to the file, which also makes the resumed
    run log into the same run folder (``--ckpt_path last`` picks the latest run of the config,
    which is the same one unless another was started since).

    Args:
        args: The stopped command's arguments (after ``padam-fit``); None when not known.
        last: The run's ``last.ckpt``.
    """
    kept: list[str] = []
    skip_value = False
    for arg in args or ["fit", "--config", "<the run's config files>"]:
        if skip_value:
            skip_value = False
        elif arg == "--ckpt_path":
            skip_value = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["padam-fit", *kept, "--ckpt_path", str(last)])


def _follow_default_root_dir(trainer: Namespace, logger_args: Namespace | None) -> None:
    """Put the logs under ``--trainer.default_root_dir`` when it is given, as Lightning does.

    Lightning's default logger writes to ``<default_root_dir>/lightning_logs``; padam-fit's
    TensorBoard logger has its own ``save_dir`` default, which would otherwise ignore the flag. An
    explicit ``--trainer.logger.init_args.save_dir`` other than the default wins.
    """
    root = trainer.get("default_root_dir")
    if root is None or logger_args is None:
        return
    if str(logger_args.get("save_dir") or DEFAULT_LOG_DIR) == DEFAULT_LOG_DIR:
        logger_args["save_dir"] = str(Path(str(root)) / DEFAULT_LOG_DIR)


def _run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder holding ``checkpoint`` (``<run>/checkpoints/x.ckpt``), or None."""
    if checkpoint.parent.name == LAST_CHECKPOINT_PATH.parent.name:
        return checkpoint.parent.parent
    return None


def _run_folders(run_root: Path) -> list[Path]:
    """The run folders under ``run_root`` (its :data:`EVAL_FOLDER` left out; none if absent)."""
    return [
        folder for folder in run_root.glob("*") if folder.is_dir() and folder.name != EVAL_FOLDER
    ]


def _run_root(logger_args: Namespace) -> Path:
    """``<save_dir>/<name>`` of the TensorBoard logger: the folder of the run folders."""
    return Path(logger_args.get("save_dir") or DEFAULT_LOG_DIR) / str(logger_args.get("name") or "")


def _run_names(config: Namespace) -> tuple[str, str | None]:
    """The run name ``<data>-<arch>-<optimizer>`` and the name earlier versions gave it, if other.

    ``<data>`` is the dataset, or for an image folder the folder's own name (``cifar10-jpeg`` for
    ``data/cifar10-jpeg``): what the run read, not how it was loaded. Earlier versions wrote
    ``imagefolder``; ``--ckpt_path last`` still finds those runs.
    """
    data = config.get("data") if isinstance(config.get("data"), Namespace) else Namespace()
    dataset = str(data.get("dataset", "data"))
    source = dataset
    if dataset == "imagefolder" and data.get("data_dir"):
        source = Path(str(data.data_dir)).resolve().name or dataset
    rest = (
        str(config.model.get("arch", "model")),
        optimizer_label(config.model.get("optimizer")),
    )
    name = "-".join((source, *rest))
    legacy = "-".join((dataset, *rest))
    return name, (legacy if legacy != name else None)


def _scheduler_states(optimizer_config: Any) -> list[dict[str, Any]]:
    """``state_dict()`` of the lr scheduler in ``ImageClassifier.configure_optimizers()``'s result.

    That is an optimizer alone, or ``{"optimizer": ..., "lr_scheduler": {"scheduler": ...}}``.
    """
    entry = optimizer_config.get("lr_scheduler") if isinstance(optimizer_config, dict) else None
    if entry is None:
        return []
    scheduler = entry["scheduler"] if isinstance(entry, dict) else entry
    return [scheduler.state_dict()]


def check_numeric_settings(config: Namespace) -> None:
    """Refuse numbers that parse as the right type but that Lightning fails on with a traceback.

    jsonargparse checks types only; Lightning checks most trainer numbers itself (``max_steps``,
    ``num_nodes``, ``limit_*_batches``: reported in one line by
    :meth:`PadamCLI.instantiate_trainer`). These it does not check, and fails later: the seed
    (numpy's ``ValueError`` in ``seed_everything``), ``check_val_every_n_epoch`` and
    ``accumulate_grad_batches`` of 0 (a ``ZeroDivisionError`` in the first epoch).

    Args:
        config: The parsed config of the subcommand (``seed_everything``, ``trainer``, ...).

    Raises:
        UserError: Naming the first setting out of range, its value and what it accepts.
    """
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= _MAX_SEED:
        raise UserError(
            f"seed_everything: {seed} is out of range; expected an integer from 0 to {_MAX_SEED} "
            "(numpy's seed range), true (a random seed) or false (no seeding)."
        )
    trainer = config.get("trainer") or Namespace()
    for key in ("check_val_every_n_epoch", "accumulate_grad_batches"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise UserError(f"trainer.{key}: expected a positive integer, got {value}.")


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config in the run folder: ``config.yaml`` for ``fit``.

    ``validate`` and ``test`` of a run's checkpoint write ``config-validate.yaml`` /
    ``config-test.yaml`` beside it instead of replacing the record of how the run was trained.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        """Pick the file name for this stage, then save as LightningCLI does."""
        name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
        if name != "fit":
            self.config_filename = f"config-{name}.yaml"
        super().setup(trainer, pl_module, stage)


class PadamCLI(LightningCLI):
    """LightningCLI with this project's defaults: checkpoints, logs, divergence guard, resume.

    Three of its overrides are of LightningCLI's private methods, for want of public hooks (the
    ``lightning<3`` pin in pyproject.toml guards them, the tests in ``tests/cli`` exercise each):
    ``_parse_ckpt_path`` (keep the command's model settings on resume), ``_instantiate_trainer``
    (drop the checkpoint callbacks under ``--trainer.enable_checkpointing false``) and
    ``_run_subcommand`` (print the resume command when a fit stops early).
    """

    #: The checkpoint a ``fit`` resumes from and its content (read once, in parse_arguments).
    _resume: tuple[Path, dict[str, Any]] | None = None
    #: The run name earlier versions gave this configuration, where it differs.
    _legacy_run_name: str | None = None
    #: The command's arguments (for the resume hint), None when not given as a list.
    _command_args: list[str] | None = None
    #: The subcommands' parsers (their options are suggested for a misspelled one).
    _parsers: tuple[LightningArgumentParser, ...] = ()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the checkpoint options and link the class count from the data to the model.

        LightningCLI calls this for each subcommand's parser; they are kept for typo suggestions.
        """
        self._parsers = (*self._parsers, parser)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/err",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                # last.ckpt is written by LastCheckpoint every epoch; this one keeps the best.
                "checkpoint.save_last": False,
                "checkpoint.save_on_train_epoch_end": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-err{val/err:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # Padam as a parsed default (not only the module's fallback), so that its options can be
        # set on the command line without naming the class: --model.optimizer.init_args.partial.
        parser.set_defaults(
            {
                "model.optimizer": {
                    "class_path": qualified_name(Padam),
                    "init_args": dict(DEFAULT_OPTIMIZER_ARGS),
                }
            }
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then fill in run-dependent defaults and check ``--ckpt_path``.

        This runs before LightningCLI reads the checkpoint's hyperparameters, so a missing or
        broken checkpoint gets a clear message instead of a loader traceback.

        Raises:
            UserError: For any parsing mistake (unknown option, bad value, missing config file),
                in one line instead of jsonargparse's usage text.
        """
        command = sys.argv[1:] if args is None else args
        self._command_args = [str(a) for a in command] if isinstance(command, list) else None
        # Before jsonargparse merges the files, which keeps only the last file's callback list.
        config_files = config_file_args(self._command_args or [])
        check_not_sweep_files(config_files)
        check_callback_stacking(config_files)
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
            # cuDNN autotuning pays off: CIFAR's convolution shapes are fixed, so it is tuned in
            # the first steps only. Not yet measured on a GPU; benchmarks/gpu.sh measures both
            # (row cudnn_benchmark). Keep equal to benchmarks/_timing.py's CUDNN_BENCHMARK.
            trainer.benchmark = True
        logger_args = self._tensorboard_args(config)
        _follow_default_root_dir(trainer, logger_args)
        self._legacy_run_name = None
        if logger_args is not None and not logger_args.get("name"):
            logger_args["name"], self._legacy_run_name = _run_names(config)
        self._resume = None
        if subcommand and config.get("ckpt_path"):
            config.ckpt_path = self._resolve_checkpoint(
                config, str(config.ckpt_path), logger_args, subcommand
            )
        if subcommand in EVALUATION_STAGES and logger_args is not None:
            self._log_evaluation_apart(config, logger_args, subcommand)

    @staticmethod
    def _tensorboard_args(config: Namespace) -> Namespace | None:
        logger = config.trainer.get("logger")
        if isinstance(logger, Namespace) and "TensorBoardLogger" in str(logger.get("class_path")):
            init_args = logger.get("init_args")
            if init_args is None:
                logger.init_args = init_args = Namespace()
            return init_args
        return None

    def _resolve_checkpoint(
        self, config: Namespace, ckpt_path: str, logger_args: Namespace | None, subcommand: str
    ) -> str:
        """Turn ``last`` into a file, check the file, and continue logging in its run folder.

        ``fit`` (resuming) also checks the optimizer against the checkpoint's here, from the
        config; the checks that need the built trainer, model and data run in :meth:`before_fit`.
        """
        run_root = _run_root(logger_args) if logger_args is not None else None
        if ckpt_path == "last":
            if run_root is None:
                raise UserError(
                    "--ckpt_path last needs the TensorBoard logger to find the run folder; pass "
                    "the checkpoint file instead: --ckpt_path PATH/last.ckpt"
                )
            elif logger_args is not None and logger_args.get("version") is not None:
                version = logger_args.version
                folder = f"version_{version}" if isinstance(version, int) else str(version)
                path = run_root / folder / LAST_CHECKPOINT_PATH
            else:
                if self._legacy_run_name and not _run_folders(run_root):
                    # Runs of earlier versions were named after the loader ("imagefolder-..."):
                    # resume those rather than report that nothing is there.
                    legacy_root = run_root.with_name(self._legacy_run_name)
                    if _run_folders(legacy_root) and logger_args is not None:
                        run_root = legacy_root
                        logger_args["name"] = self._legacy_run_name
                path = _latest_run_checkpoint(run_root)
            if not path.is_file():
                raise UserError(
                    f"--ckpt_path last: no checkpoint found at {path}. Start the run without "
                    "--ckpt_path, or pass the logger folder of the run to resume "
                    "(--trainer.logger.init_args.name/version) or the file itself. (Runs with "
                    "--trainer.enable_checkpointing false write no checkpoint to resume from.)"
                )
        else:
            path = Path(ckpt_path)
            if not path.is_file():
                raise UserError(f"--ckpt_path {ckpt_path}: no such file.")
        # Checked now, before the run's config.yaml is rewritten: the checkpoint's network and
        # optimizer state would silently overrule what this command asks for.
        checkpoint = read_checkpoint(path)
        model = config.get("model") if isinstance(config.get("model"), Namespace) else Namespace()
        check_network(path, checkpoint, model.get("arch"), evaluating=subcommand != "fit")
        if subcommand == "fit":
            optimizer = model.get("optimizer")
            if isinstance(optimizer, Namespace):
                class_path, init_args = optimizer.get("class_path"), optimizer.get("init_args")
            else:  # ImageClassifier's default
                class_path, init_args = qualified_name(Padam), None
            check_optimizer(
                path,
                checkpoint,
                class_path,
                init_args.as_dict() if isinstance(init_args, Namespace) else {},
                scheduled=_schedules_the_optimizer(config.trainer.get("callbacks")),
            )
            self._resume = (path, checkpoint)
        # Resuming a run keeps writing to its folder, so its curves continue in one place.
        if (
            subcommand == "fit"
            and logger_args is not None
            and run_root is not None
            and logger_args.get("version") is None
            and (run_folder := _run_folder_of(path)) is not None
            and run_folder.parent.resolve() == run_root.resolve()
        ):
            logger_args["version"] = run_folder.name
        return str(path)

    def _log_evaluation_apart(self, config: Namespace, logger_args: Namespace, stage: str) -> None:
        """Send an evaluation's logs to an ``eval/<stage>-<N>`` folder, never into a run's own.

        With a checkpoint in a run folder: ``<run>/eval/<stage>-<N>``; otherwise
        ``<save_dir>/<name>/eval/<stage>-<N>``. An explicit ``--trainer.logger.init_args.version``
        is kept as given.
        """
        if logger_args.get("version") is not None:
            return
        ckpt_path = config.get("ckpt_path")
        run_dir = _run_folder_of(Path(ckpt_path)) if ckpt_path else None
        if run_dir is None:
            run_dir = _run_root(logger_args)
        logger_args["save_dir"] = run_dir
        logger_args["version"] = _evaluation_version(run_dir, stage)
        logger_args["name"] = EVAL_FOLDER

    def _parse_ckpt_path(self) -> None:
        """Keep the command's ``model.*`` settings instead of the checkpoint's hyperparameters.

        LightningCLI parses a checkpoint's ``hyper_parameters`` over the command's model settings,
        so ``--model.channels_last`` or ``--model.compile`` would be accepted and then ignored
        (and another ``arch`` silently replaced). Here the network is checked against the
        checkpoint instead (:func:`check_network`, ``ImageClassifier.on_load_checkpoint``), and
        everything else applies as configured.
        """

    def before_fit(self) -> None:
        """Refuse a resume whose settings the checkpoint would overrule (nothing written yet).

        Runs after the trainer, model and data are built, before ``Trainer.fit`` creates or
        touches the run folder: the lr schedulers, the callbacks' settings and the data seed are
        compared with the checkpoint's (``cli/resume.py`` lists what Lightning restores). A run
        without a logger must not overwrite files already there (:meth:`_refuse_to_overwrite`).

        Raises:
            UserError: If the checkpoint cannot continue the run this command describes.
        """
        self._refuse_to_overwrite("fit")
        if self._resume is None:
            return
        path, checkpoint = self._resume
        hparams = self.model.hparams
        check_network(path, checkpoint, hparams.get("arch"), hparams.get("num_classes"))
        check_schedulers(path, checkpoint, _scheduler_states(self.model.configure_optimizers()))
        check_callbacks(path, checkpoint, self.trainer)
        datamodule = getattr(self, "datamodule", None)
        check_data(
            path,
            checkpoint,
            datamodule,
            getattr(datamodule, "effective_seed", None),
            self.trainer.world_size,
        )

    def before_validate(self) -> None:
        """See :meth:`_refuse_to_overwrite`."""
        self._refuse_to_overwrite("validate")

    def before_test(self) -> None:
        """See :meth:`_refuse_to_overwrite`."""
        self._refuse_to_overwrite("test")

    def before_predict(self) -> None:
        """See :meth:`_refuse_to_overwrite`."""
        self._refuse_to_overwrite("predict")

    def _refuse_to_overwrite(self, stage: str) -> None:
        """Refuse a run without a logger whose files would replace files already there.

        With a logger every run writes into a fresh run folder (a resume into its own). Without
        one (``--trainer.logger false``), Lightning writes checkpoints to
        ``<default_root_dir>/checkpoints`` and padam-fit the config to
        ``<default_root_dir>/config.yaml`` (``config-<stage>.yaml`` for an evaluation), and
        ``default_root_dir`` is the working directory unless given: a user's own ``config.yaml``
        or another run's checkpoints would be overwritten. Only a ``fit`` that resumes from a
        checkpoint of that folder may rewrite them: they are its own run's.

        Raises:
            UserError: If such a file exists, before anything is written.
        """
        if self.trainer.loggers:
            return
        root = Path(self.trainer.default_root_dir)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        checkpoints = root / LAST_CHECKPOINT_PATH.parent
        if (
            stage == "fit"
            and ckpt_path is not None
            and Path(str(ckpt_path)).resolve().parent == checkpoints.resolve()
        ):
            return  # resuming the run that owns this folder
        config_file = root / (CONFIG_FILE if stage == "fit" else f"config-{stage}.yaml")
        taken = [config_file] if config_file.exists() else []
        if stage == "fit" and self.trainer.checkpoint_callbacks and checkpoints.is_dir():
            taken += sorted(checkpoints.glob("*.ckpt"))[:1]
        if taken:
            writes = f"{config_file.name} and checkpoints/" if stage == "fit" else config_file.name
            raise UserError(
                f"without a logger, {stage} writes {writes} into {root} "
                "(--trainer.default_root_dir, by default the working directory), and "
                f"{taken[0]} already exists; padam-fit does not overwrite it. Pass "
                "--trainer.default_root_dir with a new folder, or keep the logger (each run "
                "then gets its own folder under lightning_logs/)."
            )

    def _after_evaluation(self, stage: str) -> None:
        """Say where an evaluation's results went (they are not in the run's own curves)."""
        log_dir = self.trainer.log_dir if self.trainer.loggers else None
        if log_dir is not None:
            rank_zero_only(print)(f"padam-fit: {stage} results logged to {log_dir}")

    def after_validate(self) -> None:
        """See :meth:`_after_evaluation`."""
        self._after_evaluation("validate")

    def after_test(self) -> None:
        """See :meth:`_after_evaluation`."""
        self._after_evaluation("test")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        """Build the trainer with the package's callbacks giving way to Lightning's own flags.

        ``--trainer.enable_checkpointing false`` means a run that writes no checkpoints, so the
        package's checkpoint callbacks (``last.ckpt`` and the best one) are left out instead of
        making Lightning refuse the flag. A checkpoint callback the user lists in
        ``trainer.callbacks`` is kept, and Lightning reports the contradiction.
        """
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
            defaults = self.trainer_defaults.get("callbacks") or []
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [c for c in defaults if not isinstance(c, ModelCheckpoint)],
            }
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; when a fit stops before its end, print how to resume it.

        Raises:
            SystemExit: With status 130 (Ctrl-C) or 143 (SIGTERM) when a signal stopped the fit
                (Lightning's own stop exits 0 or 1), after saying how to resume.
        """
        global subcommand_started
        subcommand_started = True
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if subcommand == "fit" and not isinstance(err, UserError):
                self._tell_how_to_resume()
                stopped_by = self._interruption_signal()
                if stopped_by is not None:
                    raise SystemExit(128 + signal.Signals[stopped_by].value) from None
            raise

    def _interruption_signal(self) -> str | None:
        """``SIGINT`` or ``SIGTERM`` if a signal stopped the fit (None otherwise)."""
        trainer = getattr(self, "trainer", None)
        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, Interruption) and callback.signal_name is not None:
                return callback.signal_name
        return None

    def _tell_how_to_resume(self) -> None:
        """Print the command that resumes this run, when it has a checkpoint to resume from.

        Says whether ``last.ckpt`` holds where the run stopped (a stop in training) or its last
        checkpoint from before (a stop in validation, a crash), with that checkpoint's step.
        """
        last, saved_at_stop, in_validation = None, False, False
        for callback in getattr(self.trainer, "callbacks", []):
            if isinstance(callback, LastCheckpoint) and callback.dirpath is not None:
                last = Path(callback.dirpath) / LAST_CHECKPOINT_PATH.name
                saved_at_stop = callback.saved_at_stop
            if isinstance(callback, Interruption):
                in_validation = callback.stopped_in_validation
        if last is None or not last.is_file():
            return
        if saved_at_stop:
            state = f"the run stopped before its end; {last} holds where it stopped"
        else:
            try:
                steps = f", after {read_checkpoint(last)['global_step']} training steps"
            except (UserError, KeyError):
                steps = ""
            where = (
                "during validation, which saves no checkpoint"
                if in_validation
                else ("where no checkpoint was saved")
            )
            state = (
                f"the run stopped before its end, {where}; {last} holds its last checkpoint"
                f"{steps} (continuing repeats the training since)"
            )
        rank_zero_only(print)(
            f"padam-fit: {state}. To continue it: {resume_command(self._command_args, last)}",
            file=sys.stderr,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the trainer and make its checkpoint writes atomic.

        Raises:
            UserError: If Lightning refuses a trainer setting (an unknown accelerator or strategy
                name, devices the machine does not have or a device count of the wrong kind).
        """
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, TypeError, MisconfigurationException) as err:
            # Trainer.__init__ only resolves its arguments: a ValueError there is a bad setting,
            # and so is a TypeError (`--trainer.devices -2`: "should be an int > 0").
            raise UserError(f"invalid trainer setting: {err}") from None
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def build_cli(args: ArgsType = None, run: bool = True) -> PadamCLI:
    """Construct (and by default run) the ``padam-fit`` command line."""
    return PadamCLI(
        ImageClassifier,
        CIFARDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        seed_everything_default=0,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {
                    "save_dir": DEFAULT_LOG_DIR,
                    "name": None,
                    "default_hp_metric": False,
                },
            },
            "callbacks": [
                DivergenceGuard(),  # NaN/inf loss: stop, naming the step; no diverged checkpoint
                LastCheckpoint(),
                RunSummary(),
                RunTimeEstimate(),
                TensorBoardDashboards(),
                PredictionWriter(),
                Interruption(),  # Ctrl-C / SIGTERM: save where the run stopped, resume exactly
            ],
        },
        # exit_on_error=False: parse errors become exceptions, reported in one line by
        # PadamCLI.parse_arguments instead of jsonargparse's usage text.
        parser_kwargs={"description": DESCRIPTION, "exit_on_error": False},
    )


class _WithoutAdvertisements(logging.Filter):
    """Drops Lightning's start-up tip that advertises its cloud logger (printed on every run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_NO_ADVERTISEMENTS = _WithoutAdvertisements()


#: What padam-fit adds to the library's divergence message: its own options and resume policy.
DIVERGENCE_HINT = (
    " In padam-fit those are --model.optimizer.init_args.lr and --trainer.precision (bf16-mixed "
    "or 32-true), in a new run: a resume keeps the settings stored in the run's checkpoint."
)


def _quiet_known_warnings() -> None:
    """Silence warnings that are expected here and would only confuse users."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NO_ADVERTISEMENTS)  # a no-op when already added
    # The loaders yield index batches; images are gathered on the device, so no workers.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Lightning cannot see that the Interruption callback resumes a half-done epoch exactly.
    warnings.filterwarnings("ignore", ".*ended before the epoch ended and your dataloader is not.*")
    # Emitted by Lightning's own code under recent torch releases; nothing a user can change.
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def main(args: ArgsType = None) -> None:
    """Entry point of ``padam-fit``: user mistakes print one line and exit non-zero."""
    _quiet_known_warnings()
    if (sys.argv[1:] if args is None else args) == []:
        print(USAGE, file=sys.stderr)
        sys.exit(UserError.exit_code)
    try:
        build_cli(args)
    except (UserError, MisconfigurationException, ArgumentError) as err:
        # MisconfigurationException: Lightning's own checks of trainer settings at fit time.
        # ArgumentError: a parse error outside PadamCLI.parse_arguments (e.g. a checkpoint's
        # stored settings).
        message = summarize_parse_error(str(err)) if isinstance(err, ArgumentError) else str(err)
        if isinstance(err, TrainingDivergedError):
            message += DIVERGENCE_HINT
        rank_zero_only(print)(f"padam-fit: error: {message}", file=sys.stderr)
        sys.exit(err.exit_code if isinstance(err, UserError) else UserError.exit_code)


if __name__ == "__main__":
    main()
