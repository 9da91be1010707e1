"""``padam-fit`` and its policy; :mod:`~padam_lightning.cli.padam_cli` loads on first use."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from padam_lightning.cli.padam_cli import PadamCLI, build_cli, optimizer_label, resume_command

__all__ = ["PadamCLI", "build_cli", "main", "optimizer_label", "resume_command"]

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
CTRL_C_EXIT_STATUS = 130
#: Exit status of a run a search's pruner ended: finished, with nothing to continue.
EXIT_PRUNED = 3


def stop_before_start(signum: int, frame: Any) -> None:
    """SIGTERM's handler until the subcommand starts: raised where the interpreter is, as Ctrl-C."""
    raise KeyboardInterrupt("SIGTERM")


def main(args: list[str] | None = None) -> None:
    """``padam-fit``: a stop while torch loads and the run is built is one line (130, 143)."""
    in_main = threading.current_thread() is threading.main_thread()  # where signals are handled
    previous = signal.signal(signal.SIGTERM, stop_before_start) if in_main else None
    try:
        importlib.import_module("padam_lightning.cli.padam_cli").main(args)
    except KeyboardInterrupt as err:
        started = getattr(sys.modules.get("padam_lightning.cli.padam_cli"), "subcommand_started", 0)
        terminated = err.args == ("SIGTERM",)
        what = ("SIGTERM" if terminated else "Ctrl-C") + (
            "" if started else " before the run started"
        )
        print(f"\npadam-fit: stopped by {what}.", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM if terminated else CTRL_C_EXIT_STATUS)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def __getattr__(name: str) -> Any:
    """The command's public names, imported from ``padam_cli`` when first asked for."""
    if name in __all__ and name != "main":
        return getattr(importlib.import_module("padam_lightning.cli.padam_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
