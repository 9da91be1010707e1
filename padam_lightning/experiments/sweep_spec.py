"""Sweep files: a grid of config files and overrides, expanded into named ``padam-fit`` runs.

A sweep file is YAML::

    name: optimizers                  # folder under the log dir: lightning_logs/optimizers/<run>
    description: The paper's main comparison.   # optional, free text
    base: [configs/data/cifar100.yaml]          # optional: configs given to every run, first
    grid:                             # axes, in run-name order; each maps label -> choice
      arch:
        vgg16: configs/vgg16.yaml                       # a config file
        resnet18: [configs/resnet18.yaml]               # or a list of config files
      optimizer:
        sgdm: configs/optim/sgdm.yaml
        padam-p0.125:                                   # or config(s) and overrides together
          config: configs/optim/padam.yaml
          overrides: {model.optimizer.init_args.partial: 0.125}
        adam-lr3e-4: {model.optimizer.init_args.lr: 3.0e-4}  # or overrides alone
      p:
        p0.125:                                         # a title names it in reports
          overrides: {model.optimizer.init_args.partial: 0.125}
          title: p = 1/8
    seeds: [0, 1, 2]                  # optional (default [0]): every grid point once per seed
    overrides:                        # optional: dotted keys for every run
      trainer.max_epochs: 200
    exclude:                          # optional: grid points to leave out (axis: label or labels)
      - {arch: vgg16, optimizer: adam-lr3e-4}

Each run is ``padam-fit fit --config <base> --config <choices, in axis order> --seed_everything S
--<sweep overrides> --<choice overrides> <extra args> --trainer.logger.init_args.{save_dir,name,
version}``: later values win, so a choice's override beats a sweep-wide one, and the logger flags
that place the run come last. A run is named by its labels and seed, ``resnet18-padam-seed0``, and
logs to ``<save_dir>/<sweep name>/<run name>``. Relative config paths are read from the directory
padam-sweep runs in (the project root for the shipped sweeps).

What a run is, is written into its folder as ``run.json`` (:meth:`PlannedRun.identity`): the sweep,
each axis's label, title and position in the file, the seed, and the ``padam-fit`` arguments.
``padam-report`` groups and labels runs by it. A choice's title defaults to the display name of
a known label (``sgdm`` -> ``SGDM``, ``resnet18`` -> ``ResNet-18``, see :func:`default_title`),
else to the label itself.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from padam_lightning.errors import UserError

#: Keys a sweep file may have at the top level.
TOP_LEVEL_KEYS = ("name", "description", "base", "grid", "seeds", "overrides", "exclude")
#: Keys of a choice given as a mapping with config files, overrides and a title.
CHOICE_KEYS = ("config", "overrides", "title")
#: Display names of the labels the shipped sweeps use for optimizers, networks and datasets.
KNOWN_TITLES = {
    "sgdm": "SGDM",
    "adam": "Adam",
    "amsgrad": "AMSGrad",
    "padam": "Padam",
    "adamw": "AdamW",
    "radam": "RAdam",
    "yogi": "Yogi",
    "adabound": "AdaBound",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Keys the sweep sets itself: the seed (``seeds``), where a run logs, and resuming.
_RESERVED_KEYS = ("seed_everything", "trainer.logger", "ckpt_path", "config")


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
    """One run of a sweep: its name, the choices that make it, and what ``padam-fit`` gets.

    Attributes:
        choices: ``(axis name, choice index in the file, choice)`` per axis, in axis order.
    """

    name: str
    choices: tuple[tuple[str, int, Choice], ...]
    seed: int
    configs: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...]

    def identity(self, sweep_name: str, arguments: Sequence[str]) -> dict[str, Any]:
        """What the run is, as written to its ``run.json``.

        Args:
            sweep_name: The sweep's name.
            arguments: The ``padam-fit`` arguments of this attempt (from ``fit`` on).
        """
        axes = {
            axis: {"label": choice.label, "title": choice.title, "index": index}
            for axis, index, choice in self.choices
        }
        return {
            "sweep": sweep_name,
            "run": self.name,
            "axes": axes,
            "seed": self.seed,
            "arguments": list(arguments),
        }

    def fit_arguments(
        self, *, sweep_name: str, save_dir: str, extra_args: Sequence[str] = ()
    ) -> list[str]:
        """Arguments after ``padam-fit`` for this run (without ``--ckpt_path``)."""
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
    """A YAML value as the command line gives it to jsonargparse.

    Strings go as they are. Floats are written as YAML writes them, with a decimal point before an
    exponent (``1.0e-05``): YAML 1.1 reads ``1e-05`` as a string. Everything else (booleans,
    ``null``, integers, lists, mappings) becomes JSON, which jsonargparse parses as YAML.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return yaml.safe_dump(value).split("\n", 1)[0]  # without YAML's end-of-document line
    return json.dumps(value)


def default_title(label: str) -> str:
    """A label as reports show it: a known optimizer, network or dataset name, else the label.

    ``padam`` -> ``Padam``, ``resnet18`` -> ``ResNet-18``, ``vgg16`` -> ``VGG-16``, ``wrn16_4`` ->
    ``WRN-16-4``, ``p0.125`` -> ``p0.125``.
    """
    if label in KNOWN_TITLES:
        return KNOWN_TITLES[label]
    for pattern, template in (
        (r"resnet(\d+)", "ResNet-{}"),
        (r"vgg(\d+)", "VGG-{}"),
        (r"wrn(\d+)_(\d+)", "WRN-{}-{}"),
    ):
        match = re.fullmatch(pattern, label)
        if match:
            return template.format(*match.groups())
    return label


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file.

    Args:
        path: The sweep YAML file.

    Returns:
        The parsed sweep.

    Raises:
        UserError: If the file is missing, a folder, unreadable, not YAML, or breaks the schema
            (the message names the key and what is expected).
    """
    source = Path(path)
    example = "pass a YAML file such as configs/sweeps/optimizers.yaml."
    if not source.is_file():
        problem = "is a folder" if source.is_dir() else "not found"
        raise UserError(f"sweep file {source} {problem}; {example}")
    try:
        data = yaml.safe_load(source.read_text())
    except OSError as err:  # e.g. no read permission
        raise UserError(f"sweep file {source} cannot be read: {err.strerror or err}") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:  # not text, or not YAML
        raise UserError(f"sweep file {source} is not valid YAML: {err}".replace("\n", " ")) from err
    return parse_sweep(data, source=source)


def parse_sweep(data: Any, *, source: Path) -> SweepSpec:
    """Validate the contents of a sweep file (see the module docstring for the schema)."""
    where = str(source)
    if not isinstance(data, dict):
        raise UserError(
            f"{where}: a sweep file is a mapping with name, grid, ... at the top level."
        )
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(TOP_LEVEL_KEYS)}."
        )
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(
            f"{where}: name must be a folder-safe string (letters, digits, . _ + = -), "
            f"got {name!r}."
        )
    if not isinstance(data.get("description") or "", str):  # free text for people, not used
        raise UserError(f"{where}: description must be a string.")
    axes = _parse_grid(data.get("grid"), where)
    return SweepSpec(
        name=name,
        base=config_list(data.get("base"), f"{where}: base"),
        axes=axes,
        seeds=_parse_seeds(data.get("seeds", [0]), where),
        overrides=_parse_overrides(data.get("overrides"), f"{where}: overrides"),
        exclude=_parse_exclude(data.get("exclude"), axes, where),
        source=source,
    )


def config_list(value: Any, where: str) -> tuple[str, ...]:
    """``value`` as config file paths: ``None``, one path or a list of them.

    Raises:
        UserError: ``{where}: expected a config file path or a list of them, got ...``.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{where}: expected a config file path or a list of them, got {value!r}.")
    return tuple(value)


def _parse_overrides(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping of dotted keys to values, got {value!r}.")
    for key in value:
        if not isinstance(key, str) or not _DOTTED_KEY.match(key):
            raise UserError(
                f"{where}: {key!r} is not a dotted config key such as model.optimizer.init_args.lr."
            )
        if any(key == reserved or key.startswith(reserved + ".") for reserved in _RESERVED_KEYS):
            raise UserError(
                f"{where}: {key} is set by padam-sweep (seeds go in `seeds:`, the log folder "
                "follows the sweep and run names); remove it."
            )
    return tuple(value.items())


def _parse_choice(label: Any, value: Any, where: str) -> Choice:
    if not isinstance(label, str) or not _NAME.match(label):
        raise UserError(
            f"{where}: label {label!r} must be a short folder-safe name "
            "(letters, digits, . _ + = -), e.g. resnet18 or p0.125."
        )
    here = f"{where}.{label}"
    title = default_title(label)
    if isinstance(value, str | list):
        return Choice(label, title, configs=config_list(value, here))
    if isinstance(value, dict):
        if any(key in CHOICE_KEYS for key in value):
            unknown = sorted(set(value) - set(CHOICE_KEYS))
            if unknown:
                raise UserError(
                    f"{here}: a choice with config/overrides/title takes only those keys; "
                    f"move {', '.join(map(str, unknown))} under overrides."
                )
            configs = config_list(value.get("config"), f"{here}.config")
            overrides = _parse_overrides(value.get("overrides"), f"{here}.overrides")
            title = value.get("title") or title
            if not isinstance(title, str):
                raise UserError(f"{here}.title: expected a string, got {title!r}.")
        else:
            configs, overrides = (), _parse_overrides(value, here)
        if not configs and not overrides:
            raise UserError(f"{here}: the choice is empty; give a config file or overrides.")
        return Choice(label, title, configs=configs, overrides=overrides)
    raise UserError(
        f"{here}: a choice is a config file, a list of config files, a mapping of overrides, "
        f"or {{config: ..., overrides: ...}}; got {value!r}."
    )


def _parse_grid(value: Any, where: str) -> dict[str, tuple[Choice, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: grid must map axis names to {{label: choice}} mappings.")
    axes = {}
    for axis_name, choices in value.items():
        if not isinstance(axis_name, str) or not _NAME.match(axis_name):
            raise UserError(f"{where}: grid axis name {axis_name!r} must be a short name.")
        if not isinstance(choices, dict) or not choices:
            raise UserError(
                f"{where}: grid.{axis_name} must map labels to choices, e.g. "
                "{resnet18: configs/resnet18.yaml}."
            )
        axes[axis_name] = tuple(
            _parse_choice(label, choice, f"{where}: grid.{axis_name}")
            for label, choice in choices.items()
        )
    return axes


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
        or len(set(value)) != len(value)
    ):
        raise UserError(
            f"{where}: seeds must be a non-empty list of distinct non-negative integers, "
            f"got {value!r}."
        )
    return tuple(value)


def _parse_exclude(
    value: Any, axes: dict[str, tuple[Choice, ...]], where: str
) -> tuple[Mapping[str, frozenset[str]], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UserError(f"{where}: exclude must be a list of {{axis: label(s)}} mappings.")
    labels = {axis: {choice.label for choice in choices} for axis, choices in axes.items()}
    rules = []
    for rule in value:
        if not isinstance(rule, dict) or not rule:
            raise UserError(f"{where}: exclude entries are {{axis: label or [labels]}} mappings.")
        parsed = {}
        for axis_name, wanted in rule.items():
            if axis_name not in labels:
                raise UserError(
                    f"{where}: exclude names axis {axis_name!r}; the grid's axes are "
                    f"{', '.join(labels) or '(none)'}."
                )
            wanted_set = frozenset([wanted] if isinstance(wanted, str) else wanted or [])
            missing = sorted(wanted_set - labels[axis_name])
            if missing or not wanted_set:
                raise UserError(
                    f"{where}: exclude: axis {axis_name} has no label {', '.join(missing) or '?'}"
                    f"; its labels are {', '.join(sorted(labels[axis_name]))}."
                )
            parsed[axis_name] = wanted_set
        rules.append(parsed)
    return tuple(rules)


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """All runs of a sweep, in grid order (first axis slowest), each seed after its grid point.

    Raises:
        UserError: If two runs would get the same name.
    """
    runs = []
    names: set[str] = set()
    for combination in itertools.product(*(enumerate(choices) for choices in spec.axes.values())):
        chosen = tuple(
            (axis, index, choice)
            for axis, (index, choice) in zip(spec.axes, combination, strict=True)
        )
        labels = {axis: choice.label for axis, _, choice in chosen}
        if any(
            all(labels[axis_name] in wanted for axis_name, wanted in rule.items())
            for rule in spec.exclude
        ):
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
