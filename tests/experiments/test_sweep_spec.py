"""Sweep files: schema, grid expansion into named runs and their padam-fit arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from padam_lightning.errors import UserError
from padam_lightning.experiments.sweep_spec import (
    expand,
    format_override_value,
    load_sweep,
    parse_sweep,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _spec(data: dict) -> list:
    return expand(parse_sweep(data, source=Path("sweep.yaml")))


GRID = {
    "name": "demo",
    "base": ["configs/tiny.yaml"],
    "grid": {
        "arch": {"resnet18": "configs/resnet18.yaml", "wrn": ["configs/wrn.yaml"]},
        "optimizer": {
            "sgdm": "configs/optim/sgdm.yaml",
            "padam-p0.25": {
                "config": "configs/optim/padam.yaml",
                "overrides": {"model.optimizer.init_args.partial": 0.25},
            },
            "lr1e-5": {"model.optimizer.init_args.lr": 1e-5},
        },
    },
    "seeds": [0, 1],
    "overrides": {"trainer.max_epochs": 3},
    "exclude": [{"arch": "wrn", "optimizer": ["sgdm", "lr1e-5"]}],
}


def test_grid_expands_in_axis_order_with_seeds_and_exclusions() -> None:
    runs = _spec(GRID)
    assert [run.name for run in runs] == [
        "resnet18-sgdm-seed0",
        "resnet18-sgdm-seed1",
        "resnet18-padam-p0.25-seed0",
        "resnet18-padam-p0.25-seed1",
        "resnet18-lr1e-5-seed0",
        "resnet18-lr1e-5-seed1",
        "wrn-padam-p0.25-seed0",
        "wrn-padam-p0.25-seed1",
    ]
    assert [(axis, choice.label) for axis, _, choice in runs[3].choices] == [
        ("arch", "resnet18"),
        ("optimizer", "padam-p0.25"),
    ]
    assert runs[3].seed == 1


def test_identity_names_each_axis_with_its_title_and_place_in_the_file() -> None:
    data = {
        "name": "ids",
        "grid": {
            "arch": {"resnet18": "r.yaml", "wrn16_4": "w.yaml", "vgg16": "v.yaml"},
            "optimizer": {"yogi": "y.yaml", "adabound": "a.yaml"},
            "p": {
                "p0.125": {
                    "overrides": {"model.optimizer.init_args.partial": 0.125},
                    "title": "p = 1/8",
                },
                "custom": {"k.a": 1},
            },
        },
        "seeds": [4],
    }
    run = _spec(data)[-1]  # vgg16-adabound-custom-seed4
    assert run.identity("ids", ["fit", "--x"]) == {
        "sweep": "ids",
        "run": "vgg16-adabound-custom-seed4",
        "axes": {
            "arch": {"label": "vgg16", "title": "VGG-16", "index": 2},
            "optimizer": {"label": "adabound", "title": "AdaBound", "index": 1},
            "p": {"label": "custom", "title": "custom", "index": 1},
        },
        "seed": 4,
        "arguments": ["fit", "--x"],
    }
    titles = [
        {axis: value["title"] for axis, value in r.identity("ids", [])["axes"].items()}
        for r in _spec(data)
    ]
    assert titles[0] == {"arch": "ResNet-18", "optimizer": "Yogi", "p": "p = 1/8"}
    assert titles[4]["arch"] == "WRN-16-4"


def test_fit_arguments_order_configs_seed_overrides_extra_then_logger() -> None:
    run = _spec(GRID)[2]  # resnet18-padam-p0.25-seed0
    args = run.fit_arguments(
        sweep_name="demo", save_dir="logs", extra_args=["--trainer.max_epochs", "1"]
    )
    assert args == [
        "fit",
        "--config",
        "configs/tiny.yaml",
        "--config",
        "configs/resnet18.yaml",
        "--config",
        "configs/optim/padam.yaml",
        "--seed_everything",
        "0",
        "--trainer.max_epochs",
        "3",
        "--model.optimizer.init_args.partial",
        "0.25",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger.init_args.save_dir",
        "logs",
        "--trainer.logger.init_args.name",
        "demo",
        "--trainer.logger.init_args.version",
        "resnet18-padam-p0.25-seed0",
    ]


def test_override_only_choice_and_float_formatting() -> None:
    run = _spec(GRID)[4]  # resnet18-lr1e-5-seed0
    assert run.configs == ("configs/tiny.yaml", "configs/resnet18.yaml")
    args = run.fit_arguments(sweep_name="demo", save_dir="logs")
    lr_index = args.index("--model.optimizer.init_args.lr")
    # YAML 1.1 would read "1e-05" as a string; jsonargparse gets a float it can parse.
    assert args[lr_index + 1] == "1.0e-05"
    assert yaml.safe_load(args[lr_index + 1]) == pytest.approx(1e-5)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (None, "null"),
        (0.125, "0.125"),
        (3, "3"),
        (2e-4, "0.0002"),
        (1e-8, "1.0e-08"),
        ([100, 150], "[100, 150]"),
        ({"a": 1}, '{"a": 1}'),
        ("torch.optim.SGD", "torch.optim.SGD"),
    ],
)
def test_override_values_round_trip_through_yaml(value: object, text: str) -> None:
    assert format_override_value(value) == text
    if not isinstance(value, str):
        assert yaml.safe_load(text) == value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grids": {}}, "unknown key(s) grids"),
        ({"name": "a b"}, "name must be a folder-safe string"),
        ({"seeds": [0, 0]}, "seeds must be a non-empty list of distinct"),
        ({"overrides": {"seed_everything": 3}}, "seed_everything is set by padam-sweep"),
        ({"overrides": {"trainer.logger.init_args.save_dir": "x"}}, "is set by padam-sweep"),
        ({"overrides": {"not a key": 1}}, "overrides key 'not a key' must be a dotted config key"),
        (
            {"grid": {"arch": {"res net": "a.yaml"}}},
            "grid.arch label 'res net' must be a folder-safe string",
        ),
        ({"grid": {"arch": {"r": 3}}}, "grid.arch.r must be a config file, a list of config files"),
        ({"grid": {"arch": {"r": {"config": "a.yaml", "lr": 1}}}}, "move lr under overrides"),
        (
            {"grid": {"arch": {"r": {"config": "a.yaml", "title": 3}}}},
            "grid.arch.r.title must be a string, got 3",
        ),
        ({"grid": {"arch": {}}}, "grid.arch must be a non-empty mapping of labels to choices"),
        (
            {"exclude": [{"arch": "vgg"}]},
            "exclude.arch must be a label of arch or a list of them (resnet18, wrn), got 'vgg'",
        ),
        ({"exclude": [{"depth": "x"}]}, "exclude axis 'depth' must be an axis of the grid (arch, "),
        ({"name": None}, "sweep.yaml: name must be a folder-safe string"),
        ({"seeds": True}, "seeds must be a non-empty list of distinct non-negative integers"),
        ({"base": 3}, "base must be a config file path or a list of them, got 3."),
        ({"exclude": {"arch": "vgg"}}, "exclude must be a list of {axis: label or [labels]}"),
        ({"overrides": {3: 1}}, "overrides key 3 must be a dotted config key"),
        ({"grid": {"arch": {"r": {}}}}, "grid.arch.r: the choice is empty"),
    ],
)
def test_schema_errors_name_the_problem(change: dict, message: str) -> None:
    with pytest.raises(UserError, match=None) as caught:
        _spec({**GRID, **change})
    assert message in str(caught.value)


def test_colliding_run_names_are_refused() -> None:
    data = {
        "name": "x",
        "grid": {
            "a": {"p-1": {"k.a": 1}, "p": {"k.a": 2}},
            "b": {"x": {"k.b": 1}, "1-x": {"k.b": 2}},
        },
    }
    with pytest.raises(UserError, match="two runs would both be named p-1-x-seed0"):
        _spec(data)


def test_load_sweep_reports_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_sweep(bad)


@pytest.mark.parametrize(
    ("sweep", "count"),
    [
        ("optimizers.yaml", 12),
        ("optimizers_cifar100.yaml", 12),
        ("p_grid.yaml", 6),
        ("p_lr_grid.yaml", 9),
        ("p_schedule.yaml", 12),
        ("cpu_optimizers.yaml", 4),
        ("cpu_optimizers_decay.yaml", 8),
        ("cpu_p_schedule.yaml", 8),
        ("optimizers_extended.yaml", 24),
    ],
)
def test_shipped_sweeps_expand_and_name_existing_configs(sweep: str, count: int) -> None:
    spec = load_sweep(REPO_ROOT / "configs" / "sweeps" / sweep)
    runs = expand(spec)
    assert len(runs) == count
    for config in {c for run in runs for c in run.configs}:
        assert (REPO_ROOT / config).is_file(), config
