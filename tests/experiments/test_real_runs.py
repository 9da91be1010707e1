"""The experiment tools on real tiny padam-fit runs: a sweep, a resumed run, and its report.

One module-level sweep of a tiny CPU run (Padam with the p schedule of
configs/experiments/p_schedule.yaml, 2 epochs) feeds every test here; it is then extended to 3
epochs through the sweep's resume path (``--ckpt_path last``). About ten seconds per padam-fit.
Another sweep's run is stopped by SIGTERM to padam-sweep and finished by the same command.

The event files are read in padam-fit's layout: every scalar at Lightning's global step, each
epoch's values at the epoch's last step beside Lightning's ``epoch`` scalar.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_runs import read_scalars_independently

from padam_lightning.experiments import report, sweep
from padam_lightning.experiments.report_figures import build_figures
from padam_lightning.experiments.run_logs import read_run, read_scalars

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"

pytestmark = pytest.mark.slow  # separate padam-fit processes, about half a minute in all


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs of the sweep after its first pass and after extending ``sched`` by one epoch."""
    root = tmp_path_factory.mktemp("real_sweep")
    sweep_file = root / "tiny.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": [str(CONFIGS / "wrn.yaml"), str(CONFIGS / "tiny.yaml")],
                "grid": {
                    "p": {
                        "sched": {
                            "config": str(CONFIGS / "experiments" / "p_schedule.yaml"),
                            "title": "p 1/4→1/16",
                        }
                    }
                },
            }
        )
    )
    logs = root / "logs"
    common = [str(sweep_file), "--executor", "local", "--save-dir", str(logs)]
    assert sweep.main(common) == 0
    run_dir = logs / "tiny" / "sched-seed0"
    assert json.loads((run_dir / "finished.json").read_text())["stop"] == "max_epochs"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    # A longer sweep continues the finished 2-epoch run from its last checkpoint.
    extended = [*common, "--", "--trainer.max_epochs", "3"]
    assert sweep.main(extended) == 0
    return logs / "tiny"


def test_sweep_run_finishes_and_a_resumed_run_continues_in_its_folder(real_sweep: Path) -> None:
    sched_run = real_sweep / "sched-seed0"
    assert json.loads((sched_run / "finished.json").read_text())["stop"] == "max_epochs"
    attempts = [
        line
        for line in (sched_run / "fit.log").read_text().splitlines()
        if line.startswith("### padam-sweep")
    ]
    assert len(attempts) == 2
    assert "--ckpt_path" not in attempts[0] and attempts[1].endswith("--ckpt_path last")
    identity = json.loads((sched_run / "run.json").read_text())
    assert identity["axes"] == {"p": {"label": "sched", "title": "p 1/4→1/16", "index": 0}}
    assert identity["seed"] == 0
    config = yaml.safe_load((sched_run / "config.yaml").read_text())
    assert config["seed_everything"] == 0
    assert config["trainer"]["max_epochs"] == 3
    # Epochs 1-2 from the first attempt and epoch 3 from the resumed one, in one folder.
    scalars = read_scalars_independently(sched_run)
    # Three batches an epoch: each epoch's values at its last global step, beside its `epoch`.
    assert list(scalars["train/loss_step"]) == list(range(9))
    for tag in ("train/loss", "val/err", "optim/lr", "optim/partial"):
        assert list(scalars[tag]) == [2, 5, 8], tag
    assert [scalars["epoch"][step] for step in (2, 5, 8)] == [0, 1, 2]
    assert read_scalars(sched_run) == scalars
    # The schedule moved p by its pure function of the epoch, across the resume too.
    partial = sorted(scalars["optim/partial"].items())
    assert [value for _, value in partial] == pytest.approx(
        [0.25 - 0.1875 * e / 99 for e in range(3)], abs=1e-7
    )
    # lr = 0.1 x MultiStepLR's decay (x0.1 from epoch 1 in tiny.yaml) x the schedule's scale.
    lr = [value for _, value in sorted(scalars["optim/lr"].items())]
    scale = [0.1 + 0.9 * e / 99 for e in range(3)]
    assert lr == pytest.approx([0.1 * scale[0], 0.01 * scale[1], 0.01 * scale[2]], rel=1e-6)


def test_report_on_real_runs_matches_the_logged_scalars(real_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert report.main([str(real_sweep), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["name"] == "sched-seed0"
    run_dir = real_sweep / run["name"]
    scalars = read_scalars_independently(run_dir)
    errors = [value for _, value in sorted(scalars["val/err"].items())]
    assert [value for _, value in run["curves"]["val/err"]] == pytest.approx(errors, abs=1e-7)
    assert run["final_val_err"] == pytest.approx(errors[-1], abs=1e-7)
    assert run["best_val_err"] == pytest.approx(min(errors), abs=1e-7)
    finished = json.loads((run_dir / "finished.json").read_text())
    assert run["final_val_err"] == pytest.approx(finished["metrics"]["val/err"], abs=1e-6)
    assert run["epochs"] == 3
    groups, layout, _ = report.build_report(real_sweep)
    figures = build_figures(groups, layout)
    assert set(figures) == {"curves", "schedule"}
    test_error_axes = figures["curves"].axes[1]
    legend = test_error_axes.get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == ["p 1/4→1/16"]
    (line,) = test_error_axes.get_lines()
    assert np.asarray(line.get_ydata()).tolist() == pytest.approx(
        [100 * e for e in errors], abs=1e-5
    )
    assert figures["curves"].get_suptitle() == "WRN-10-1 · synthetic · Padam · 3 epochs · seed 0"
    (p_line,) = figures["schedule"].axes[0].get_lines()
    assert np.asarray(p_line.get_ydata()).tolist() == pytest.approx(
        [value for _, value in sorted(scalars["optim/partial"].items())], abs=1e-7
    )
    markdown = (out / "results.md").read_text()
    assert (
        f"| p 1/4→1/16 | 1 | 3/3 | {100 * errors[-1]:.2f} | {100 * min(errors):.2f} |" in markdown
    )
    for name in ("curves.png", "curves.svg", "schedule.png", "results.csv"):
        assert (out / name).is_file()


def _process_table() -> dict[int, tuple[int, str]]:
    """Every process's parent and state (``Z``: ended, not yet reaped), from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigterm_to_padam_sweep_stops_a_real_run_that_the_same_command_finishes_once(
    tmp_path: Path,
) -> None:
    sweep_file = tmp_path / "stop.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": "stop",
                "base": [str(CONFIGS / "wrn.yaml"), str(CONFIGS / "tiny.yaml")],
                "grid": {"run": {"long": {"trainer.max_epochs": 12}}},
            }
        )
    )
    logs = tmp_path / "logs"
    run_dir = logs / "stop" / "long-seed0"
    args = [str(sweep_file), "--save-dir", str(logs)]
    with subprocess.Popen(
        [sys.executable, "-m", "padam_lightning.experiments.sweep", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as sweep_process:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():  # it is training
            assert sweep_process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        table = _process_table()
        runs = [pid for pid, (parent, _) in table.items() if parent == sweep_process.pid]
        sweep_process.send_signal(signal.SIGTERM)  # to padam-sweep alone
        out, _ = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 128 + signal.SIGTERM, out
    assert len(runs) == 1
    state = _process_table().get(runs[0])
    assert state is None or state[1] == "Z"  # padam-fit ended before padam-sweep
    assert "INTERRUPTED long-seed0: padam-fit was stopped by SIGTERM (exit status 143)" in out
    assert not (run_dir / "finished.json").exists()

    assert sweep.main(args) == 0  # the same command resumes it from its last.ckpt
    attempts = [
        line
        for line in (run_dir / "fit.log").read_text().splitlines()
        if line.startswith("### padam-sweep")
    ]
    assert len(attempts) == 2 and attempts[1].endswith("--ckpt_path last")
    assert json.loads((run_dir / "finished.json").read_text())["stop"] == "max_epochs"
    # Every step and epoch once, the stopped attempt's later points purged.
    scalars = read_scalars(run_dir)
    assert list(scalars["train/loss_step"]) == list(range(12 * 3))
    record = read_run(run_dir, logs)
    assert record is not None
    for tag in ("train/loss", "val/err", "optim/lr"):
        assert record.curves[tag].epochs == tuple(range(1, 13)), tag
