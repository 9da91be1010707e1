"""The package's rooms import only inward: library <- CLI policy <- experiment tooling.

``errors`` is the floor; ``optim``, ``models`` and ``data`` stand on it alone; ``training`` (the
LightningModule and callbacks any Lightning user can import) on those; ``cli`` (padam-fit's
policy) on the library; ``experiments`` (padam-sweep, padam-report) on everything. Imports inside
functions count too: a lazy import still ties the rooms together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import padam_lightning

PACKAGE = Path(padam_lightning.__file__).parent
LIBRARY = {"errors", "optim", "models", "data"}
#: What each room may import from the package, besides itself.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "optim": {"errors"},
    "models": {"errors"},
    "data": {"errors"},
    "training": LIBRARY,
    "cli": LIBRARY | {"training"},
    "experiments": LIBRARY | {"training", "cli"},
    "__init__": LIBRARY | {"training"},
    "__main__": LIBRARY | {"training", "cli"},
}


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def package_imports(path: Path) -> set[str]:
    """The rooms of ``padam_lightning`` that a module imports, at any depth of its code."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from padam_lightning import cli` imports the room as a name.
            prefix = f"{node.module}." if node.module == "padam_lightning" else ""
            names = [node.module] + [prefix + alias.name for alias in node.names if prefix]
        elif _is_import_module_call(node):
            names = [node.args[0].value]  # type: ignore[attr-defined]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "padam_lightning" and len(parts) > 1:
                # A name that is not a room (`from padam_lightning import Padam`) is the package's
                # own __init__, which imports rooms of its own.
                rooms.add(parts[1] if parts[1] in ALLOWED else "__init__")
    return rooms


def _is_import_module_call(node: ast.AST) -> bool:
    """``importlib.import_module("padam_lightning....")`` with a literal name."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def test_every_module_imports_only_inward() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {room_of(m) for m in modules} <= set(ALLOWED), "a new room: place it in ALLOWED"
    outward = [
        f"{m.relative_to(PACKAGE)} imports padam_lightning.{target}"
        for m in modules
        for target in sorted(package_imports(m) - ALLOWED[room_of(m)] - {room_of(m)})
    ]
    assert outward == []


def test_no_relative_imports_hide_from_the_check() -> None:
    relative = [
        str(m.relative_to(PACKAGE))
        for m in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(m.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []
