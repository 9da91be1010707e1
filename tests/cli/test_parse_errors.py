"""One-line summaries of real jsonargparse errors, from a small parser independent of Lightning."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser

from padam_lightning.cli.parse_errors import option_strings, summarize_parse_error


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--precision", type=Literal["32-true", "bf16-mixed"] | None, default=None)
    parser.add_argument("--optimizer", type=type[torch.optim.Optimizer] | None, default=None)
    parser.add_subclass_arguments(torch.optim.Optimizer, "opt", required=False, skip={"params"})
    # The optimizer argument as ImageClassifier declares it (OptimizerCallable or None).
    parser.add_argument("--optim", type=Callable[[Iterable], torch.optim.Optimizer] | None)
    parser.add_argument("--ratio", type=float | None, default=None)
    parser.add_argument("--seed", type=bool | int, default=0)
    return parser


def _message(args: list[str]) -> tuple[str, list[str]]:
    parser = _parser()
    with pytest.raises(ArgumentError) as info:
        parser.parse_args(args)
    return str(info.value), option_strings([parser])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--epoch", "3", "--epochz", "2"], "unknown option --epochz (did you mean --epochs?)"),
        (["--totally-else", "1"], "unknown option --totally-else. padam-fit fit --help"),
        (
            ["--precision", "fp8"],
            "precision: invalid value fp8; expected one of '32-true', 'bf16-mixed'.",
        ),
        (
            ["--opt", '{"class_path": "torch.optim.SGD", "init_args": {"momentom": 0.9}}'],
            "torch.optim.SGD has no option 'momentom' (did you mean momentum?)",
        ),
        (["--epochs", "many"], "epochs: invalid value many; expected an integer."),
        (["--ratio", "abc"], "ratio: invalid value abc; expected a number or null."),
        (["--ratio", "1/4"], "expected a number or null; a fraction is read as text: write 0.25."),
        (["--seed", "1.5"], "seed: invalid value 1.5; expected true/false or an integer."),
        (["--seed", "1/2"], "seed: invalid value 1/2; expected true/false or an integer."),
        (
            ["--optim", "torch.optim.Adam", "--optim.init_args.lr", "abc"],
            "optim.init_args.lr: invalid value abc; expected a number (default: 0.001).",
        ),
        (
            ["--optim", "torch.optim.Adam", "--optim.init_args.betas", "0.9"],
            "optim.init_args.betas: invalid value 0.9; expected a list in brackets "
            "(default: [0.9, 0.999]).",
        ),
        (
            ["--optim", "torch.optim.Adam", "--optim.init_args.betas", "[0.9]"],
            "betas: invalid value [0.9]; expected a list of 2 values in brackets",
        ),
        (
            ["--optim", "torch.optim.Adam", "--optim.init_args.betas", "[0.9, abc]"],
            "expected a number in each place of the list (default: [0.9, 0.999]).",
        ),
        (
            ["--optim", "torch.optim.Adam", "--optim.init_args.amsgrad", "maybe"],
            "optim.init_args.amsgrad: invalid value maybe; expected true/false (default: false).",
        ),
        (
            ["--optim", "torch.optim.Adam", "--optim.init_args.foreach", "maybe"],
            "foreach: invalid value maybe; expected true/false or null (default: null).",
        ),
        (
            ["--optim", '{"class_path": "torch.optim.SGD", "init_args": {"lr": "1/8"}}'],
            "optim.init_args.lr: invalid value 1/8; expected a number (default: 0.001); a "
            "fraction is read as text: write 0.125.",
        ),
    ],
)
def test_a_parse_error_becomes_one_line_with_the_key_and_a_suggestion(
    args: list[str], expected: str
) -> None:
    message, names = _message(args)
    summary = summarize_parse_error(message, names)
    assert expected in summary, (message, summary)
    assert "\n" not in summary and "Subtypes" not in summary and "usage" not in summary


def test_without_a_close_name_nothing_is_suggested() -> None:
    summary = summarize_parse_error("unrecognized arguments: --zzz 1", ["--model.arch"])
    assert "did you mean" not in summary and "--zzz" in summary


def test_option_strings_lists_every_option_of_real_parsers() -> None:
    main, other = _parser(), ArgumentParser(exit_on_error=False)
    other.add_argument("--epochs", type=int)  # also in main: listed once
    other.add_argument("-v", "--verbose", action="store_true")
    names = option_strings([main, other])
    assert names == sorted(set(names))
    expected = {"-h", "--help", "--epochs", "--precision", "--optimizer", "--opt", "--opt.help"}
    expected |= {"--optim", "--optim.help", "--ratio", "--seed"}
    assert set(names) == expected | {"-v", "--verbose"}
