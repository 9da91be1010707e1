"""Whether a checkpoint can continue the run a command describes, and the command that does.

A resume keeps the checkpoint's optimizer, schedules and data order: :func:`check_resume` compares
the config saved in it with the command's. An evaluation loads only weights: :func:`check_network`.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from padam_lightning.cli.run_layout import CONFIG_FILE, without_ckpt_path
from padam_lightning.errors import UserError
from padam_lightning.training.classifier import EVALUATION_HINT


def _keys(names: str, section: str = "") -> list[str]:
    return [f"{section}{name}" for name in names.split()]


#: Keys a resume may change, each with the keys under it: none changes the numbers of the run.
RESUMABLE = frozenset(
    [
        # What this command was given (weights_only: how --ckpt_path loads), not a run setting.
        *_keys("config ckpt_path subcommand weights_only"),
        # When to stop: continuing a run to more epochs is what resuming is for.
        *_keys("max_epochs max_steps max_time min_epochs min_steps", "trainer."),
        # Where files go, what is shown, logged or checked (ModelCheckpoint keys its state by its
        # settings: changed ones start afresh; the run folder is found from the checkpoint).
        *_keys("logger default_root_dir enable_progress_bar enable_model_summary", "trainer."),
        *_keys("log_every_n_steps enable_autolog_hparams model_registry profiler", "trainer."),
        *_keys("detect_anomaly num_sanity_val_steps enable_checkpointing", "trainer."),
        "checkpoint",
        # Stages a fit does not run.
        *_keys("limit_test_batches limit_predict_batches", "trainer."),
        # Which hardware runs it (the world size and trainer.precision are compared instead).
        *_keys("accelerator devices num_nodes strategy", "trainer."),
        # Implementation switches: the same results up to round-off, the same checkpoints.
        *_keys("benchmark deterministic inference_mode", "trainer."),
        *_keys("compile compile_mode channels_last", "model."),
        *_keys("foreach fused capturable differentiable", "model.optimizer.init_args."),
        # Where the data is, how it is read or evaluated (in eval mode any batch size), not which.
        *_keys("data_dir download num_workers eval_batch_size", "data."),
    ]
)

#: Callbacks that only watch, show or save: a resume may add or remove them.
OBSERVING_CALLBACKS = frozenset(
    _keys("LearningRateMonitor DeviceStatsMonitor TQDMProgressBar RichProgressBar ModelSummary")
    + _keys("RichModelSummary ModelCheckpoint")
)

#: How many differing keys a refusal lists before "and N more".
MAX_LISTED = 5

_MISSING = object()  # a key that one of the two configs does not have


@dataclass(frozen=True)
class _Derived:  # a value an unset setting takes from others (source); compared by value alone
    value: Any
    source: str


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load checkpoint ``path`` (mmap, every CRC checked); if unusable, UserError naming others."""
    content, problem = _load(path)
    if problem is not None:
        raise UserError(f"--ckpt_path {path}: {problem}. {_alternatives(path)}")
    return content


def _load(path: Path) -> tuple[dict[str, Any], str | None]:
    """The checkpoint's content, or what is wrong with the file."""
    if not path.is_file():
        return {}, "a folder, not a checkpoint file" if path.is_dir() else "no such file"
    with path.open("rb") as file:
        head = file.read(512)
    if not head:
        return {}, "the file is empty (0 bytes): a save or copy was cut off"
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK\x03\x04"):
            return {}, "the file is truncated (its archive has no end): a save or copy was cut off"
        if b"\x00" not in head:  # binary files have zero bytes, text has none
            return {}, "a text file, not a checkpoint"
        return {}, "not a checkpoint: its bytes are not a torch.save archive"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return {}, "a zip archive, but not one written by torch.save"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        return {}, f"the file is damaged ({err})"
    if damaged is not None:
        return {}, f"the file is damaged (its entry {damaged} fails its checksum)"
    try:
        # weights_only=False, as Lightning itself loads a checkpoint to resume it next.
        content = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # any unpickling failure means the same to the user
        return {}, f"the file is damaged (torch.load: {type(err).__name__})"
    if not (
        isinstance(content, dict) and {"state_dict", "pytorch-lightning_version"} <= set(content)
    ):
        return {}, "a torch file but not a Lightning checkpoint, e.g. a bare state_dict"
    return content, None


def _alternatives(path: Path) -> str:
    """A sentence naming the checkpoints beside ``path`` that load and can continue a run."""
    folder = path if path.is_dir() else path.parent
    folders = [folder] if folder.name == "checkpoints" else [folder, folder / "checkpoints"]
    folders = [where for where in folders if where.is_dir()] or folders[:1]
    others = [file for where in folders for file in where.glob("*.ckpt") if file != path]
    usable = []
    for candidate in sorted(others, key=lambda file: file.stat().st_mtime, reverse=True):
        content, problem = _load(candidate)
        if problem is None and "optimizer_states" in content:  # save_weights_only cannot resume
            usable.append(f"{candidate} (epoch {content.get('epoch')})")
    where = " or ".join(str(f) for f in folders)
    if not usable:
        return f"No checkpoint in {where} loads and could continue the run."
    return f"Checkpoints in {where} that load, newest first: {', '.join(usable)}."


def resume_command(args: Sequence[str] | None, checkpoint: Path) -> str:
    """The command's arguments with ``--ckpt_path checkpoint``, run by the program that ran."""
    program, on_path = Path(sys.argv[0]), shutil.which("padam-fit")
    if program.name != "padam-fit":
        executable = [sys.executable, "-m", "padam_lightning.cli"]
    elif program == Path(program.name) or (
        on_path and Path(on_path).resolve() == program.resolve()
    ):
        executable = ["padam-fit"]  # as a user types it
    else:
        executable = [str(program.resolve())]
    kept = without_ckpt_path(args or ["fit", "--config", "<the run's config files>"])
    return shlex.join([*executable, *kept, "--ckpt_path", str(checkpoint)])


def resume_fix(path: Path) -> str:
    """What to do when the checkpoint ``path`` cannot continue the run a command describes."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    saved = run / CONFIG_FILE
    own = f"its config.yaml: {resume_command(['fit', '--config', str(saved)], path)}"
    if not saved.is_file():
        own = "the config it was started with, and --ckpt_path"
    return (
        f"Continue with the run's own settings ({own}, adding e.g. --trainer.max_epochs to train "
        "longer), or start a new run without --ckpt_path."
    )


def check_network(
    path: Path,
    checkpoint: Mapping[str, Any],
    arch: str | None,
    num_classes: int | None = None,
    evaluating: bool = False,
) -> None:
    """UserError if the checkpoint's ``arch`` or ``num_classes`` differs (None: not compared)."""
    saved = checkpoint.get("hyper_parameters") or {}
    hint, what = (EVALUATION_HINT, "evaluation") if evaluating else (resume_fix(path), "run")
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


def check_resume(
    path: Path, record: Mapping[str, Any], configured: Mapping[str, Any], world_size: int
) -> None:
    """UserError listing how the settings differ from the run's record (missing: no check)."""
    saved, saved_size = record.get("config"), record.get("world_size", world_size)
    lines = config_differences(saved, configured) if isinstance(saved, Mapping) else []
    if saved_size != world_size:
        per_step = "trainer.devices x trainer.num_nodes, each taking data.batch_size a step"
        counts = f"{saved_size} in the checkpoint, {world_size} now"
        lines.insert(0, f"training processes ({per_step}): {counts}")
    if not lines:
        return
    more = [f"and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else []
    listed = "; ".join(lines[:MAX_LISTED] + more)
    raise UserError(
        f"--ckpt_path {path}: this command's settings differ from those of the run it would "
        f"continue (a resume keeps the run's optimizer state, schedules and data order): "
        f"{listed}. {resume_fix(path)}"
    )


def config_differences(saved: Mapping[str, Any], configured: Mapping[str, Any]) -> list[str]:
    """``key: <saved> in the checkpoint, <configured> now`` for each differing key.

    Keys in :data:`RESUMABLE` are left out; 1 equals 1.0; class lists compare by class.
    """
    return [
        f"{key}: {_render(old)} in the checkpoint, {_render(new)} now"
        for key, old, new in _differences("", _derive(saved), _derive(configured))
    ]


def _differences(key: str, saved: Any, configured: Any) -> Iterator[tuple[str, Any, Any]]:
    if any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUMABLE):
        return
    old, new = _class_entries(saved), _class_entries(configured)
    either_list = isinstance(saved, list) or isinstance(configured, list)
    if either_list and old is not None and new is not None:
        if sorted(old) != sorted(new):
            yield key, sorted(old), sorted(new)
        for name in sorted(old.keys() & new.keys()):
            yield from _differences(f"{key}[{name}]", old[name], new[name])
    elif isinstance(saved, Mapping) and isinstance(configured, Mapping):
        prefix = f"{key}." if key else ""
        if "class_path" in saved and saved.get("class_path") != configured.get("class_path"):
            yield f"{prefix}class_path", saved["class_path"], configured.get("class_path")
            return
        for name in sorted(set(saved) | set(configured), key=str):
            yield from _differences(
                f"{prefix}{name}", saved.get(name, _MISSING), configured.get(name, _MISSING)
            )
    elif not _same(saved, configured):
        yield key, saved, configured


def _class_entries(value: Any) -> dict[str, Mapping[str, Any]] | None:
    """``{ClassName: entry}`` of ``class_path`` entries (a second one ``ClassName#2``) or None."""
    if value is None or value is _MISSING:
        return {}
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not all(
        isinstance(item, Mapping) and "class_path" in item for item in items
    ):
        return None
    entries: dict[str, Mapping[str, Any]] = {}
    for item in items:
        name = str(item["class_path"]).rsplit(".", 1)[-1]
        if name in OBSERVING_CALLBACKS:
            continue
        count = sum(1 for key in entries if key.split("#")[0] == name)
        entries[f"{name}#{count + 1}" if count else name] = item
    return entries


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: 1 equals 1.0 (not True), a tuple equals the same list."""
    a, b = (value.value if isinstance(value, _Derived) else value for value in (a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if _is_sequence(a) and _is_sequence(b):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    return bool(a == b)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _derive(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config`` with each PartialSchedule's unset ``total`` replaced by what it follows."""
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    if not isinstance(trainer, Mapping) or not isinstance(callbacks, list):
        return config
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    resolved = []
    for entry in callbacks:
        args = entry.get("init_args") if isinstance(entry, Mapping) else None
        if (
            isinstance(args, Mapping)
            and str(entry.get("class_path")).endswith(".PartialSchedule")
            and args.get("total") is None
        ):
            if args.get("interval", "epoch") == "epoch":
                total = _Derived(epochs, "trainer.max_epochs")
            else:  # trainer.estimated_stepping_batches; the other settings it uses are compared
                total = _Derived([epochs, steps], "trainer.max_epochs, trainer.max_steps")
            entry = {**entry, "init_args": {**args, "total": total}}
        resolved.append(entry)
    return {**config, "trainer": {**trainer, "callbacks": resolved}}


def _render(value: Any, limit: int = 100) -> str:
    """``value`` as a user writes it in a config (cut to ``limit`` characters)."""
    if isinstance(value, _Derived):
        text = f"{_render(value.value)} (from {value.source})"
    elif value is _MISSING:
        text = "not set"
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = value or "''"
    elif isinstance(value, Mapping) and "class_path" in value:
        init_args = value.get("init_args") or {}
        arguments = ", ".join(f"{key}={_render(arg)}" for key, arg in init_args.items())
        text = f"{str(value['class_path']).rsplit('.', 1)[-1]}({arguments})"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{key}: {_render(item)}" for key, item in value.items()) + "}"
    elif _is_sequence(value):
        text = "[" + ", ".join(_render(item) for item in value) + "]"
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
