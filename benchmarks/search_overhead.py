"""What a padam-search trial costs beyond its padam-fit run: one tiny run by hand and as trials.

Run with ``make bench`` or ``python benchmarks/search_overhead.py [--repeats 3]``.

The run is ``padam-fit fit --config configs/wrn.yaml --config configs/tiny.yaml`` (a few CPU
seconds; the tiny network and synthetic data make the fixed costs stand out). Measured, each
``--repeats`` times, medians printed:

- by hand: the run's wall time as its own process;
- by hand with the pruning callback: the same with padam-search's ``OptunaPruning`` options
  (loading the study at the start, a report and a pruner question after each validation);
- as a trial: a padam-search of 2 such trials (a one-value space, so every trial is the same run;
  median pruner); the first trial's time as the study records it (ask to tell: sampling,
  ``run.json``, the process, reading ``finished.json``) plus the storage's gap before the second.

The three kinds take turns, so a machine busy with other work slows each of them alike.

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


def by_hand(folder: Path, name: str, env: dict[str, str], callback: bool) -> float:
    """Wall seconds of the run by hand (with the pruning callback on a study of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    logger = ["--seed_everything", "0", "--trainer.logger.init_args.save_dir", str(folder)]
    logger += ["--trainer.logger.init_args.name", name]
    extra: list[str] = []
    if callback:
        storage = f"sqlite:///{folder / name}.db"
        trial = optuna.create_study(study_name=name, storage=storage).ask()
        extra = ["--trainer.callbacks+", CALLBACK, "--trainer.callbacks.storage", storage]
        extra += ["--trainer.callbacks.study_name", name]
        extra += ["--trainer.callbacks.trial", str(trial.number)]
    return timed([*FIT, *RUN, *logger, *extra], env)


def as_trials(folder: Path, trials: int, env: dict[str, str]) -> tuple[float, list[float]]:
    """A padam-search of ``trials`` identical trials: its wall seconds and each trial's cost.

    A trial's cost is the study's start-to-complete time plus the gap to the next trial's start.
    """
    spec = {
        "name": "overhead",
        "base": ["configs/wrn.yaml", "configs/tiny.yaml"],
        "space": {"model.optimizer.init_args.lr": {"choices": [0.1]}},  # wrn.yaml's lr
        "trials": trials,
        "pruner": "median",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "padam_lightning.experiments.search", str(path)]
    command += ["--save-dir", str(folder), "--fit-command", shlex.join(FIT)]
    wall = timed(command, env)
    study = optuna.load_study(
        study_name="overhead", storage=f"sqlite:///{folder}/overhead/study.db"
    )
    ordered = sorted(study.trials, key=lambda t: t.number)
    assert all(t.state.name == "COMPLETE" for t in ordered), [t.state for t in ordered]
    costs = []
    for trial, after in zip(ordered, [*ordered[1:], None], strict=True):
        assert trial.datetime_start and trial.datetime_complete
        gap = 0.0
        if after is not None and after.datetime_start:
            gap = (after.datetime_start - trial.datetime_complete).total_seconds()
        costs.append((trial.datetime_complete - trial.datetime_start).total_seconds() + gap)
    return wall, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    args = parser.parse_args()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plain_runs, hooked_runs, costs, starts = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="search-overhead-") as tmp:
        for repeat in range(args.repeats):  # interleaved: a busy machine slows each kind alike
            plain_runs.append(by_hand(Path(tmp) / "hand", f"plain-{repeat}", env, callback=False))
            hooked_runs.append(by_hand(Path(tmp) / "hand", f"hook-{repeat}", env, callback=True))
            wall, trial_costs = as_trials(Path(tmp) / f"search-{repeat}", 2, env)
            costs.append(trial_costs[0])  # the first trial: its run and the ask of the next
            starts.append(wall - sum(trial_costs))
    plain, hooked = statistics.median(plain_runs), statistics.median(hooked_runs)
    trial = statistics.median(costs)
    print(
        f"tiny padam-fit run (WRN-10-1, synthetic, 2 epochs of 3 batches, CPU), medians of "
        f"{args.repeats} turns:"
    )
    print(f"  by hand:                       {plain:6.2f} s")
    print(f"  by hand with pruning callback: {hooked:6.2f} s  (+{hooked - plain:.2f} s)")
    print(
        f"  as a padam-search trial:       {trial:6.2f} s  (+{trial - plain:.2f} s, "
        f"{trial / plain:.2f}x by hand; goal: at most +2 s)"
    )
    print(f"  a search's own start, once:    {statistics.median(starts):6.2f} s")


if __name__ == "__main__":
    main()
