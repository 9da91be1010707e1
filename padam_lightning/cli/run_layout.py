"""A run folder's files (``<save_dir>/<name>/<version>``), without heavy imports (padam-sweep)."""

from collections.abc import Sequence
from pathlib import Path

#: Root of all run folders unless ``--trainer.logger.init_args.save_dir`` says otherwise.
DEFAULT_LOG_DIR = "lightning_logs"
#: The resolved config of the ``fit`` that trained the run.
CONFIG_FILE = "config.yaml"
#: Written when a fit ends normally: final epoch, step and metrics.
FINISHED_FILE = "finished.json"
#: The checkpoint of the last completed epoch, refreshed every epoch.
LAST_CHECKPOINT = "last.ckpt"
#: Where ``LAST_CHECKPOINT`` lives, relative to the run folder.
LAST_CHECKPOINT_PATH = Path("checkpoints") / LAST_CHECKPOINT
#: Evaluations of a run (``padam-fit validate|test|predict``) log to ``<run>/eval/<stage>-<N>``.
EVAL_FOLDER = "eval"


def without_ckpt_path(args: Sequence[str], *others: str) -> list[str]:
    """``args`` less ``--ckpt_path`` (and the options ``others``), each with its value."""
    options = ("--ckpt_path", *others)
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg in options:
            skip_value = True
        elif not arg.startswith(tuple(f"{option}=" for option in options)):
            kept.append(arg)
    return kept
