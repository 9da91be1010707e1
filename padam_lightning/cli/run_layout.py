"""The files of a run folder: written by padam-fit, read by padam-sweep and padam-report.

A run folder is ``<save_dir>/<name>/<version>`` of the TensorBoard logger. Kept free of heavy
imports so the sweep and report tools can use it cheaply.
"""

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
