"""What distinguishes one run from another, read from its resolved ``config.yaml``.

Every run gets named fields: ``dataset``, ``arch``, ``optimizer`` (display name: Padam, SGDM,
Adam, AMSGrad, AdamW), ``p`` (Padam's exponent, or the :class:`PartialSchedule` as a label such as
``1/4→1/16 linear, lr×0.1→1``), ``lr``, and one field per other config value (named by the last
part of its dotted key, e.g. ``weight_decay``). The seed, paths and the logger are not fields:
runs that differ only there are repetitions of one experiment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from typing import Any

FieldValue = Hashable

#: Fields with their own meaning, in the order reports consider them.
SEMANTIC_FIELDS = ("dataset", "arch", "optimizer", "p", "lr")
#: Config keys covered by the semantic fields (prefix match on dotted keys).
_COVERED = (
    "data.dataset",
    "model.arch",
    "model.optimizer.class_path",
    "model.optimizer.init_args.amsgrad",
    "model.optimizer.init_args.partial",
    "model.optimizer.init_args.lr",
)
#: Config keys that never distinguish experiments: the seed, where things are written, resuming.
_IGNORED = (
    "seed_everything",
    "ckpt_path",
    "trainer.logger",
    "trainer.default_root_dir",
    "checkpoint.dirpath",
    "data.data_dir",
    "data.download",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.callbacks",  # read for the PartialSchedule only
)
SCHEDULE_CLASS = "PartialSchedule"

_DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_OPTIMIZER_ORDER = ("SGD", "SGDM", "Adam", "AMSGrad", "AdamW", "Padam")
_ARCH_FAMILY_ORDER = ("vgg", "resnet", "wrn")


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def optimizer_name(optimizer: Any) -> str:
    """Display name of a ``model.optimizer`` config (``{class_path, init_args}``)."""
    if not isinstance(optimizer, Mapping):
        return "Padam"  # the training module's default optimizer
    class_name = str(optimizer.get("class_path", "")).rsplit(".", 1)[-1]
    init_args = optimizer.get("init_args") or {}
    if class_name == "SGD":
        return "SGDM" if init_args.get("momentum") else "SGD"
    if class_name == "Adam":
        return "AMSGrad" if init_args.get("amsgrad") else "Adam"
    if class_name == "AdamW" and init_args.get("amsgrad"):
        return "AdamW-AMSGrad"
    return class_name or "optimizer"


def partial_schedule(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``init_args`` of the run's :class:`PartialSchedule` callback, if it has one."""
    callbacks = _get(config, "trainer.callbacks") or []
    if isinstance(callbacks, Mapping):
        callbacks = [callbacks]
    for callback in callbacks:
        if isinstance(callback, Mapping) and str(callback.get("class_path", "")).endswith(
            SCHEDULE_CLASS
        ):
            return dict(callback.get("init_args") or {})
    return None


def format_p(value: float) -> str:
    """``0.125`` -> ``1/8``; values that are not ``1/n`` keep their decimal form."""
    if value > 0:
        inverse = 1 / value
        if abs(inverse - round(inverse)) < 1e-9:
            return f"1/{round(inverse)}"
    return f"{value:g}"


def schedule_label(schedule: Mapping[str, Any]) -> str:
    """``1/4→1/16 linear`` plus ``, lr×0.1→1`` when the schedule scales the lr."""
    p_start = float(schedule.get("p_start", 0.0))
    p_end = schedule.get("p_end")
    shape = str(schedule.get("shape", "linear"))
    if shape == "constant" or p_end is None:
        label = f"{format_p(p_start)} (constant)"
    else:
        label = f"{format_p(p_start)}→{format_p(float(p_end))} {shape}"
        if shape == "step" and schedule.get("milestones"):
            label += f" at {','.join(str(m) for m in schedule['milestones'])}"
    if schedule.get("interval") == "step":
        label += " per step"
    lr_start = float(schedule.get("lr_start_scale", 1.0))
    lr_end = float(schedule.get("lr_end_scale", 1.0))
    if lr_start != 1.0 or lr_end != 1.0:
        label += f", lr×{lr_start:g}→{lr_end:g}"
    return label


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = json.dumps(value, sort_keys=True, default=str)


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def run_fields(config: Mapping[str, Any]) -> dict[str, FieldValue]:
    """The fields of one run (see the module docstring); values are hashable."""
    optimizer = _get(config, "model.optimizer")
    name = optimizer_name(optimizer)
    schedule = partial_schedule(config)
    p: FieldValue = None
    if schedule is not None:
        p = schedule_label(schedule)
    elif name == "Padam":
        partial = _get(config, "model.optimizer.init_args.partial")
        p = float(partial) if isinstance(partial, int | float) else None
    lr = _get(config, "model.optimizer.init_args.lr")
    fields: dict[str, FieldValue] = {
        "dataset": _get(config, "data.dataset"),
        "arch": _get(config, "model.arch"),
        "optimizer": name,
        "p": p,
        "lr": float(lr) if isinstance(lr, int | float) else None,
    }
    flat: dict[str, str] = {}
    _flatten(config, "", flat)
    for key, value in flat.items():
        if _matches(key, _COVERED) or _matches(key, _IGNORED):
            continue
        fields[f"config:{key}"] = value
    return fields


def short_names(keys: list[str]) -> dict[str, str]:
    """Display names for fields: semantic ones as they are, ``config:a.b.c`` as ``c`` if unique."""
    tails = [k.rsplit(".", 1)[-1] for k in keys if k.startswith("config:")]
    names = {}
    for key in keys:
        if not key.startswith("config:"):
            names[key] = key
            continue
        tail = key.rsplit(".", 1)[-1]
        names[key] = tail if tails.count(tail) == 1 else key.removeprefix("config:")
    return names


def format_value(field: str, value: FieldValue) -> str:
    """A field value as reports show it."""
    if value is None:
        return "-"
    if field == "dataset":
        return _DATASET_NAMES.get(str(value), str(value))
    if field == "arch":
        return arch_name(str(value))
    if field == "p":
        return format_p(value) if isinstance(value, float) else str(value)
    if field == "lr" and isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and field.startswith("config:"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, float):
            return f"{decoded:g}"
        return decoded if isinstance(decoded, str) else json.dumps(decoded)
    return str(value)


def arch_name(arch: str) -> str:
    """``resnet18`` -> ``ResNet-18``, ``vgg16`` -> ``VGG-16``, ``wrn16_4`` -> ``WRN-16-4``."""
    for pattern, template in (
        (r"resnet(\d+)", "ResNet-{}"),
        (r"vgg(\d+)(_bn)?", "VGG-{}"),
        (r"wrn(\d+)_(\d+)", "WRN-{}-{}"),
    ):
        match = re.fullmatch(pattern, arch)
        if match:
            return template.format(*(g for g in match.groups() if g and not g.startswith("_")))
    return arch


def sort_key(field: str, value: FieldValue) -> tuple[Any, ...]:
    """Order of values in legends and tables.

    The paper's order for optimizers and networks, larger p and lr first, then natural order.
    """
    if value is None:
        return (0, 0, "")
    if field == "optimizer":
        name = str(value)
        rank = _OPTIMIZER_ORDER.index(name) if name in _OPTIMIZER_ORDER else len(_OPTIMIZER_ORDER)
        return (1, rank, name)
    if field == "arch":
        text = str(value)
        family = next(
            (i for i, f in enumerate(_ARCH_FAMILY_ORDER) if text.startswith(f)),
            len(_ARCH_FAMILY_ORDER),
        )
        numbers = tuple(int(n) for n in re.findall(r"\d+", text))
        return (1, family, numbers, text)
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return (1, -number if field in ("p", "lr") else number, "")
    if isinstance(value, str) and field.startswith("config:"):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = value
        if isinstance(decoded, int | float) and not isinstance(decoded, bool):
            return (1, float(decoded), "")
    return (2, 0, str(value))
