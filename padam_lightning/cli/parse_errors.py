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
import json
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
# A class's own argument inside a class_path/init_args value (an optimizer, a scheduler):
# jsonargparse names it with a second 'Parser key' and ends its reason with the whole Namespace.
_NESTED = re.compile(
    r'callable class: Parser key "(?P<key>[^"]+)":\s*(?P<reason>.*?)\s*Got value: Namespace\(',
    re.DOTALL,
)
_NESTED_ARG = re.compile(r"NestedArg\(key='[^']*', val=(?P<value>.*)\)$")
_GOT_VALUE = re.compile(r"(?:Got|Given) value: (?P<value>.*?)\.?$", re.MULTILINE)
_EXPECTED = re.compile(
    r"Expected a (?:<class '(?P<type>[\w.]+)'>|tuple with (?P<size>\d+) elements)"
)
_FRACTION = re.compile(r"^\s*'?(?P<num>-?\d+(?:\.\d*)?)\s*/\s*(?P<den>\d+(?:\.\d*)?)'?\s*$")
#: What jsonargparse's type names mean, in the words of a config file.
_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true/false",
    "str": "text",
    "tuple": "a list in brackets",
    "list": "a list in brackets",
    "collections.abc.Iterable": "a list in brackets",
    "collections.abc.Sequence": "a list in brackets",
    "dict": "a mapping",
    "NoneType": "null",
}


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


def _expected_in_words(reason: str) -> str:
    """``a number or null`` from jsonargparse's ``Expected a <class 'float'>`` lines."""
    words: list[str] = []
    for match in _EXPECTED.finditer(reason):
        if match["size"]:
            word = f"a list of {match['size']} values in brackets"
        else:
            word = _TYPE_WORDS.get(match["type"], match["type"])
        if word not in words:
            words.append(word)
    if "a number" in words and "an integer" in words:
        words.remove("an integer")  # an integer is a number
    # null last: it is the alternative, not the value the user meant to give.
    words.sort(key=lambda word: word == "null")
    if len(words) > 1:
        return ", ".join(words[:-1]) + " or " + words[-1]
    return words[0] if words else "another value"


def _default_of(class_path: str, name: str) -> str:
    """`` (default: X)``, X the class's default for argument ``name`` as a config writes it."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        default = inspect.signature(cls).parameters[name].default
    except (ImportError, AttributeError, TypeError, ValueError, KeyError):
        return ""
    if default is inspect.Parameter.empty:
        return ""
    if isinstance(default, tuple):
        default = list(default)
    return f" (default: {json.dumps(default, default=str)})"


def _fraction_hint(value: str, expected: str) -> str:
    """A hint for ``1/8`` where a number is expected: YAML and the command line read it as text."""
    fraction = _FRACTION.match(value)
    if "a number" not in expected or fraction is None or float(fraction["den"]) == 0:
        return ""
    decimal = float(fraction["num"]) / float(fraction["den"])
    return f"; a fraction is read as text: write {decimal:g}"


def _nested_value_error(key: str, message: str) -> str | None:
    """The line for a bad value of a class's own argument (``--model.optimizer.init_args.lr``).

    jsonargparse reports it against the outer key (``model.optimizer``) with the value as a
    ``NestedArg(key='lr', val='abc')`` repr; the user needs the full key, the value they wrote
    and what the argument takes.
    """
    nested = _NESTED.search(message)
    if nested is None:
        return None
    name, reason = nested["key"], nested["reason"]
    # The outer (last) "Given value:" holds the whole value; inner ones may hold one element.
    given = list(_GIVEN_VALUE.finditer(message))
    whole = _NESTED_ARG.match(given[-1]["value"].strip()) if given else None
    got = _GOT_VALUE.search(reason)
    if whole is not None:
        value = whole["value"]
    elif got is not None:
        value = got["value"]
    else:
        value = "?"
    value = _unquoted(value)
    expected = _expected_in_words(reason)
    if value.startswith("[") and not expected.startswith("a list"):
        expected += " in each place of the list"  # betas [0.9, abc]: an element is wrong
    class_match = _CLASS_PATH.search(message)
    default = _default_of(class_match["class_path"], name) if class_match else ""
    return (
        f"{key}.init_args.{name}: invalid value {value}; expected "
        f"{expected}{default}{_fraction_hint(value, expected)}."
    )


def _unquoted(value: str) -> str:
    """``abc`` for the repr ``'abc'`` of a string value, as the user typed it."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


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

    nested = _nested_value_error(key, message) if key else None
    if nested is not None:
        return nested

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
        if reasons and all(_EXPECTED.fullmatch(reason) for reason in reasons):
            # Only types (seed_everything 1.5): say them in words.
            value = given["value"]
            expected = _expected_in_words(message.split("Given value type")[0])
            hint = _fraction_hint(value, expected)
            return f"{key}: invalid value {value}; expected {expected}{hint}."
        return f"{key}: invalid value {given['value']} ({'; '.join(reasons)})."

    plain = _GOT_VALUE.search(message)
    if key and plain and _EXPECTED.search(message) and len(lines) == 2:
        # One type (data.batch_size 1.5): "Expected a <class 'int'>. Got value: 1.5".
        value = plain["value"]
        expected = _expected_in_words(message)
        hint = _fraction_hint(value, expected)
        return f"{key}: invalid value {value}; expected {expected}{hint}."

    # Anything else: jsonargparse's own lines, joined (they are short without the usage).
    text = " ".join(lines)
    return _PARSER_KEY.sub(r"\g<key>", text, count=1)
