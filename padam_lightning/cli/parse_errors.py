"""A command-line or config mistake in one line: jsonargparse's own words, and "did you mean".

Of jsonargparse's wording only the lines left out are known (:data:`_BOOKKEEPING`): worded
otherwise they stay in, making the line longer, not wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import re
import sys
from collections.abc import Iterable, Sequence

#: How jsonargparse tried the alternatives of a union type; its null alternative (never what the
#: user meant); the context before the reason a class's argument is refused (``Type Callable[...]
#: expects a function or a callable class: ``).
_BOOKKEEPING = re.compile(r"^(Does not validate|Subtypes:|Errors:|Given value type:)|NoneType")
_CONTEXT = re.compile(r"^Type .*? expects [^:]*: ")
#: A name the user may have misspelled, an option (``--x.y``) or a quoted key or class (``'x.y'``).
_NAME = re.compile(r"(?<![\w-])(--[A-Za-z_][\w.-]*)|'([A-Za-z_][\w.]*)'")
_HINT = "padam-fit fit --help lists the options."


def option_strings(parsers: Iterable[argparse.ArgumentParser]) -> list[str]:
    """Every option string the parsers accept (``--model.arch``, ...), sorted, without repeats.

    argparse lists a parser's options only in its private ``_actions`` (checked against a real
    parser by tests/cli/test_parse_errors.py).
    """
    return sorted(
        {name for parser in parsers for action in parser._actions for name in action.option_strings}
    )


def _loaded(path: str) -> object | None:
    """The module, or a module's attribute, that ``path`` names, if its module is imported."""
    module, _, attribute = path.rpartition(".")
    try:  # only what is imported already: jsonargparse imported the classes it names
        return sys.modules.get(path) or getattr(sys.modules.get(module), attribute, None)
    except Exception:  # a module's own __getattr__ may raise anything
        return None


def _class_arguments(paths: Iterable[str]) -> set[str]:
    """The constructor arguments of the classes named (``padam_lightning.Padam``)."""
    arguments: set[str] = set()
    for cls in (_loaded(path) for path in paths):
        if isinstance(cls, type):
            with contextlib.suppress(TypeError, ValueError):  # a signature Python cannot read
                arguments |= set(inspect.signature(cls).parameters)
    return arguments


def _closest(parts: Sequence[str], candidates: Iterable[str], line: str) -> str | None:
    """The candidate closest to ``parts`` in its last ``len(parts)`` parts, if one is close."""
    depth, by_tail = len(parts), dict[str, str]()
    # Of two with the same last parts, one whose other parts the line names (Group 'trainer').
    for candidate in sorted(candidates, key=lambda c: ".".join(c.split(".")[:-depth]) not in line):
        by_tail.setdefault(".".join(candidate.split(".")[-depth:]), candidate)
    close = difflib.get_close_matches(".".join(parts), by_tail, n=1, cutoff=0.75)
    return by_tail[close[0]] if close else None


def summarize_parse_error(message: str, option_names: Sequence[str] = ()) -> str:
    """The lines of ``message`` about the mistake, joined, and the name meant for a misspelled one.

    The name is the closest of ``option_names`` (``--model.arch``, ...) or a class's arguments.
    """
    line = ""
    for part in (_CONTEXT.sub("", part.strip().removeprefix("- ")) for part in message.split("\n")):
        if not part or part in line or _BOOKKEEPING.search(part):
            continue
        if part.startswith("Given value:") and "value:" in line:
            continue  # the value again, as jsonargparse holds it (a NestedArg, a dict)
        if line:
            line += " " if line.endswith((":", ".")) else "; "
        line += part
    if not line:
        return f"invalid arguments. {_HINT}"
    names = _NAME.findall(line)
    options = {name.removeprefix("--") for name in option_names if name.startswith("--")}
    arguments = _class_arguments(quoted for _, quoted in names)
    known = {part for name in options for part in name.split(".")} | arguments
    # An option that takes a class (it has --X.help) takes the class's arguments as --X.Y too.
    with_classes = tuple(name.removesuffix("help") for name in options if name.endswith(".help"))
    suggestions: dict[str, None] = {}  # in order, each once
    unknown_option = False
    for dashed, quoted in names:
        name = (dashed or quoted).removeprefix("--")
        parts, nested = name.split("."), bool(dashed) and name.startswith(with_classes)
        if set(parts) <= known or nested or _loaded(name) is not None:
            continue
        unknown_option |= bool(dashed)
        # The whole name, else its first parts (optimiser.class_path: model.optimizer).
        for n in range(len(parts), 0, -1):
            if meant := _closest(parts[:n], options if dashed else options | arguments, line):
                suggestions[f"--{meant}" if dashed else meant] = None
                break
    if suggestions:
        return f"{line} (did you mean {' and '.join(suggestions)}?)"
    return f"{line}. {_HINT}" if unknown_option else line
