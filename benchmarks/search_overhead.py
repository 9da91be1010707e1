"""What a padam-search trial costs beyond its padam-fit run: one tiny run by hand and as trials.

Run with ``make bench`` or ``python benchmarks/search_overhead.py [--repeats 3]``.

The run is ``padam-fit fit --config configs/wrn.yaml --config configs/tiny.yaml`` (a few CPU
seconds; the tiny network and synthetic data make the fixed costs stand out). Measured, each
``--repeats`` times, medians printed:

- by hand: the run's wall time as its own process;
- by hand with the pruning callback: the same with padam-search's ``OptunaPruning`` options
  (loading the study at the start, a report and a pruner question after each validation);
- as a trial: a padam-search of ``--repeats`` such trials (a one-value space, so every trial is
  the same run; median pruner), each trial's time as the study records it (ask to tell: sampling,
  ``run.json``, the process, reading ``finished.json``) plus the storage's gap between trials.

The overhead per trial is "as a trial" minus "by hand", in seconds and as a ratio. The goal is at
most 2 s. The search's own start (imports, padam-fit's argument check, creating the study) is
paid once per search and printed apart. The callback has no per-step cost: it acts at the fit's
start and at each validation's end only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
FIT = [sys.executable, "-m", "padam_lightning.cli"]
RUN = ["fit", "--config", "configs/wrn.yaml", "--config", "configs/tiny.yaml"]
CALLBACK = "padam_lightning.training.pruning.OptunaPruning"


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``command`` run in the repository; raise if it fails."""
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def by_hand(folder: Path, repeats: int, env: dict[str, str], callback: bool) -> list[float]:
    """Wall seconds of each run by hand (with the pruning callback on a study of its own)."""
    seconds = []
    for repeat in range(repeats):
        name = f"{'callback' if callback else 'plain'}-{repeat}"
        logger = ["--seed_everything", "0", "--trainer.logger.init_args.save_dir", str(folder)]
        logger += ["--trainer.logger.init_args.name", name]
        extra: list[str] = []
        if callback:
            storage = f"sqlite:///{folder / name}.db"
            study = optuna.create_study(study_name=name, storage=storage)
            trial = study.ask()
            extra = ["--trainer.callbacks+", CALLBACK, "--trainer.callbacks.storage", storage]
            extra += ["--trainer.callbacks.study_name", name]
            extra += ["--trainer.callbacks.trial", str(trial.number)]
        seconds.append(timed([*FIT, *RUN, *logger, *extra], env))
    return seconds


def as_trials(folder: Path, repeats: int, env: dict[str, str]) -> tuple[float, list[float]]:
    """A padam-search of ``repeats`` identical trials: its wall seconds and each trial's cost.

    A trial's cost is the study's start-to-complete time plus the gap to the next trial's start.
    """
    spec = {
        "name": "overhead",
        "base": ["configs/wrn.yaml", "configs/tiny.yaml"],
        "space": {"model.optimizer.init_args.lr": {"choices": [0.1]}},  # wrn.yaml's lr
        "trials": repeats,
        "pruner": "median",
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "padam_lightning.experiments.search", str(path)]
    command += ["--save-dir", str(folder), "--fit-command", shlex.join(FIT)]
    wall = timed(command, env)
    trials = optuna.load_study(
        study_name="overhead", storage=f"sqlite:///{folder}/overhead/study.db"
    )
    ordered = sorted(trials.trials, key=lambda t: t.number)
    assert all(t.state.name == "COMPLETE" for t in ordered), [t.state for t in ordered]
    costs = []
    for trial, after in zip(ordered, [*ordered[1:], None], strict=True):
        assert trial.datetime_start and trial.datetime_complete
        gap = (
            0.0
            if after is None or not after.datetime_start
            else (after.datetime_start - trial.datetime_complete).total_seconds()
        )
        costs.append((trial.datetime_complete - trial.datetime_start).total_seconds() + gap)
    return wall, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    args = parser.parse_args()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    with tempfile.TemporaryDirectory(prefix="search-overhead-") as tmp:
        plain = statistics.median(by_hand(Path(tmp) / "hand", args.repeats, env, callback=False))
        hooked = statistics.median(by_hand(Path(tmp) / "hook", args.repeats, env, callback=True))
        wall, costs = as_trials(Path(tmp) / "search", args.repeats, env)
    trial = statistics.median(costs)
    print(
        f"tiny padam-fit run (WRN-10-1, synthetic, 2 epochs of 3 batches, CPU), medians of "
        f"{args.repeats}:"
    )
    print(f"  by hand:                       {plain:6.2f} s")
    print(f"  by hand with pruning callback: {hooked:6.2f} s  (+{hooked - plain:.2f} s)")
    print(
        f"  as a padam-search trial:       {trial:6.2f} s  (+{trial - plain:.2f} s, "
        f"{trial / plain:.2f}x by hand; goal: at most +2 s)"
    )
    print(
        f"  the search's own start, once:  {wall - sum(costs):6.2f} s "
        f"(of {wall:.1f} s for {args.repeats} trials)"
    )


if __name__ == "__main__":
    main()
