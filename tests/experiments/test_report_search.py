"""padam-report on a grid or a search over p and lr: heat map, best command, importance."""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_runs import config, write_run

from padam_lightning.experiments.report import build_report, main
from padam_lightning.experiments.report_figures import build_figures

P_KEY, LR_KEY = "model.optimizer.init_args.partial", "model.optimizer.init_args.lr"


def _grid_err(p: float, lr: float, seed: int) -> float:
    return round(0.1 + abs(np.log10(lr) + 2) / 10 + p / 4 + seed / 100, 6)


def _report(logdir: Path, out: Path) -> tuple[dict[str, Any], str]:
    assert main([str(logdir), "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def _mesh(fig: Any, panel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The heat map's cells (rows: p) and its lr and p cell edges."""
    (mesh,) = [c for c in fig.axes[panel].collections if hasattr(c, "get_coordinates")]
    corners = mesh.get_coordinates()
    return np.ma.filled(mesh.get_array(), np.nan), corners[0, :, 0], corners[:, 0, 1]


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """padam-sweep's p x lr grid: 3 p x 2 lr, two seeds of p 1/8 at lr 0.01, run.json with args."""
    logdir = tmp_path / "p_lr_grid"
    for i, p in enumerate((0.25, 0.125, 0.0625)):
        for j, lr in enumerate((0.1, 0.01)):
            for seed in (0, 1) if (p, lr) == (0.125, 0.01) else (0,):
                run = logdir / f"p{p}-lr{lr}-seed{seed}"
                err = _grid_err(p, lr, seed)
                write_run(
                    run,
                    config(p=p, lr=lr, seed=seed, max_epochs=2),
                    {"val/err": [0.6, err], "train/loss": [2.0, 10 * err]},
                    axes={"p": (f"p{p}", f"p = {p}", i), "lr": (f"lr{lr}", f"lr {lr}", j)},
                )
                info = json.loads((run / "run.json").read_text())
                info["arguments"] = ["fit", "--config", "base.yaml", f"--lr={lr}", f"--p={p}"]
                (run / "run.json").write_text(json.dumps(info))
    return logdir


def test_a_grid_gives_a_heat_map_of_cell_means_the_best_command_and_importance(
    grid: Path, tmp_path: Path
) -> None:
    results, markdown = _report(grid, tmp_path / "out")
    search = results["search"]
    assert set(search["names"]) == {P_KEY, LR_KEY}
    groups, layout, _ = build_report(grid)
    fig = build_figures(groups, layout, search)["p_lr"]
    # Rows: p ascending; columns: lr ascending; a cell per grid value, seeds averaged.
    ps, lrs = (0.0625, 0.125, 0.25), (0.01, 0.1)
    expected = np.array([[_grid_err(p, lr, 0) for lr in lrs] for p in ps])
    expected[1][0] = statistics.fmean([_grid_err(0.125, 0.01, s) for s in (0, 1)])
    cells, lr_edges, p_edges = _mesh(fig, 0)
    np.testing.assert_allclose(cells, 100 * expected)  # test error in %
    np.testing.assert_allclose(_mesh(fig, 1)[0], 10 * expected)  # train loss
    for values, edges in ((ps, p_edges), (lrs, lr_edges)):
        assert len(edges) == len(values) + 1
        assert all(low < v < high for v, low, high in zip(values, edges, edges[1:], strict=False))
    # Every run is a point with its own values.
    points = {p["name"]: p for p in search["points"]}
    assert len(points) == 7 and not any(p["pruned"] for p in points.values())
    assert points["p0.25-lr0.1-seed0"]["values"] == {P_KEY: 0.25, LR_KEY: 0.1}
    # The best run: the lowest final test error (p 1/16, lr 0.01, seed 0), and its command.
    errors = {
        name: _grid_err(p["values"][P_KEY], p["values"][LR_KEY], 0) for name, p in points.items()
    }
    errors["p0.125-lr0.01-seed1"] = _grid_err(0.125, 0.01, 1)
    best = min(errors, key=errors.__getitem__)
    assert best == "p0.0625-lr0.01-seed0"
    command = "padam-fit fit --config base.yaml --lr=0.01 --p=0.0625"
    assert search["best"] == points[best]
    assert (points[best]["test_err"], points[best]["command"]) == (
        pytest.approx(errors[best]),
        command,
    )
    assert f"    {command}\n" in markdown and "## Search over lr, p" in markdown
    # Importance of each searched key (Optuna), summing to 1.
    assert set(search["importance"]) == {P_KEY, LR_KEY}
    assert sum(search["importance"].values()) == pytest.approx(1.0)
    assert (tmp_path / "out" / "p_lr.png").stat().st_size > 0
    # Every run a point, the best one a star.
    runs, star = fig.axes[0].collections[1:]
    xy = {
        (lr, p) for p, lr in ((v[P_KEY], v[LR_KEY]) for v in (q["values"] for q in points.values()))
    }
    assert {tuple(o) for o in np.asarray(runs.get_offsets()).tolist()} == xy
    assert np.asarray(star.get_offsets()).tolist() == [[0.01, 0.0625]]
    assert [ax.get_xlabel() for ax in fig.axes[:2]] == ["lr", "lr"]
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["p", "p"]
    titles = ["final test error (%)", "final train loss (running mean)"]
    assert [ax.get_title() for ax in fig.axes[:2]] == titles


def _trial(logdir: Path, number: int, p: float, lr: float, err: float, pruned: bool) -> None:
    run = logdir / f"trial-{number:04d}"
    write_run(run, config(p=p, lr=lr), {"val/err": [0.6, err], "train/loss": [2.0, 1 + err]})
    info = {
        "sweep": "p_lr_resnet18",
        "run": run.name,
        "axes": {"trial": {"label": run.name, "title": f"trial {number}", "index": number}},
        "seed": 0,
        "arguments": ["fit", "--config", "configs/resnet18.yaml", f"--lr={lr}", "--study=s"],
        "retrain": ["fit", "--config", "configs/resnet18.yaml", f"--lr={lr}"],
        "trial": number,
        "params": {P_KEY: p, LR_KEY: lr},
    }
    (run / "run.json").write_text(json.dumps(info))
    if pruned:
        (run / "finished.json").write_text(json.dumps({"stop": "pruned"}))


@pytest.fixture
def search(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Ten trials, in three bands of log lr x three of log p (3 x 3 bins: sqrt of 10 trials).

    The error depends on lr's band only; the pruned trial had the lowest.
    """
    logdir = tmp_path / "search"
    trials = []
    for number in range(10):
        p_band, lr_band = number % 3, (number // 3) % 3
        p = 10 ** (-1.2 + 0.3 * p_band + 0.01 * number)
        lr = 10 ** (-3 + lr_band + 0.008 * number)
        pruned = number == 9
        err = 0.05 if pruned else round(0.1 + 0.05 * lr_band + 0.001 * number, 6)
        _trial(logdir, number, p, lr, err, pruned)
        trials.append(
            {"n": number, "cell": (p_band, lr_band), "err": err, "pruned": pruned, "lr": lr}
        )
    return logdir, trials


def test_a_search_draws_trials_in_log_bins_and_leaves_pruned_ones_out_of_best_and_cells(
    search: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    logdir, trials = search
    results, markdown = _report(logdir, tmp_path / "out")
    found = results["search"]
    assert list(found["names"]) == [P_KEY, LR_KEY]
    expected = np.full((3, 3), np.nan)
    for cell in {t["cell"] for t in trials if not t["pruned"]}:
        expected[cell] = statistics.fmean(
            t["err"] for t in trials if t["cell"] == cell and not t["pruned"]
        )
    groups, layout, _ = build_report(logdir)
    fig = build_figures(groups, layout, found)["p_lr"]
    np.testing.assert_allclose(_mesh(fig, 0)[0], 100 * expected)
    done = [t for t in trials if not t["pruned"]]
    best = min(done, key=lambda t: t["err"])
    assert found["best"]["name"] == f"trial-{best['n']:04d}"
    # Its settings in a run of their own: the trial's study and run folder left out.
    assert shlex.split(found["best"]["command"]) == [
        "padam-fit",
        "fit",
        "--config",
        "configs/resnet18.yaml",
        f"--lr={best['lr']}",
    ]
    # The error follows lr only: Optuna ranks lr first.
    assert list(found["importance"]) == [LR_KEY, P_KEY]
    assert "10 runs, 1 pruned" in markdown
    runs, pruned, _star = fig.axes[0].collections[1:]
    assert len(np.asarray(runs.get_offsets())) == 9
    (point,) = [p for p in found["points"] if p["pruned"]]
    assert np.asarray(pruned.get_offsets()).tolist() == [
        [point["values"][LR_KEY], point["values"][P_KEY]]
    ]


def test_without_optuna_the_importance_is_one_note(
    search: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    results, markdown = _report(search[0], tmp_path / "out")
    err = capsys.readouterr().err
    assert err == (
        "padam-report: Optuna is not installed: no importance of the searched keys "
        "(pip install optuna)\n"
    )
    assert results["search"]["importance"] is None and results["search"]["best"]
    assert "Importance" not in markdown and (tmp_path / "out" / "p_lr.png").is_file()


def test_plain_runs_over_lr_only_get_a_best_command_but_no_heat_map(tmp_path: Path) -> None:
    logdir = tmp_path / "lightning_logs"
    for version, lr in enumerate((0.1, 0.03, 0.01)):
        write_run(logdir / "padam" / f"version_{version}", config(lr=lr), {"val/err": [0.5, lr]})
    results, _ = _report(logdir, tmp_path / "out")
    search = results["search"]
    assert list(search["names"]) == [LR_KEY]
    run = logdir / "padam" / "version_2"
    assert search["best"]["command"] == f"padam-fit fit --config {run / 'config.yaml'}"
    assert not (tmp_path / "out" / "p_lr.png").exists()


def test_runs_that_differ_in_more_than_numbers_are_no_search(tmp_path: Path) -> None:
    logdir = tmp_path / "optimizers"
    for o, optimizer in enumerate(("padam", "sgdm", "adam")):
        write_run(
            logdir / optimizer,
            config(optimizer=optimizer, lr=0.1 / 10**o, p=0.125),
            {"val/err": [0.5, 0.4]},
            axes={"optimizer": (optimizer, optimizer, o)},
        )
    results, markdown = _report(logdir, tmp_path / "out")
    assert results["search"] is None and "## Search" not in markdown


def test_a_search_with_one_unpruned_trial_has_a_best_run_and_no_importance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "search"
    for number, (p, lr, pruned) in enumerate(
        [(0.1, 0.01, False), (0.2, 0.1, True), (0.3, 0.3, True)]
    ):
        _trial(logdir, number, p, lr, 0.2 + number / 10, pruned)
    results, markdown = _report(logdir, tmp_path / "out")
    assert results["search"]["best"]["name"] == "trial-0000"
    assert results["search"]["importance"] == {} and "Importance" not in markdown
    # Every trial pruned: no best run, every cell empty, still one figure and no error.
    (logdir / "trial-0000" / "finished.json").write_text(json.dumps({"stop": "pruned"}))
    results, markdown = _report(logdir, tmp_path / "out2")
    assert results["search"]["best"] is None and "Best:" not in markdown
    assert (tmp_path / "out2" / "p_lr.png").is_file()
    assert "error" not in capsys.readouterr().err


def test_a_grid_with_p_0_has_no_log_heat_map_but_a_best_command(tmp_path: Path) -> None:
    logdir = tmp_path / "grid"
    for p in (0.0, 0.125):
        for lr in (0.1, 0.01):
            run = logdir / f"p{p}-lr{lr}"
            write_run(run, config(p=p, lr=lr), {"val/err": [0.5, 0.3 + p + lr]})
    results, _ = _report(logdir, tmp_path / "out")
    assert results["search"]["best"]["name"] == "p0.0-lr0.01"
    assert not (tmp_path / "out" / "p_lr.png").exists()
