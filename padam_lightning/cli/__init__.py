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
    """SIGTERM's and SIGUSR1's handler until the subcommand starts: raised as Ctrl-C is."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: list[str] | None = None) -> None:
    """``padam-fit``: a stop while torch loads and the run is built is one line (130, 143, 138)."""
    in_main = threading.current_thread() is threading.main_thread()  # where signals are handled
    stops = (signal.SIGTERM, signal.SIGUSR1) if in_main else ()
    previous = {signum: signal.signal(signum, stop_before_start) for signum in stops}
    try:
        importlib.import_module("padam_lightning.cli.padam_cli").main(args)
    except KeyboardInterrupt as err:
        started = getattr(sys.modules.get("padam_lightning.cli.padam_cli"), "subcommand_started", 0)
        name = err.args[0] if err.args in (("SIGTERM",), ("SIGUSR1",)) else None
        where = "" if started else " before the run started"
        print(f"\npadam-fit: stopped by {name or 'Ctrl-C'}{where}.", file=sys.stderr)
        sys.exit(128 + signal.Signals[name] if name else CTRL_C_EXIT_STATUS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def __getattr__(name: str) -> Any:
    """The command's public names, imported from ``padam_cli`` when first asked for."""
    if name in __all__ and name != "main":
        return getattr(importlib.import_module("padam_lightning.cli.padam_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
