"""``padam-fit``'s mistakes in arguments and config files: one line, jsonargparse's own words.

Each case runs the real command (``padam_cli.main``) on the tiny CPU config with one mistake and
checks that the error is one line naming the key and the bad value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

# Imported here, not first under capsys: Lightning's log handler keeps the stderr it starts with.
from padam_lightning.cli.padam_cli import main
from padam_lightning.cli.parse_errors import option_strings, summarize_parse_error

#: Config files with one mistake each, by name (written under the test's tmp_path).
CONFIG_FILES = {
    "misspelled-key.yaml": "trainer:\n  max_epoch: 3\n",
    "unknown-key.yaml": "trainer:\n  totally_else: 3\n",
    "misspelled-group.yaml": "model:\n  optimiser:\n    class_path: torch.optim.SGD\n",
    "misspelled-init-arg.yaml": "model:\n  optimizer:\n    init_args:\n      partail: 0.25\n",
    "sgd-init-arg.yaml": (
        "model:\n  optimizer:\n    class_path: torch.optim.SGD\n    init_args:\n"
        "      momentom: 0.9\n"
    ),
    "bad-class-path.yaml": "model:\n  optimizer:\n    class_path: torch.optim.SGDD\n",
    "mapping-for-int.yaml": "data:\n  batch_size:\n    a: 1\n",
    "tab.yaml": "trainer:\n\tmax_epochs: 3\n",
    "unclosed.yaml": "trainer:\n  devices: [1, 2\n",
}


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``padam-fit`` prints for a mistake (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "usage:" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("padam-fit: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # Unknown and misspelled names: the name, and the one meant where one is close.
        (["--totally-else", "1"], ["--totally-else 1", "fit --help lists the options"]),
        (["--model.archh", "vgg16"], ["--model.archh vgg16", "(did you mean --model.arch?)"]),
        (
            ["--model.archh", "vgg16", "--trainer.max_epohcs", "3"],
            ["(did you mean --model.arch and --trainer.max_epochs?)"],
        ),
        (
            ["--config", "misspelled-key.yaml"],
            ["'max_epoch'", "(did you mean trainer.max_epochs?)"],
        ),
        (["--config", "unknown-key.yaml"], ["'trainer'", "'totally_else'"]),
        (["--config", "misspelled-group.yaml"], ["optimiser", "(did you mean model.optimizer?)"]),
        (
            ["--model.optimizer.init_args.partail", "0.2"],
            ["model.optimizer", "'partail'", "padam_lightning.Padam", "(did you mean partial?)"],
        ),
        (
            ["--config", "misspelled-init-arg.yaml"],
            ["model.optimizer", "'partail'", "0.25", "(did you mean partial?)"],
        ),
        (["--config", "sgd-init-arg.yaml"], ["torch.optim.SGD", "'momentom'", "momentum?)"]),
        (
            ["--trainer.logger.init_args.save_dirr", "x"],
            ["trainer.logger", "TensorBoardLogger", "'save_dirr'", "(did you mean save_dir?)"],
        ),
        # Values of the wrong type: the key, the type expected and the value given.
        (["--data.batch_size", "1.5"], ["data.batch_size", "int", "1.5"]),
        (["--config", "mapping-for-int.yaml"], ["data.batch_size", "int", "{'a': 1}"]),
        (["--trainer.max_epochs", "abc"], ["trainer.max_epochs", "int", "abc"]),
        (["--seed_everything", "1.5"], ["seed_everything", "bool", "int", "1.5"]),
        (["--trainer.deterministic", "maybe"], ["deterministic", "bool", "'warn'", "maybe"]),
        (["--trainer.precision", "bogus"], ["trainer.precision", "'bf16-mixed'", "bogus"]),
        # A class's own argument: the outer and the inner key, the type and the value.
        (
            ["--model.optimizer.init_args.lr", "abc"],
            ["model.optimizer", "lr", "float", "abc", "Padam"],
        ),
        (["--model.optimizer.init_args.partial", "1/8"], ["partial", "float", "1/8"]),
        (["--model.optimizer.init_args.amsgrad", "maybe"], ["amsgrad", "bool", "maybe"]),
        (["--model.optimizer.init_args.betas", "[0.9]"], ["betas", "2 elements", "[0.9]"]),
        (["--model.optimizer.init_args.betas", "[0.9,abc]"], ["betas", "float", "abc"]),
        # A class that does not exist.
        (["--model.optimizer", "torch.optim.SGDD"], ["model.optimizer", "no attribute 'SGDD'"]),
        (["--config", "bad-class-path.yaml"], ["model.optimizer", "no attribute 'SGDD'"]),
        # Config files that are missing or not YAML: the file, or the place in it.
        (["--config", "missing.yaml"], ["config", "does not exist", "missing.yaml"]),
        (["--config", "."], ["config", "not a file"]),
        (["--config", "tab.yaml"], ["cannot start any token", "line 2, column 1"]),
        (["--config", "unclosed.yaml"], ["expected ',' or ']'", "line 3, column 1"]),
    ],
)
def test_a_mistake_is_one_line_naming_the_key_and_the_value(
    tiny_fit_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    expected: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, text in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    # --print_config stops after parsing: no case may train, even one that wrongly parses.
    line = _error([*tiny_fit_args, *extra, "--print_config"], capsys)
    assert all(part in line for part in expected), line
    assert "Subtypes" not in line and "NoneType" not in line, line  # union bookkeeping


@pytest.mark.parametrize(
    ("abbreviated", "meant"),
    [(["--trainer.max_epoch", "3"], "--trainer.max_epochs"), (["--print_conf"], "--print_config")],
)
def test_an_abbreviated_option_is_refused_with_the_full_name(
    tiny_fit_args: list[str], abbreviated: list[str], meant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse would take a prefix of one option for it: max_epoch silently set max_epochs.
    line = _error([*tiny_fit_args, *abbreviated, "--print_config"], capsys)
    assert line == (
        f"padam-fit: error: unrecognized arguments: {' '.join(abbreviated)} (did you mean {meant}?)"
    )


def test_a_setting_the_trainer_refuses_is_one_line(
    tiny_fit_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # -2 parses as an int; Lightning refuses it when the trainer is built, before any training.
    line = _error([*tiny_fit_args, "--trainer.devices", "-2"], capsys)
    assert "invalid trainer setting: `devices`" in line and "should be an int > 0" in line, line


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("", "invalid arguments. padam-fit fit --help lists the options."),
        # Wording it does not know is kept, in one line.
        ("Something new:\n  - went wrong\n  in 'x'\n", "Something new: went wrong; in 'x'"),
        ("unrecognized arguments: --zzz 1", "--zzz 1. padam-fit fit --help lists the options."),
        ("unrecognized arguments: --epoch 1", "--epoch 1 (did you mean --epochs?)"),
        # Without the command's option names: no suggestion, and a class's name is no typo.
        ("Group 'trainer' does not accept option 'max_epoch'", "option 'max_epoch'"),
        ("module 'torch.optim' has no attribute 'SGDD'", "has no attribute 'SGDD'"),
    ],
)
def test_summaries_of_other_messages(message: str, expected: str) -> None:
    names = ["--epochs", "--model.arch"] if "--epoch" in message else []
    summary = summarize_parse_error(message, names)
    assert summary.endswith(expected) and "\n" not in summary


def test_option_strings_lists_every_option_of_real_parsers() -> None:
    main_parser, other = ArgumentParser(exit_on_error=False), ArgumentParser(exit_on_error=False)
    main_parser.add_argument("--epochs", type=int, default=1)
    main_parser.add_argument("--ratio", type=float | None, default=None)
    other.add_argument("--epochs", type=int)  # also in main_parser: listed once
    other.add_argument("-v", "--verbose", action="store_true")
    names = option_strings([main_parser, other])
    assert names == ["--epochs", "--help", "--ratio", "--verbose", "-h", "-v"]
