"""One-line messages for ``padam-fit``'s command-line and config-file mistakes.

jsonargparse reports a bad option with the whole usage (some eighty lines for a LightningCLI)
and, for a bad value of a union-typed option, every subtype it tried. The user needs the key,
what was wrong with it and, for a typo, the name they meant; :func:`summarize_parse_error` makes
that line from jsonargparse's message.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Sequence

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)")
_NOT_ACCEPTED_KEY = re.compile(r"does not accept option '(?P<option>[^']+)'")
_PARSER_KEY = re.compile(r'Parser key "(?P<key>[^"]+)"')
_NOT_ACCEPTED = re.compile(r"Option '(?P<option>[^']+)' is not accepted")
# jsonargparse writes class_path='x.Y' (a Namespace) or "given class_path 'x.Y'".
_CLASS_PATH = re.compile(r"class_path(?:=|\s+)'(?P<class_path>[\w.]+)'")
_LITERAL = re.compile(r"Literal\[(?P<values>[^\]]*)\]")
_GIVEN_VALUE = re.compile(r"^\s*Given value: (?P<value>.*)$", re.MULTILINE)
_HINT = "padam-fit fit --help lists the options."


def _suggestion(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the closest candidate, or nothing when none is close."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _init_options(class_path: str) -> list[str]:
    """The keyword arguments a class's constructor accepts (empty when it cannot be imported)."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    skip = {"params", "self"}
    return [
        p.name
        for p in parameters
        if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def option_strings(parsers: Iterable[argparse.ArgumentParser]) -> list[str]:
    """Every option string the parsers accept (``--model.arch``, ...), sorted, without repeats.

    argparse has no public list of a parser's options; its ``_actions`` list (which jsonargparse
    keeps) is the one private parser attribute padam-fit reads, and only here
    (``tests/cli/test_parse_errors.py`` checks it against a real parser).
    """
    return sorted(
        {name for parser in parsers for action in parser._actions for name in action.option_strings}
    )


def summarize_parse_error(message: str, option_names: Sequence[str] = ()) -> str:
    """The gist of a jsonargparse error, in one line.

    Args:
        message: The error jsonargparse raised (``ArgumentError``'s text; may span lines).
        option_names: The command's option strings (``--model.arch``, ...), to suggest the
            intended one for a misspelled option.

    Returns:
        One line naming the key and the problem, with a suggestion where one is close.
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return f"invalid arguments. {_HINT}"
    first = lines[0]

    unrecognized = _UNRECOGNIZED.match(first)
    if unrecognized:
        options = [arg for arg in unrecognized["args"].split() if arg.startswith("-")]
        if not options:
            return f"unexpected arguments: {unrecognized['args']}. {_HINT}"
        described = [
            option.split("=", 1)[0] + _suggestion(option.split("=", 1)[0], option_names)
            for option in options
        ]
        return f"unknown option {', '.join(described)}. {_HINT}"

    unknown_key = _NOT_ACCEPTED_KEY.search(first)
    if unknown_key:  # a misspelled key in a config file
        option = unknown_key["option"]
        keys = [name.removeprefix("--") for name in option_names if name.startswith("--")]
        return f"unknown config key '{option}'{_suggestion(option, keys)}. {_HINT}"

    key_match = _PARSER_KEY.search(first)
    key = key_match["key"] if key_match else None
    not_accepted = _NOT_ACCEPTED.search(message)
    if key and not_accepted:
        option = not_accepted["option"]
        class_match = _CLASS_PATH.search(message)
        if class_match:
            accepted = _init_options(class_match["class_path"])
            return (
                f"{key}: {class_match['class_path']} has no option '{option}'"
                f"{_suggestion(option, accepted)}. Its options: {', '.join(accepted)}."
            )
        return f"{key}: option '{option}' is not accepted. {_HINT}"

    given = _GIVEN_VALUE.search(message)
    # Each allowed value once, in order (jsonargparse names every Literal subtype twice).
    literals = [v for m in _LITERAL.finditer(message) for v in m["values"].split(", ")]
    if key and given and literals:
        allowed = ", ".join(dict.fromkeys(literals))
        return f"{key}: invalid value {given['value']}; expected one of {allowed}."

    if key and given and "Errors:" in lines:
        # A union type (e.g. an optimizer class or null): the non-null alternative's reason.
        reasons = [
            line.removeprefix("- ").split("callable class: ")[-1]
            for line in lines[lines.index("Errors:") + 1 :]
            if line.startswith("- ") and "NoneType" not in line
        ]
        return f"{key}: invalid value {given['value']} ({'; '.join(reasons)})."

    # Anything else: jsonargparse's own lines, joined (they are short without the usage).
    text = " ".join(lines)
    return _PARSER_KEY.sub(r"\g<key>", text, count=1)
