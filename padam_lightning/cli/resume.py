"""Checks that a checkpoint can continue the run a command describes, before anything is written.

What Lightning restores from a checkpoint when ``fit`` resumes, and what happens to each here:

- ``state_dict`` (the weights): the network must be the same (:func:`check_network`).
- ``hyper_parameters``: LightningCLI would parse them over the command's ``model.*``; padam-fit
  does not (``PadamCLI._parse_ckpt_path``), so the command's implementation switches
  (``channels_last``, ``compile``) apply as configured, and ``arch`` / ``num_classes`` are checked.
- ``optimizer_states``: their ``param_groups`` (lr, betas, p, ...) replace the configured ones, so
  the class and every hyperparameter must match (:func:`check_optimizer`).
- ``lr_schedulers``: the state replaces the scheduler's settings too (milestones, gamma, ...), and a
  scheduler added or removed is silently ignored, so they must match (:func:`check_schedulers`).
- ``callbacks``: each callback's state by its ``state_key`` (:func:`check_callbacks`).
- the data module's state (its seed) and ``datamodule_hyper_parameters`` (:func:`check_data`).
- ``loops`` (epoch and batch progress) and the precision plugin's scaler state: where the run
  stopped; that is what resuming means, and ``trainer.max_epochs`` may be raised to train on.

A command that asks for another setting than the checkpoint's would be silently overruled while
its config was saved over the run's ``config.yaml`` as if it had been used; these checks refuse it
before the run folder is touched.

Two checks stay in the library, because they protect any ``Trainer.fit(ckpt_path=...)``, not only
padam-fit: ``ImageClassifier.on_load_checkpoint`` refuses another ``arch`` or ``num_classes`` and
``ImageClassifier.on_train_start`` another optimizer class (both repeated here, earlier, so that
padam-fit refuses before it writes anything); and ``PartialSchedule.resume_conflict`` says which
of its own state is a setting, which :func:`check_callbacks` asks of every callback.
"""

from __future__ import annotations

import importlib
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.callbacks import EarlyStopping

from padam_lightning.errors import UserError
from padam_lightning.training.classifier import (
    EVALUATION_HINT,
    OPTIMIZER_CLASSES_KEY,
    RESUME_HINT,
    qualified_name,
)

#: Optimizer arguments that choose an implementation, not the update: free to change on resume.
IMPLEMENTATION_ARGS = frozenset({"foreach", "fused", "capturable", "differentiable"})

#: Optimizer arguments a schedule callback (PartialSchedule) changes during training.
SCHEDULED_ARGS = frozenset({"lr", "partial"})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load the Lightning checkpoint ``path`` memory-mapped (only its small entries are read).

    Raises:
        UserError: If ``path`` is not a complete Lightning checkpoint.
    """
    problem = None
    content: Any = None
    if not zipfile.is_zipfile(path):
        problem = "not a complete torch.save archive; the file may be truncated or of another kind"
    else:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                problem = "a zip archive, but not one written by torch.save"
    if problem is None:
        try:
            # weights_only, as LightningCLI itself loads it next for the hyperparameters.
            content = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as err:  # any unpickling failure means the same to the user
            problem = f"torch.load could not read it: {type(err).__name__}"
    if problem is None and not (
        isinstance(content, dict) and {"state_dict", "pytorch-lightning_version"} <= set(content)
    ):
        problem = "a torch file but not a Lightning checkpoint, e.g. a bare state_dict"
    if problem is not None:
        raise UserError(
            f"--ckpt_path {path}: not a checkpoint ({problem}). Pass a .ckpt file written by "
            "padam-fit."
        )
    return dict(content)


def check_network(
    path: Path,
    checkpoint: Mapping[str, Any],
    arch: str | None,
    num_classes: int | None = None,
    evaluating: bool = False,
) -> None:
    """Refuse a checkpoint of another network than ``arch`` with ``num_classes`` outputs.

    Args:
        path: The checkpoint file (for the message).
        checkpoint: Its content, from :func:`read_checkpoint`.
        arch: The configured network (None: not known yet, not compared).
        num_classes: The class count of the configured data (None: not known yet; it is linked
            from the data module when the model is built, so ``before_fit`` compares it).
        evaluating: Whether the checkpoint is to be evaluated (validate, test, predict) rather
            than resumed; only the message differs.

    Raises:
        UserError: If the checkpoint's ``arch`` or ``num_classes`` hyperparameter differs.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    hint, what = (EVALUATION_HINT, "evaluation") if evaluating else (RESUME_HINT, "run")
    if arch is not None and "arch" in saved and saved["arch"] != arch:
        fix = f" (or --model.arch {saved['arch']})" if evaluating else ""
        raise UserError(
            f"--ckpt_path {path}: the checkpoint is of a {saved['arch']} network, but this {what} "
            f"asks for {arch}. {hint.removesuffix('.')}{fix}."
        )
    if num_classes is not None and "num_classes" in saved and saved["num_classes"] != num_classes:
        raise UserError(
            f"--ckpt_path {path}: the checkpoint's network has {saved['num_classes']} classes, "
            f"but this {what}'s data has {num_classes}. {hint}"
        )


def check_optimizer(
    path: Path,
    checkpoint: Mapping[str, Any],
    class_path: str | None,
    init_args: Mapping[str, Any],
    scheduled: bool,
) -> None:
    """Refuse to resume with another optimizer class or hyperparameter than the checkpoint's.

    Args:
        path: The checkpoint file (for the message).
        checkpoint: Its content, from :func:`read_checkpoint`.
        class_path: The configured optimizer class (None: not known, not checked).
        init_args: The configured optimizer arguments.
        scheduled: Whether a callback schedules ``lr`` and ``partial`` (they are then not
            compared: their checkpoint values are the schedule's, not the configured ones).

    Raises:
        UserError: If the class or a hyperparameter differs from the checkpoint's.
    """
    saved_classes = checkpoint.get(OPTIMIZER_CLASSES_KEY)
    if class_path is not None and saved_classes:
        configured = _qualified_class_path(class_path)
        if configured is not None and configured != saved_classes[0]:
            raise UserError(
                f"--ckpt_path {path}: the checkpoint was trained with {saved_classes[0]}, but this "
                f"run's optimizer is {configured}. {RESUME_HINT}"
            )
    # A schedule in the checkpoint moved lr and p too; its removal is reported by check_callbacks.
    scheduled = scheduled or any(
        str(key).startswith(RUN_DEFINING_CALLBACKS) for key in checkpoint.get("callbacks") or {}
    )
    states = checkpoint.get("optimizer_states") or []
    groups = states[0].get("param_groups") if states and isinstance(states[0], dict) else None
    if not groups:
        return
    group = groups[0]
    for name, value in init_args.items():
        if name in IMPLEMENTATION_ARGS or (scheduled and name in SCHEDULED_ARGS):
            continue
        # An lr scheduler rewrites "lr" and keeps the configured value as "initial_lr".
        key = "initial_lr" if name == "lr" and "initial_lr" in group else name
        if key in group and not _same(group[key], value):
            raise UserError(
                f"--ckpt_path {path}: the checkpoint's optimizer has {name} {group[key]!r}, but "
                f"this run configures {value!r}. {RESUME_HINT}"
            )


def _qualified_class_path(class_path: str) -> str | None:
    """The qualified name of the class ``class_path`` names (None if it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # the parser reports an unknown class itself
    return qualified_name(cls) if isinstance(cls, type) else None


def _same(saved: Any, configured: Any) -> bool:
    """Equal as the optimizer sees them: a YAML list equals a saved tuple, 1 equals 1.0."""
    if isinstance(saved, torch.Tensor):
        saved = saved.tolist()
    if isinstance(saved, Sequence) and not isinstance(saved, str):
        return (
            isinstance(configured, Sequence)
            and not isinstance(configured, str)
            and len(saved) == len(configured)
            and all(_same(a, b) for a, b in zip(saved, configured, strict=True))
        )
    return bool(saved == configured)


#: Keys of an lr scheduler's state that record its progress, not its settings: they change as the
#: run goes on, so a resumed run's checkpoint values are expected to differ from a fresh one's.
SCHEDULER_PROGRESS_KEYS = frozenset(
    {
        "last_epoch",
        "_step_count",
        "_last_lr",
        "base_lrs",
        "_get_lr_called_within_step",
        "_is_initial",
        "_initial_step",
        "verbose",
        # ReduceLROnPlateau, CosineAnnealingWarmRestarts, CyclicLR, OneCycleLR progress
        "best",
        "num_bad_epochs",
        "cooldown_counter",
        "last_epoch_rounded",
        "T_cur",
        "T_i",
        "_scale_fn_ref",
        "_scale_fn_custom",
        "_milestones",  # SequentialLR's are settings, but derived from its schedulers'
    }
)

#: Data module hyperparameters that define the training data (a resumed run must keep them);
#: the others (data_dir, download, eval_batch_size) say where the data is or how it is evaluated.
TRAINING_DATA_ARGS = ("dataset", "batch_size", "augment", "synthetic_train_size")


def check_schedulers(
    path: Path, checkpoint: Mapping[str, Any], configured: Sequence[Mapping[str, Any]]
) -> None:
    """Refuse a resume whose lr schedulers differ from the checkpoint's.

    Lightning loads the checkpoint's scheduler state over the configured scheduler, which
    replaces its settings too (``MultiStepLR``'s milestones and gamma are part of its state), and
    ignores a scheduler added or removed. Either would train with another schedule than the one
    the command (and the run's ``config.yaml``) states.

    Args:
        path: The checkpoint file (for the message).
        checkpoint: Its content, from :func:`read_checkpoint`.
        configured: ``state_dict()`` of each scheduler this run configures, freshly built.

    Raises:
        UserError: If the number of schedulers, a scheduler's kind or one of its settings differs.
    """
    saved = list(checkpoint.get("lr_schedulers") or [])
    if len(saved) != len(configured):
        what = {0: "no lr scheduler", 1: "an lr scheduler"}
        raise UserError(
            f"--ckpt_path {path}: the checkpoint was trained with "
            f"{what.get(len(saved), f'{len(saved)} lr schedulers')}, but this run configures "
            f"{what.get(len(configured), f'{len(configured)}')} (model.scheduler). {RESUME_HINT}"
        )
    for saved_state, configured_state in zip(saved, configured, strict=True):
        difference = _settings_difference(saved_state, configured_state)
        if difference is not None:
            raise UserError(
                f"--ckpt_path {path}: the checkpoint's lr scheduler {difference}, so its schedule "
                f"would replace this run's (model.scheduler). {RESUME_HINT}"
            )


def _settings_difference(saved: Mapping[str, Any], configured: Mapping[str, Any]) -> str | None:
    """How two scheduler states differ in their settings (None: they do not)."""
    saved_keys = {key for key in saved if key not in SCHEDULER_PROGRESS_KEYS}
    configured_keys = {key for key in configured if key not in SCHEDULER_PROGRESS_KEYS}
    if saved_keys != configured_keys:
        return (
            f"has the settings {sorted(saved_keys)}, but this run's has "
            f"{sorted(configured_keys)} (another scheduler class)"
        )
    for key in sorted(saved_keys):
        old, new = saved[key], configured[key]
        if isinstance(old, Mapping) and isinstance(new, Mapping) and not isinstance(old, Counter):
            nested = _settings_difference(old, new)
            if nested is not None:
                return nested
        elif isinstance(old, list) and isinstance(new, list) and old and isinstance(old[0], dict):
            if len(old) != len(new):
                return f"chains {len(old)} schedulers, but this run's chains {len(new)}"
            for a, b in zip(old, new, strict=True):
                nested = _settings_difference(a, b)
                if nested is not None:
                    return nested
        elif not _same(_plain(old), _plain(new)):
            return f"has {key.lstrip('_')} {_plain(old)!r}, but this run configures {_plain(new)!r}"
    return None


def _plain(value: Any) -> Any:
    """A value as a user writes it: MultiStepLR keeps its milestones as a Counter."""
    if isinstance(value, Counter):
        return sorted(value.elements())
    return value


class ResumeAware(Protocol):
    """A callback whose settings a checkpoint's state would replace or contradict on resume."""

    def resume_conflict(self, saved_state: Mapping[str, Any] | None, trainer: Any) -> str | None:
        """Why the checkpoint's state (None: the run had no such callback) cannot continue.

        Args:
            saved_state: The callback's state in the checkpoint (None: there is none).
            trainer: The trainer that is about to resume (not yet running).

        Returns:
            A one-line reason, or None when the run continues as configured.
        """


#: Callback classes whose presence is part of the run: removing one on resume is refused.
RUN_DEFINING_CALLBACKS = ("PartialSchedule",)


def check_callbacks(path: Path, checkpoint: Mapping[str, Any], trainer: Any) -> None:
    """Refuse a resume whose callbacks' settings the checkpoint's callback states would overrule.

    Lightning restores each callback's ``state_dict`` by its ``state_key``. Callbacks that know
    what in their state is a setting implement :class:`ResumeAware` (``PartialSchedule``);
    ``EarlyStopping`` restores its ``patience`` over the configured one, so that is compared here;
    ``ModelCheckpoint`` keys its state by its settings, so changed settings start afresh as
    configured. A run-defining callback (:data:`RUN_DEFINING_CALLBACKS`) in the checkpoint that the
    command no longer configures is refused too.

    Raises:
        UserError: On the first conflict found.
    """
    saved: Mapping[str, Any] = checkpoint.get("callbacks") or {}
    configured_keys = set()
    for callback in trainer.callbacks:
        key = getattr(callback, "state_key", type(callback).__qualname__)
        configured_keys.add(key)
        state = saved.get(key)
        reason = None
        if hasattr(callback, "resume_conflict"):
            reason = callback.resume_conflict(state, trainer)
        elif (
            isinstance(callback, EarlyStopping)
            and state is not None
            and state.get("patience", callback.patience) != callback.patience
        ):
            reason = (
                f"EarlyStopping: the checkpoint's patience is {state['patience']}, but this "
                f"run configures {callback.patience} (Lightning would restore the old one)"
            )
        if reason is not None:
            raise UserError(f"--ckpt_path {path}: {reason}. {RESUME_HINT}")
    for key in saved:
        name = str(key).split("{", 1)[0]
        if name in RUN_DEFINING_CALLBACKS and key not in configured_keys:
            raise UserError(
                f"--ckpt_path {path}: the checkpoint was trained with the callback {name}, which "
                f"this run does not configure (trainer.callbacks). {RESUME_HINT}"
            )


def check_data(
    path: Path,
    checkpoint: Mapping[str, Any],
    datamodule: Any,
    seed: int | None,
    world_size: int | None = None,
) -> None:
    """Refuse a resume with another data seed, other training data or another process count.

    The data module restores the run's seed from the checkpoint (the shuffle order and the
    augmentation continue unchanged), so a command asking for another seed would be ignored;
    another dataset or batch size would make the resumed part of the run another experiment.

    Args:
        path: The checkpoint file (for the message).
        checkpoint: Its content, from :func:`read_checkpoint`.
        datamodule: The configured data module (its hyperparameters are compared).
        seed: The data seed this run configures (None: not known, not compared).
        world_size: The number of training processes this run has (None: not compared).
            Checkpoints written before it was saved are not compared either.

    Raises:
        UserError: If the seed, a setting of :data:`TRAINING_DATA_ARGS` or the number of
            processes (which sets the global batch and the shards of the data order) differs.
    """
    if datamodule is None:
        return
    state = checkpoint.get(type(datamodule).__qualname__)
    if (
        seed is not None
        and isinstance(state, Mapping)
        and "seed" in state
        and int(state["seed"]) != int(seed)
    ):
        raise UserError(
            f"--ckpt_path {path}: the run's data seed is {state['seed']}, but this run "
            f"configures {seed} (seed_everything / data.seed); the shuffle order and "
            f"augmentation of a resumed run continue with its own seed. {RESUME_HINT}"
        )
    if (
        world_size is not None
        and isinstance(state, Mapping)
        and "world_size" in state
        and int(state["world_size"]) != int(world_size)
    ):
        saved_size = int(state["world_size"])
        raise UserError(
            f"--ckpt_path {path}: the run was trained on {saved_size} process"
            f"{'es' if saved_size != 1 else ''} (a global batch of data.batch_size x "
            f"{saved_size}), but this run has {world_size} (trainer.devices x "
            f"trainer.num_nodes); resume with the run's devices and nodes, so that its batches "
            f"and data order continue unchanged. {RESUME_HINT}"
        )
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    configured = getattr(datamodule, "hparams", {}) or {}
    for name in TRAINING_DATA_ARGS:
        if name in saved and name in configured and not _same(saved[name], configured[name]):
            raise UserError(
                f"--ckpt_path {path}: the run was trained with data.{name} {saved[name]!r}, but "
                f"this run configures {configured[name]!r}. {RESUME_HINT}"
            )
