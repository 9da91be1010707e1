"""``--config`` files: stacked ones keep every callback they add (or padam-fit names the dropped
one), and a sweep file is pointed to padam-sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Callback

from padam_lightning.cli import PadamCLI, build_cli, main
from padam_lightning.cli.config_files import config_file_args
from padam_lightning.training.partial_schedule import PartialSchedule
from padam_lightning.training.train_pass import TrainPass

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = CONFIGS / "experiments"
#: A config of a user's own that sets (replaces) the trainer's callback list.
LR_MONITOR_CALLBACKS = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
"""


def _args(tmp_path: Path, *configs: Path) -> list[str]:
    files = [CONFIGS / "wrn.yaml", CONFIGS / "tiny.yaml", *configs]
    return [
        *(arg for config in files for arg in ("--config", str(config))),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
    ]


def _callbacks(cli: PadamCLI) -> list[Callback]:
    """The built trainer's callbacks (a property Lightning sets in ``__init__``, unseen by mypy)."""
    callbacks: list[Callback] = cli.trainer.callbacks  # type: ignore[attr-defined]
    return callbacks


@pytest.mark.parametrize(
    "order", [("p_schedule", "released_metrics"), ("released_metrics", "p_schedule")]
)
def test_the_experiment_configs_stack_in_either_order(
    tmp_path: Path, order: tuple[str, str]
) -> None:
    configs = [EXPERIMENTS / f"{name}.yaml" for name in order]
    cli = build_cli(_args(tmp_path, *configs), run=False)
    added = [type(c) for c in _callbacks(cli) if type(c) in (PartialSchedule, TrainPass)]
    expected = {"p_schedule": PartialSchedule, "released_metrics": TrainPass}
    assert added == [expected[name] for name in order]


def test_a_later_config_that_replaces_the_callbacks_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replacing = tmp_path / "mine.yaml"
    replacing.write_text(LR_MONITOR_CALLBACKS)
    schedule = EXPERIMENTS / "p_schedule.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(tmp_path, schedule, EXPERIMENTS / "released_metrics.yaml", replacing)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("padam-fit: error:") == 1 and "Traceback" not in err
    assert f"--config {replacing} sets trainer.callbacks" in err
    assert f"PartialSchedule (from {schedule})" in err and "TrainPass (from" in err
    assert "write 'callbacks+:' instead of 'callbacks:'" in err
    # Dotted keys and an emptied list drop the callbacks just the same.
    for text in ("trainer.callbacks: []\n", "trainer:\n  callbacks: null\n"):
        replacing.write_text(text)
        with pytest.raises(SystemExit):
            main(["fit", *_args(tmp_path, schedule, replacing)])
        assert "would drop PartialSchedule" in capsys.readouterr().err


def test_a_config_that_sets_the_callbacks_first_is_added_to(tmp_path: Path) -> None:
    first = tmp_path / "mine.yaml"
    first.write_text(LR_MONITOR_CALLBACKS)
    cli = build_cli(_args(tmp_path, first, EXPERIMENTS / "p_schedule.yaml"), run=False)
    names = [type(c).__name__ for c in _callbacks(cli)]
    assert "LearningRateMonitor" in names and "PartialSchedule" in names


def test_config_file_args_reads_both_spellings() -> None:
    assert config_file_args(["fit", "--config", "a.yaml", "--config=b.yaml", "--x", "1"]) == [
        "a.yaml",
        "b.yaml",
    ]


@pytest.mark.parametrize("sweep", sorted((CONFIGS / "sweeps").glob("*.yaml")))
def test_a_sweep_file_given_to_padam_fit_names_padam_sweep(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(sweep), "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("padam-fit: error:") == 1
    assert f"--config {sweep} is a sweep file" in err and f"padam-sweep {sweep}" in err
    assert "unknown config key" not in err


@pytest.mark.parametrize(
    ("text", "where"),
    [("trainer:\n  max_epochs: [1\n", "(line 3, column 1)."), ("trainer: 3\n", None)],
    ids=["not-yaml", "not-a-mapping"],
)
def test_a_broken_config_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str | None
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    # Last: a --trainer option after "trainer: 3" would make jsonargparse rebuild the section.
    files = (CONFIGS / "wrn.yaml", CONFIGS / "tiny.yaml", broken)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(arg for config in files for arg in ("--config", str(config)))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    if where is not None:
        assert err.startswith(f"padam-fit: error: --config {broken} is not valid YAML: ")
        assert err.strip().endswith(where), err
    else:
        assert err.strip() == "padam-fit: error: trainer: expected a mapping of settings, got 3."


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x80\x04\x95binary\x00\xff", "is not valid YAML: a damaged or binary file (byte 0 "),
        (b"trainer:\n  max_epochs: 3\n\xff\xfe", "is not valid YAML: a damaged or binary file"),
        (b"", "is no config file: it is empty"),
        (b"# only a comment\n", "is no config file: it is empty"),
        (b"- trainer\n", "is no config file: a list, not settings"),
        (b"garbage\n", "is no config file: a str, not settings"),
    ],
    ids=["binary", "cut-by-binary", "empty", "comments-only", "a-list", "a-word"],
)
def test_a_damaged_config_file_is_one_line_naming_it_and_nothing_is_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    problem: str,
) -> None:
    # As a run's config.yaml that a failing disk or a bad copy damaged, given to --config.
    monkeypatch.chdir(tmp_path)
    damaged = tmp_path / "config.yaml"
    damaged.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "wrn.yaml"), "--config", str(damaged)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"padam-fit: error: --config {damaged} {problem}"), err
    assert [path.name for path in tmp_path.iterdir()] == ["config.yaml"]  # nothing written
