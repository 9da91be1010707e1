"""The shipped sweeps' runs parse with padam-fit: every config stack and override is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import ArgumentParser, Namespace

from padam_lightning.cli import build_cli
from padam_lightning.experiments.sweep_spec import PlannedRun, expand, load_sweep

REPO_ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted(p.name for p in (REPO_ROOT / "configs" / "sweeps").glob("*.yaml"))
SCHEDULE = "padam_lightning.training.partial_schedule.PartialSchedule"


@pytest.fixture(scope="module")
def fit_parser(tmp_path_factory: pytest.TempPathFactory) -> ArgumentParser:
    """padam-fit's parser for ``fit`` (built once; parsing checks files, keys and types)."""
    save_dir = str(tmp_path_factory.mktemp("logs"))
    args = ["--config", str(REPO_ROOT / "configs" / "wrn.yaml")]
    return build_cli([*args, "--trainer.logger.init_args.save_dir", save_dir], run=False).parser


def _covering_runs(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Few runs (first seed) that together use every choice of every axis."""
    chosen: list[PlannedRun] = []
    covered: set[tuple[str, str]] = set()
    for run in runs:
        labels = {(axis, choice.label) for axis, _, choice in run.choices}
        if run.seed == runs[0].seed and not labels <= covered:
            chosen.append(run)
            covered |= labels
    return chosen


def _holds(parsed: Any, given: Any) -> bool:
    """Whether a parsed value has what an override gave: keys it left out take their defaults."""
    if isinstance(parsed, Namespace):
        parsed = parsed.as_dict()
    if isinstance(given, dict):
        return isinstance(parsed, dict) and all(
            key in parsed and _holds(parsed[key], value) for key, value in given.items()
        )
    if isinstance(given, list):
        return (
            isinstance(parsed, list)
            and len(parsed) == len(given)
            and all(_holds(p, g) for p, g in zip(parsed, given, strict=True))
        )
    return bool(parsed == given)


@pytest.mark.parametrize("sweep_name", SWEEPS)
def test_every_choice_of_a_shipped_sweep_parses(
    sweep_name: str, fit_parser: ArgumentParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # the sweeps name configs relative to the project root
    spec = load_sweep(REPO_ROOT / "configs" / "sweeps" / sweep_name)
    for run in _covering_runs(expand(spec)):
        args = run.fit_arguments(sweep_name=spec.name, save_dir="logs")
        config = fit_parser.parse_args(args[1:])  # without the "fit" subcommand
        assert config["trainer.logger.init_args.name"] == spec.name
        assert config["trainer.logger.init_args.version"] == run.name
        assert config.seed_everything == run.seed
        for key, value in run.overrides:
            assert _holds(config[key], value), (run.name, key)
        # A data config comes after the network's config, so it replaces its CIFAR-10.
        data_configs = [REPO_ROOT / path for path in args if str(path).startswith("configs/data/")]
        expected = "cifar10"
        if data_configs:
            expected = yaml.safe_load(data_configs[-1].read_text())["data"]["dataset"]
        assert config.data.dataset == expected
        schedules = [c for c in config.trainer.callbacks or [] if c.class_path == SCHEDULE]
        if ("p", "sched") in {(axis, choice.label) for axis, _, choice in run.choices}:
            (schedule,) = schedules
            init = schedule.init_args
            assert (init.p_start, init.p_end) == (0.25, 0.0625)
            assert (init.lr_start_scale, init.lr_end_scale) == (0.1, 1.0)
            # The schedule reaches SGD's side (p 1/16, the full lr) at the first lr decay.
            assert init.total == config.model.scheduler.init_args.milestones[0]
        else:
            assert schedules == []
