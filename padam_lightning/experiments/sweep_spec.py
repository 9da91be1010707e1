"""Sweep files (format: top of ``configs/sweeps/optimizers.yaml``) expanded into named runs."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.errors import UserError

#: Display names of the labels the shipped sweeps use for optimizers and datasets.
_OPTIMIZERS = ("SGDM", "Adam", "AMSGrad", "Padam", "AdamW", "RAdam", "Yogi", "AdaBound")
KNOWN_TITLES = {title.lower(): title for title in _OPTIMIZERS}
KNOWN_TITLES |= {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
#: Network labels as reports show them: ``resnet18`` -> ``ResNet-18``.
_NETWORKS = {r"resnet(\d+)": "ResNet-{}", r"vgg(\d+)": "VGG-{}", r"wrn(\d+)_(\d+)": "WRN-{}-{}"}
# Keys the sweep sets itself: the seed (``seeds``), where a run logs, and resuming.
_RESERVED_KEYS = ("seed_everything", "trainer.logger", "ckpt_path", "config")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._+=-]*"
_DOTTED_KEY = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _is_seeds(value: Any) -> bool:
    seeds = _as_list(value)
    return all(type(s) is int and s >= 0 for s in seeds) and 0 < len(set(seeds)) == len(seeds)


#: What a value must be: a test, and the words an error uses for it.
Kind = tuple[Callable[[Any], Any], str]
NAME: Kind = (
    lambda v: isinstance(v, str) and re.fullmatch(_NAME, v),
    "a folder-safe string (letters, digits, . _ + = -), e.g. resnet18",
)
CONFIGS: Kind = (
    lambda v: all(isinstance(path, str) and path for path in _as_list(v)),
    "a config file path or a list of them",
)
STRING: Kind = (lambda v: isinstance(v, str), "a string")
MAPPING: Kind = (lambda v: isinstance(v, dict), "a mapping of dotted config keys to values")
DOTTED_KEY: Kind = (
    lambda v: isinstance(v, str) and re.fullmatch(_DOTTED_KEY, v),
    "a dotted config key such as model.optimizer.init_args.lr",
)
#: The top-level keys of a sweep file and their kinds (``name`` is required, the rest optional).
SWEEP_KEYS: dict[str, Kind] = {
    "name": NAME,
    "description": STRING,
    "base": CONFIGS,
    "grid": (lambda v: isinstance(v, dict), "a mapping of axis names to {label: choice}"),
    "seeds": (_is_seeds, "a non-empty list of distinct non-negative integers"),
    "overrides": MAPPING,
    "exclude": (
        lambda v: isinstance(v, list) and all(isinstance(r, dict) and r for r in v),
        "a list of {axis: label or [labels]} mappings",
    ),
}
#: The keys of a choice written as a mapping with config files, overrides and a title.
CHOICE_KEYS: dict[str, Kind] = {"config": CONFIGS, "overrides": MAPPING, "title": STRING}
LABELS: Kind = (
    lambda v: isinstance(v, dict) and bool(v),
    "a non-empty mapping of labels to choices, e.g. {resnet18: configs/resnet18.yaml}",
)
CHOICE: Kind = (
    lambda v: isinstance(v, str | list | dict),
    "a config file, a list of config files, a mapping of overrides, or "
    "{config: ..., overrides: ..., title: ...}",
)


def require(value: Any, kind: Kind, where: str) -> Any:
    """``value``, if of ``kind``; else UserError ``<where> must be <kind's words>, got <value>``."""
    test, words = kind
    if not test(value):
        raise UserError(f"{where} must be {words}, got {value!r}.")
    return value


def check_keys(data: dict[Any, Any], keys: dict[str, Kind], where: str, unknown: str) -> None:
    """:func:`require` each key of ``data`` (``None``: absent) to be of its kind in ``keys``.

    ``where`` is what key names follow (``sweep.yaml: `` or ``sweep.yaml: grid.a.``);
    ``unknown`` is the message for keys ``keys`` lacks, their names replacing ``{}``.
    """
    extra = ", ".join(str(key) for key in data if key not in keys)
    if extra:
        raise UserError(f"{where.rstrip(': .')}: {unknown.format(extra)}.")
    for key, kind in keys.items():
        if data.get(key) is not None:
            require(data[key], kind, f"{where}{key}")


@dataclass(frozen=True)
class Choice:
    """One value of a grid axis: config files and overrides, a short label and a display title."""

    label: str
    title: str
    configs: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep file."""

    name: str
    base: tuple[str, ...]
    axes: dict[str, tuple[Choice, ...]]  # axis name -> its choices, in file order
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, Any], ...]
    exclude: tuple[Mapping[str, frozenset[str]], ...]
    source: Path


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep."""

    name: str
    choices: tuple[tuple[str, int, Choice], ...]  # (axis, index in the file, choice) per axis
    seed: int
    configs: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...]

    def identity(self, sweep_name: str, arguments: Sequence[str]) -> dict[str, Any]:
        """What the run is, as written to its ``run.json``; ``arguments`` follow ``padam-fit``."""
        axes = {a: {"label": c.label, "title": c.title, "index": i} for a, i, c in self.choices}
        run = {"sweep": sweep_name, "run": self.name, "axes": axes, "seed": self.seed}
        return run | {"arguments": list(arguments)}

    def fit_arguments(
        self, *, sweep_name: str, save_dir: str, extra_args: Sequence[str] = ()
    ) -> list[str]:
        """Arguments after ``padam-fit`` (without ``--ckpt_path``); later values win."""
        args = ["fit"]
        for config in self.configs:
            args += ["--config", config]
        args += ["--seed_everything", str(self.seed)]
        for key, value in self.overrides:
            args += [f"--{key}", format_override_value(value)]
        args += list(extra_args)
        for key, value in (("save_dir", save_dir), ("name", sweep_name), ("version", self.name)):
            args += [f"--trainer.logger.init_args.{key}", value]
        return args


def format_override_value(value: Any) -> str:
    """A YAML value for jsonargparse's command line: strings as they are, anything else as JSON.

    Floats are written as YAML does (``1.0e-05``: YAML 1.1 reads ``1e-05`` as a string).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return yaml.safe_dump(value).split("\n", 1)[0]  # without YAML's end-of-document line
    return json.dumps(value)


def default_title(label: str) -> str:
    """A label as reports show it: ``padam`` -> ``Padam``, ``wrn16_4`` -> ``WRN-16-4``."""
    if label in KNOWN_TITLES:
        return KNOWN_TITLES[label]
    for pattern, template in _NETWORKS.items():
        match = re.fullmatch(pattern, label)
        if match:
            return template.format(*match.groups())
    return label


def config_list(value: Any, where: str) -> tuple[str, ...]:
    """``value`` (``None``, a config file path or a list of them) as paths; else UserError."""
    if value is None:
        return ()
    require(value, CONFIGS, where)
    return (value,) if isinstance(value, str) else tuple(value)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; UserError naming the file or the key that is wrong."""
    source = Path(path)
    if not source.is_file():
        problem = "is a folder" if source.is_dir() else "not found"
        raise UserError(
            f"sweep file {source} {problem}; pass a YAML file such as "
            "configs/sweeps/optimizers.yaml."
        )
    try:
        data = yaml.safe_load(source.read_text())
    except OSError as err:  # e.g. no read permission
        raise UserError(f"sweep file {source} cannot be read: {err.strerror or err}") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:  # not text, or not YAML
        raise UserError(f"sweep file {source} is not valid YAML: {err}".replace("\n", " ")) from err
    return parse_sweep(data, source=source)


def parse_sweep(data: Any, *, source: Path) -> SweepSpec:
    """Validate the contents of a sweep file against :data:`SWEEP_KEYS` and the grid's axes."""
    top_level = (lambda v: isinstance(v, dict), "a mapping with name, grid, ... at the top level")
    require(data, top_level, f"sweep file {source}")
    where = f"{source}: "
    check_keys(data, SWEEP_KEYS, where, f"unknown key(s) {{}}; allowed: {', '.join(SWEEP_KEYS)}")
    require(data.get("name"), NAME, f"{where}name")
    axes = {
        require(axis, NAME, f"{where}grid axis {axis!r}"): tuple(
            _parse_choice(label, value, f"{where}grid.{axis}.")
            for label, value in require(choices, LABELS, f"{where}grid.{axis}").items()
        )
        for axis, choices in (data.get("grid") or {}).items()
    }
    seeds = data.get("seeds")
    return SweepSpec(
        name=data["name"],
        base=config_list(data.get("base"), f"{where}base"),
        axes=axes,
        seeds=(0,) if seeds is None else tuple(_as_list(seeds)),
        overrides=_parse_overrides(data.get("overrides"), f"{where}overrides"),
        exclude=_parse_exclude(data.get("exclude") or [], axes, where),
        source=source,
    )


def _parse_overrides(value: dict[Any, Any] | None, where: str) -> tuple[tuple[str, Any], ...]:
    for key in value or {}:
        require(key, DOTTED_KEY, f"{where} key {key!r}")
        if any(key == reserved or key.startswith(reserved + ".") for reserved in _RESERVED_KEYS):
            raise UserError(
                f"{where}: {key} is set by padam-sweep (seeds go in `seeds:`, the log folder "
                "follows the sweep and run names); remove it."
            )
    return tuple((value or {}).items())


def _parse_choice(label: Any, value: Any, where: str) -> Choice:
    """One choice of an axis; ``where`` is the axis's path ending in ``.``."""
    require(label, NAME, f"{where.rstrip('.')} label {label!r}")
    here = f"{where}{label}"
    require(value, CHOICE, here)
    if not isinstance(value, dict):
        return Choice(label, default_title(label), config_list(value, here))
    if not CHOICE_KEYS.keys() & value.keys():  # overrides alone
        value = {"overrides": value}
    unknown = "a choice with config/overrides/title takes only those keys; move {} under overrides"
    check_keys(value, CHOICE_KEYS, f"{here}.", unknown)
    configs = config_list(value.get("config"), f"{here}.config")
    overrides = _parse_overrides(value.get("overrides"), f"{here}.overrides")
    if not configs and not overrides:
        raise UserError(f"{here}: the choice is empty; give a config file or overrides.")
    return Choice(label, value.get("title") or default_title(label), configs, overrides)


def _parse_exclude(
    rules: list[dict[Any, Any]], axes: dict[str, tuple[Choice, ...]], where: str
) -> tuple[Mapping[str, frozenset[str]], ...]:
    labels = {axis: {choice.label for choice in choices} for axis, choices in axes.items()}
    axis_kind = (labels.__contains__, f"an axis of the grid ({', '.join(labels) or 'none'})")
    for rule in rules:
        for axis, wanted in rule.items():
            require(axis, axis_kind, f"{where}exclude axis {axis!r}")
            kind = (
                lambda w, axis=axis: w and {str(label) for label in _as_list(w)} <= labels[axis],
                f"a label of {axis} or a list of them ({', '.join(sorted(labels[axis]))})",
            )
            require(wanted, kind, f"{where}exclude.{axis}")
    return tuple({axis: frozenset(_as_list(w)) for axis, w in rule.items()} for rule in rules)


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """All runs, in grid order (first axis slowest, seeds last); UserError if two share a name."""
    runs = []
    names: set[str] = set()
    for combination in itertools.product(*(enumerate(choices) for choices in spec.axes.values())):
        chosen = tuple((axis, i, c) for axis, (i, c) in zip(spec.axes, combination, strict=True))
        labels = {axis: choice.label for axis, _, choice in chosen}
        if any(all(labels[a] in wanted for a, wanted in rule.items()) for rule in spec.exclude):
            continue
        configs = spec.base + tuple(c for _, _, choice in chosen for c in choice.configs)
        overrides = spec.overrides + tuple(o for _, _, choice in chosen for o in choice.overrides)
        for seed in spec.seeds:
            name = "-".join([*labels.values(), f"seed{seed}"])
            if name in names:
                raise UserError(
                    f"{spec.source}: two runs would both be named {name}; make the labels of "
                    "different axes distinct (e.g. p0.125 and lr0.1 rather than 0.125 and 0.1)."
                )
            names.add(name)
            runs.append(PlannedRun(name, chosen, seed, configs, overrides))
    return runs
