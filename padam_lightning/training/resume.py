"""Checks that a checkpoint can continue the run a command describes, before anything is written.

A resumed run takes its network and optimizer state from the checkpoint: LightningCLI builds the
model from the checkpoint's hyperparameters, and the optimizer's ``param_groups`` (learning rate,
betas, p, ...) are restored over the configured ones. A command that asks for another network,
optimizer or optimizer setting would therefore be silently overruled, while its config was saved
over the run's ``config.yaml`` as if it had been used. These checks refuse such a command instead.
"""

from __future__ import annotations

import importlib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from padam_lightning.errors import UserError

#: Checkpoint key holding the optimizer classes of the run, written by ImageClassifier.
OPTIMIZER_CLASSES_KEY = "padam_lightning_optimizer_classes"

#: Optimizer arguments that choose an implementation, not the update: free to change on resume.
IMPLEMENTATION_ARGS = frozenset({"foreach", "fused", "capturable", "differentiable"})

#: Optimizer arguments a schedule callback (PartialSchedule) changes during training.
SCHEDULED_ARGS = frozenset({"lr", "partial"})

#: What to do when a checkpoint cannot continue the run a command describes.
RESUME_HINT = (
    "A resumed run continues with the checkpoint's network and optimizer: resume with the run's "
    "own config (its config.yaml), or start a new run without --ckpt_path to change them."
)


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, e.g. ``padam_lightning.optim.padam.Padam``."""
    return f"{cls.__module__}.{cls.__qualname__}"


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


def check_network(path: Path, checkpoint: Mapping[str, Any], arch: str | None) -> None:
    """Refuse a checkpoint of another network than ``arch``.

    Raises:
        UserError: If the checkpoint's ``arch`` hyperparameter differs.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    if arch is not None and "arch" in saved and saved["arch"] != arch:
        raise UserError(
            f"--ckpt_path {path}: the checkpoint is of a {saved['arch']} network, but this run "
            f"asks for {arch}. {RESUME_HINT}"
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
