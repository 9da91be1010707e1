"""Whether a checkpoint can continue the run a command describes: one comparison of configs.

A resumed ``fit`` continues with what the checkpoint restores: the weights, the optimizer state
with its hyperparameters (lr, betas, p, ...), the lr schedulers' state with their settings
(milestones, gamma), each callback's state (a p schedule, early stopping's patience) and the data
module's seed; Lightning loads all of it over what the command configures, without a word, and
ignores a scheduler or callback added or removed. So padam-fit records the fit's resolved config
in every checkpoint (``RunRecord``) and a resume compares it with the command's resolved config
(:func:`check_resume`): any difference outside :data:`RESUMABLE` is refused before the run folder
is touched, naming each key. What may change is what does not change the numbers of the run:
how long it trains, where files go, what is logged and how fast it runs.

Evaluation (validate, test, predict) restores only the weights, so only the network must match
(:func:`check_network`).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from padam_lightning.errors import UserError
from padam_lightning.training.classifier import EVALUATION_HINT

#: Keys a resume may change; each covers the keys under it. Why each is safe, on its line.
RESUMABLE = frozenset(
    {
        # What this command was given, not a setting of the run.
        "config",
        "ckpt_path",
        "subcommand",
        "weights_only",  # how --ckpt_path is loaded, not what it continues
        # When to stop: continuing a run to more epochs is what resuming is for.
        "trainer.max_epochs",
        "trainer.max_steps",
        "trainer.max_time",
        "trainer.min_epochs",
        "trainer.min_steps",
        # Where files go and what is shown or logged; the numbers of the run are unchanged.
        "trainer.logger",  # the run folder is found from the checkpoint, curves continue there
        "trainer.default_root_dir",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",  # step points only; the epoch curves are the same
        "trainer.enable_autolog_hparams",
        "trainer.model_registry",
        "trainer.profiler",
        "trainer.detect_anomaly",  # a debugging check, same numbers
        "trainer.num_sanity_val_steps",  # a check before training: logs nothing, trains nothing
        "trainer.enable_checkpointing",  # which files are kept, not what is trained
        "checkpoint",  # ModelCheckpoint keys its state by its settings: changed ones start afresh
        # Stages a fit does not run.
        "trainer.limit_test_batches",
        "trainer.limit_predict_batches",
        # Which hardware runs it: the number of processes, which sets the global batch and the
        # data shards, is compared as the world size; trainer.precision is compared.
        "trainer.accelerator",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.strategy",
        # Implementation switches: the same results up to round-off, checkpoints the same.
        "trainer.benchmark",
        "trainer.deterministic",
        "trainer.inference_mode",
        "model.compile",
        "model.compile_mode",
        "model.channels_last",
        "model.optimizer.init_args.foreach",
        "model.optimizer.init_args.fused",
        "model.optimizer.init_args.capturable",
        "model.optimizer.init_args.differentiable",
        # Where the data lives or how it is fetched or evaluated, not which data trains. (For an
        # image folder data_dir names the data; its class count is checked by check_network.)
        "data.data_dir",
        "data.download",
        "data.num_workers",
        "data.eval_batch_size",  # evaluation in eval mode: same outputs in any batch size
    }
)

#: Callbacks (by class name) that only watch, show or save: adding or removing one is allowed.
OBSERVING_CALLBACKS = frozenset(
    {
        "LearningRateMonitor",
        "DeviceStatsMonitor",
        "TQDMProgressBar",
        "RichProgressBar",
        "ModelSummary",
        "RichModelSummary",
        "ModelCheckpoint",  # as the checkpoint section above
    }
)

#: How many differing keys a refusal lists before "and N more".
MAX_LISTED = 5


class _Missing:
    """A key that one of the two configs does not have."""

    def __repr__(self) -> str:
        return "not set"


_MISSING = _Missing()


@dataclass(frozen=True)
class _Derived:
    """A value a setting left unset takes from other settings (compared by ``value`` alone)."""

    value: Any
    source: str


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load the Lightning checkpoint ``path`` memory-mapped (its tensors are read when used).

    Every byte is checked against the archive's CRCs first, so a damaged file is reported here
    and not loaded as silently wrong weights.

    Raises:
        UserError: If ``path`` is missing or not a complete, undamaged Lightning checkpoint; the
            message names the checkpoints beside it that load, or says there are none.
    """
    content, problem = _load(path)
    if problem is not None:
        raise UserError(f"--ckpt_path {path}: {problem}. {_alternatives(path)}")
    return content


def _load(path: Path) -> tuple[dict[str, Any], str | None]:
    """The checkpoint's content, or what is wrong with the file."""
    if path.is_dir():
        return {}, "a folder, not a checkpoint file"
    if not path.is_file():
        return {}, "no such file"
    with path.open("rb") as file:
        head = file.read(512)
    if not head:
        return {}, "the file is empty (0 bytes): a save or copy was cut off"
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK\x03\x04"):
            return {}, "the file is truncated (its archive has no end): a save or copy was cut off"
        if _is_text(head):
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


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are UTF-8 text (its last character may be cut off)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3 and b"\x00" not in head
    return b"\x00" not in head


def _alternatives(path: Path) -> str:
    """A sentence naming the checkpoints beside ``path`` that load and can continue a run."""
    folder = path if path.is_dir() else path.parent
    folders = [folder] if folder.name == "checkpoints" else [folder, folder / "checkpoints"]
    folders = [where for where in folders if where.is_dir()] or folders[:1]
    candidates = sorted(
        (file for where in folders if where.is_dir() for file in where.glob("*.ckpt")),
        key=lambda file: file.stat().st_mtime,
        reverse=True,
    )
    usable = []
    for candidate in candidates:
        if candidate == path:
            continue
        content, problem = _load(candidate)
        if problem is None and "optimizer_states" in content:  # save_weights_only cannot resume
            usable.append(f"{candidate} (epoch {content.get('epoch')})")
    where = " or ".join(str(f) for f in folders)
    if not usable:
        return f"No checkpoint in {where} loads and could continue the run."
    return f"Checkpoints in {where} that load, newest first: {', '.join(usable)}."


def resume_fix(path: Path) -> str:
    """What to do when the checkpoint ``path`` cannot continue the run a command describes."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    saved = run / "config.yaml"
    own = f"its config.yaml: padam-fit fit --config {saved} --ckpt_path {path}"
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
    """Refuse a checkpoint of another network than ``arch`` with ``num_classes`` outputs.

    Args:
        path: The checkpoint file (for the message).
        checkpoint: Its content, from :func:`read_checkpoint`.
        arch: The configured network (None: not known yet, not compared).
        num_classes: The class count of the configured data (None: not known yet). It is not in
            the config: it is linked from the data module when the model is built (an image
            folder's class count is that of its class folders).
        evaluating: Whether the checkpoint is to be evaluated (validate, test, predict) rather
            than resumed; only the message differs.

    Raises:
        UserError: If the checkpoint's ``arch`` or ``num_classes`` hyperparameter differs.
    """
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
    """Refuse to resume ``path`` with other settings than those its run was trained with.

    Args:
        path: The checkpoint file (for the message).
        record: The run record saved in the checkpoint: ``config`` (the fit's resolved config as
            a plain nested dict) and ``world_size``. A record without them (a checkpoint not
            written by padam-fit) refuses nothing.
        configured: This command's resolved config, as a plain nested dict.
        world_size: The number of processes this command trains on.

    Raises:
        UserError: Listing each difference (at most :data:`MAX_LISTED`) and the fix.
    """
    lines = []
    saved_size = record.get("world_size")
    if saved_size is not None and int(saved_size) != int(world_size):
        lines.append(
            "training processes (trainer.devices x trainer.num_nodes, each taking "
            f"data.batch_size a step): {saved_size} in the checkpoint, {world_size} now"
        )
    saved = record.get("config")
    if isinstance(saved, Mapping):
        lines += config_differences(saved, configured)
    if not lines:
        return
    listed = "; ".join(lines[:MAX_LISTED])
    if len(lines) > MAX_LISTED:
        listed += f"; and {len(lines) - MAX_LISTED} more"
    raise UserError(
        f"--ckpt_path {path}: this command's settings differ from those of the run it would "
        f"continue (a resume keeps the run's optimizer state, schedules and data order): "
        f"{listed}. {resume_fix(path)}"
    )


def config_differences(saved: Mapping[str, Any], configured: Mapping[str, Any]) -> list[str]:
    """Each key whose value differs between two resolved configs, outside :data:`RESUMABLE`.

    Keys are dotted (``model.optimizer.init_args.lr``). A key on one side only differs. Numbers
    compare exactly, but an int equals the same float (1 and 1.0). Where ``class_path`` differs,
    only it is listed, not the arguments of the two classes. Lists of ``class_path`` entries
    (``trainer.callbacks``) compare by class, in any order, then each entry's arguments as
    ``trainer.callbacks[PartialSchedule].init_args.p_end``; :data:`OBSERVING_CALLBACKS` are
    left out. A ``PartialSchedule`` without ``total`` follows ``trainer.max_epochs`` (with a
    step interval: also ``trainer.max_steps``), so those values are compared in its place.

    Returns:
        One line per difference: ``key: <saved> in the checkpoint, <configured> now``.
    """
    return [
        f"{key}: {_render(old)} in the checkpoint, {_render(new)} now"
        for key, old, new in _differences("", _derive(saved), _derive(configured))
    ]


def _differences(key: str, saved: Any, configured: Any) -> Iterator[tuple[str, Any, Any]]:
    if _resumable(key):
        return
    saved_entries, configured_entries = _class_entries(saved), _class_entries(configured)
    if (
        saved_entries is not None
        and configured_entries is not None
        and (isinstance(saved, list) or isinstance(configured, list))
    ):
        yield from _entry_differences(key, saved_entries, configured_entries)
    elif isinstance(saved, Mapping) and isinstance(configured, Mapping):
        if "class_path" in saved and saved.get("class_path") != configured.get("class_path"):
            yield _join(key, "class_path"), saved["class_path"], configured.get("class_path")
            return
        for name in sorted(set(saved) | set(configured), key=str):
            yield from _differences(
                _join(key, name), saved.get(name, _MISSING), configured.get(name, _MISSING)
            )
    elif not _same(saved, configured):
        yield key, saved, configured


def _entry_differences(
    key: str, saved: dict[str, Mapping[str, Any]], configured: dict[str, Mapping[str, Any]]
) -> Iterator[tuple[str, Any, Any]]:
    if sorted(saved) != sorted(configured):
        yield key, sorted(saved), sorted(configured)
    for name in sorted(saved.keys() & configured.keys()):
        yield from _differences(f"{key}[{name}]", saved[name], configured[name])


def _class_entries(value: Any) -> dict[str, Mapping[str, Any]] | None:
    """``{ClassName: entry}`` of a list of ``class_path`` entries (None: not such a list).

    A second entry of a class is keyed ``ClassName#2``; None and an empty list have no entries.
    """
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


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(f"{allowed}.") for allowed in RESUMABLE)


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def _same(saved: Any, configured: Any) -> bool:
    """Equal as settings: 1 equals 1.0 (not True), a tuple equals the same list."""
    if isinstance(saved, _Derived):
        saved = saved.value
    if isinstance(configured, _Derived):
        configured = configured.value
    if isinstance(saved, bool) or isinstance(configured, bool):
        return type(saved) is type(configured) and saved == configured
    if isinstance(saved, int | float) and isinstance(configured, int | float):
        return saved == configured or (math.isnan(saved) and math.isnan(configured))
    if _is_sequence(saved) and _is_sequence(configured):
        return len(saved) == len(configured) and all(
            _same(a, b) for a, b in zip(saved, configured, strict=True)
        )
    if isinstance(saved, Mapping) and isinstance(configured, Mapping):
        return saved.keys() == configured.keys() and all(
            _same(saved[key], configured[key]) for key in saved
        )
    return bool(saved == configured)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _derive(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``config`` with each PartialSchedule's unset ``total`` replaced by what it follows."""
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    if not isinstance(trainer, Mapping) or not isinstance(callbacks, list):
        return config
    resolved = []
    for entry in callbacks:
        init_args = entry.get("init_args") if isinstance(entry, Mapping) else None
        if (
            isinstance(init_args, Mapping)
            and str(entry.get("class_path")).endswith(".PartialSchedule")
            and init_args.get("total") is None
        ):
            epochs = trainer.get("max_epochs")
            if init_args.get("interval", "epoch") == "epoch":
                total = _Derived(epochs, "trainer.max_epochs")
            else:  # trainer.estimated_stepping_batches; the other settings it uses are compared
                steps = trainer.get("max_steps")
                total = _Derived([epochs, steps], "trainer.max_epochs, trainer.max_steps")
            entry = {**entry, "init_args": {**init_args, "total": total}}
        resolved.append(entry)
    return {**config, "trainer": {**trainer, "callbacks": resolved}}


def _render(value: Any, limit: int = 100) -> str:
    """``value`` as a user writes it in a config (cut to ``limit`` characters)."""
    if isinstance(value, _Derived):
        text = f"{_render(value.value)} (from {value.source})"
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
        text = repr(value) if isinstance(value, float | _Missing) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
