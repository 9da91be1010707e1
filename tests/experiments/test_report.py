"""padam-report on synthetic logs: grouping by run.json, statistics, figures, tables, errors."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_runs import (
    STEPS_PER_EPOCH,
    attempt_writer,
    config,
    read_scalars_independently,
    write_run,
)
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from padam_lightning.experiments import report as report_module
from padam_lightning.experiments.report import build_report, main
from padam_lightning.experiments.report_figures import build_figures, describe_runs
from padam_lightning.experiments.report_tables import results_json
from padam_lightning.experiments.run_logs import (
    epoch_curves,
    optimizer_title,
    read_run,
    read_scalars,
)

OPTIMIZERS = {"sgdm": "SGDM", "adam": "Adam", "amsgrad": "AMSGrad", "padam": "Padam"}
ARCHS = {"vgg16": "VGG-16", "resnet18": "ResNet-18"}


def _columns(fig: Figure) -> int:
    gridspec = fig.axes[0].get_gridspec()
    assert gridspec is not None
    return gridspec.ncols


def _ax(fig: Figure, row: int, column: int) -> Axes:
    return fig.axes[row * _columns(fig) + column]


def _legend(fig: Figure, row: int, column: int) -> list[str]:
    legend = _ax(fig, row, column).get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def _line(fig: Figure, row: int, column: int, label: str) -> tuple[list[float], list[float]]:
    (line,) = [line for line in _ax(fig, row, column).get_lines() if line.get_label() == label]
    return np.asarray(line.get_xdata()).tolist(), np.asarray(line.get_ydata()).tolist()


def _err(start: float, step: float, n: int = 5) -> list[float]:
    return [round(start - step * i, 6) for i in range(n)]


@pytest.fixture
def optimizer_logs(tmp_path: Path) -> Path:
    """2 networks x 4 optimizers, 5 epochs each, as padam-sweep lays them out (run.json)."""
    logdir = tmp_path / "optimizers"
    for a, (arch, arch_title) in enumerate(ARCHS.items()):
        for o, (optimizer, title) in enumerate(OPTIMIZERS.items()):
            write_run(
                logdir / f"{arch}-{optimizer}-seed0",
                config(arch=arch, optimizer=optimizer),
                {
                    "val/err": _err(0.5 - 0.01 * o - 0.02 * a, 0.05),
                    "train/loss": _err(2.0 - 0.1 * o, 0.3),
                },
                axes={"arch": (arch, arch_title, a), "optimizer": (optimizer, title, o)},
            )
    return logdir


def test_optimizer_comparison_gives_a_panel_per_network_and_a_line_per_optimizer(
    optimizer_logs: Path,
) -> None:
    groups, layout, notes = build_report(optimizer_logs)
    assert notes == []
    assert layout.panels == ("arch",) and layout.lines == ("optimizer",)
    # The sweep file's order and titles (run.json), not an alphabetical or inferred one.
    assert [g.label for g in groups] == ["SGDM", "Adam", "AMSGrad", "Padam"] * 2
    assert [g.panel_title for g in groups[::4]] == ["VGG-16", "ResNet-18"]
    fig = build_figures(groups, layout)["curves"]
    assert _columns(fig) == 2 and len(fig.axes) == 4
    assert _legend(fig, 0, 0) == ["SGDM", "Adam", "AMSGrad", "Padam"]
    assert _ax(fig, 0, 0).get_title() == "VGG-16" and _ax(fig, 0, 1).get_title() == "ResNet-18"
    epochs, errors = _line(fig, 1, 1, "Adam")  # test error, ResNet-18, in percent
    assert epochs == [1, 2, 3, 4, 5]
    assert errors == pytest.approx([100 * e for e in _err(0.5 - 0.01 - 0.02, 0.05)])
    _, losses = _line(fig, 0, 0, "Padam")
    assert losses == pytest.approx(_err(2.0 - 0.3, 0.3))


def test_figure_is_readable_at_a_glance(optimizer_logs: Path, tmp_path: Path) -> None:
    groups, layout, _ = build_report(optimizer_logs)
    fig = build_figures(groups, layout)["curves"]
    fig.canvas.draw()
    # Lines that may coincide (Adam and AMSGrad) differ in colour, line style and marker.
    lines = {line.get_label(): line for line in _ax(fig, 1, 0).get_lines()}
    looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines.values()]
    for part in range(3):
        assert len({look[part] for look in looks}) == len(looks)
    # Test error in percent, whole epochs on the x axis, plain numbers on the log loss axis.
    assert _ax(fig, 1, 0).get_ylabel() == "test error (%)"
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    loss_ax = _ax(fig, 0, 0)
    assert loss_ax.get_yscale() == "log"
    low, high = loss_ax.get_ylim()
    ticks = [*loss_ax.yaxis.get_major_ticks(), *loss_ax.yaxis.get_minor_ticks()]
    shown = [t.label1.get_text() for t in ticks if low <= t.get_loc() <= high]
    shown = [label for label in shown if label]
    assert len(shown) >= 3  # the loss falls from 2.0 to 0.8: several values are labelled
    assert all(float(label) > 0 for label in shown)  # plain numbers, no 10^x
    # The title says what ran.
    assert fig.get_suptitle() == "VGG-16, ResNet-18 · CIFAR-10 · 5 epochs · seed 0"


def test_report_files_hold_the_logged_values(
    optimizer_logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main([str(optimizer_logs), "--out", str(out), "--target-err", "0.35"]) == 0
    assert "8 run(s) in 8 group(s)" in capsys.readouterr().out
    for name in ("curves.png", "curves.svg", "results.md", "results.json", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["layout"]["panels"] == ["arch"]
    assert results["layout"]["lines"] == ["optimizer"]
    for run in results["runs"]:
        scalars = read_scalars_independently(optimizer_logs / run["name"])
        errors = [scalars["val/err"][e * STEPS_PER_EPOCH - 1] for e in range(1, 6)]
        assert run["final_val_err"] == errors[-1]
        assert run["best_val_err"] == min(errors)
        assert run["final_train_loss"] == scalars["train/loss"][5 * STEPS_PER_EPOCH - 1]
        assert [e for e, _ in run["curves"]["val/err"]] == [1, 2, 3, 4, 5]
        assert "train/loss_step" not in run["curves"]  # per-step scalars are not epoch curves
    adam = next(g for g in results["groups"] if g["label"] == "Adam" and g["panel"] == "VGG-16")
    assert adam["axes"]["optimizer"] == {"label": "adam", "title": "Adam"}
    # Adam on VGG: 0.49, 0.44, 0.39, 0.34 -> first at most 0.35 after epoch 4.
    assert adam["epoch_to_target"] == {"0.35": 4}
    # The worst group in the VGG panel (SGDM) ends at 0.30: every group's epoch to reach it.
    assert adam["common_target"] == pytest.approx(0.30)
    assert adam["epoch_to_common_target"] == 5
    markdown = (out / "results.md").read_text()
    assert "## VGG-16" in markdown and "## ResNet-18" in markdown
    assert "| optimizer | seeds | epochs | final test err % | best test err %" in markdown
    assert "| Adam | 1 | 5/5 | 29.00 | 29.00 | 0.7000 | 4 | 5 |" in markdown
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 8 and rows[1]["optimizer"] == "Adam" and rows[1]["arch"] == "VGG-16"


def test_seeds_pool_into_mean_and_std(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    finals = {0: [0.40, 0.30, 0.20], 1: [0.42, 0.28, 0.26], 2: [0.38, 0.33, 0.23]}
    for seed, errors in finals.items():
        write_run(
            logdir / f"padam-seed{seed}",
            config(seed=seed, max_epochs=3),
            {"val/err": errors, "train/loss": [1.0, 0.8, 0.5 + seed / 10]},
            axes={"optimizer": ("padam", "Padam", 1)},
        )
    write_run(
        logdir / "sgdm-seed0",
        config(optimizer="sgdm", max_epochs=3),
        {"val/err": [0.5] * 3},
        axes={"optimizer": ("sgdm", "SGDM")},
    )
    groups, layout, _ = build_report(logdir)
    assert layout.lines == ("optimizer",)
    padam = next(g for g in groups if g.label == "Padam")
    assert [r.seed for r in padam.runs] == [0, 1, 2]
    last = [errors[-1] for errors in finals.values()]
    best = [min(errors) for errors in finals.values()]
    (numbers,) = [
        g for g in results_json(groups, layout, [], logdir)["groups"] if g["label"] == "Padam"
    ]
    assert numbers["final_val_err"]["mean"] == pytest.approx(statistics.fmean(last))
    assert numbers["final_val_err"]["std"] == pytest.approx(statistics.stdev(last))
    assert numbers["final_val_err"]["n"] == 3
    assert numbers["best_val_err"]["mean"] == pytest.approx(statistics.fmean(best))
    assert numbers["final_train_loss"]["mean"] == pytest.approx(statistics.fmean([0.5, 0.6, 0.7]))
    mean_curve = padam.mean_curves["val/err"].values
    assert mean_curve == pytest.approx([0.40, 0.30333333, 0.23], rel=1e-6)
    assert padam.epoch_to_reach(0.30) == 3  # the seed mean is 0.3033 after epoch 2
    fig = build_figures(groups, layout)["curves"]
    assert len(fig.axes[1].collections) == 1  # one ±std band: Padam's three seeds
    title = fig.get_suptitle().replace("\n", " ")  # wrapped to the figure's width
    assert title == "ResNet-18 · CIFAR-10 · 3 epochs · seeds 0, 1, 2 (mean ± 1 std)"


def test_p_by_lr_grid_becomes_a_grid_of_panels(tmp_path: Path) -> None:
    logdir = tmp_path / "p_lr_grid"
    for i, (p, p_title) in enumerate(((0.25, "p = 1/4"), (0.125, "p = 1/8"))):
        for j, lr in enumerate((0.1, 0.01)):
            write_run(
                logdir / f"p{p}-lr{lr}-seed0",
                config(p=p, lr=lr, max_epochs=2),
                {"val/err": [0.5, 0.4 - p / 10 - lr], "train/loss": [1.0, 0.5]},
                axes={"p": (f"p{p}", p_title, i), "lr": (f"lr{lr}", f"lr = {lr}", j)},
            )
    groups, layout, _ = build_report(logdir)
    assert layout.panels == ("lr",) and layout.lines == ("p",)
    fig = build_figures(groups, layout)["curves"]
    assert [ax.get_title() for ax in fig.axes[:2]] == ["lr = 0.1", "lr = 0.01"]
    assert _legend(fig, 1, 0) == ["p = 1/4", "p = 1/8"]
    _, errors = _line(fig, 1, 1, "p = 1/8")
    assert errors == pytest.approx([50.0, 100 * (0.4 - 0.0125 - 0.01)])
    # Asked for explicitly: p as panels, lr as lines.
    _, layout, _ = build_report(logdir, panels=["p"], lines=["lr"])
    assert layout.panels == ("p",) and layout.lines == ("lr",)


def test_p_schedule_runs_get_a_schedule_figure(tmp_path: Path) -> None:
    logdir = tmp_path / "p_schedule"
    write_run(
        logdir / "sched-seed0",
        config(max_epochs=3),
        {"val/err": [0.5, 0.4, 0.3], "optim/partial": [0.25, 0.15625, 0.0625]},
        axes={"p": ("sched", "p 1/4→1/16")},
    )
    write_run(
        logdir / "p0.0625-seed0",
        config(p=0.0625, max_epochs=3),
        {"val/err": [0.6, 0.5, 0.35], "optim/partial": [0.0625] * 3},
        axes={"p": ("p0.0625", "p = 1/16", 1)},
    )
    groups, layout, _ = build_report(logdir)
    assert [g.label for g in groups] == ["p 1/4→1/16", "p = 1/16"]
    figures = build_figures(groups, layout)
    assert set(figures) == {"curves", "schedule"}
    _, partials = _line(figures["schedule"], 0, 0, "p 1/4→1/16")
    assert partials == pytest.approx([0.25, 0.15625, 0.0625])


def test_plain_padam_fit_runs_are_grouped_by_their_folder(tmp_path: Path) -> None:
    # padam-fit's own layout: <name>/version_N, no run.json; versions are seeds of one group.
    logdir = tmp_path / "lightning_logs"
    for version, seed in ((0, 0), (1, 7)):
        write_run(
            logdir / "cifar10-wrn16_4-padam" / f"version_{version}",
            config(arch="wrn16_4", seed=seed, max_epochs=2),
            {"val/err": [0.5, 0.3 + seed / 100]},
        )
    write_run(
        logdir / "cifar10-wrn16_4-sgdm" / "version_0",
        config(arch="wrn16_4", optimizer="sgdm", max_epochs=2),
        {"val/err": [0.4, 0.2]},
    )
    groups, layout, _ = build_report(logdir)
    assert layout.lines == ("run",)
    assert [g.label for g in groups] == ["cifar10-wrn16_4-padam", "cifar10-wrn16_4-sgdm"]
    assert [r.seed for r in groups[0].runs] == [0, 7]
    numbers = results_json(groups, layout, [], logdir)["groups"][0]
    assert numbers["final_val_err"]["mean"] == pytest.approx(0.335)


def test_epoch_values_are_numbered_by_the_epoch_logged_at_their_step(tmp_path: Path) -> None:
    # Validation every other epoch: val/err at the last steps of epochs 2 and 4 only, beside
    # per-step train/loss_step scalars (not an epoch curve).
    values: dict[str, list[float | None]] = {
        "val/err": [None, 0.4, None, 0.3],
        "train/loss": [2.0, 1.5, 1.2, 1.0],
    }
    write_run(tmp_path / "run", config(max_epochs=4), values)
    scalars = read_scalars(tmp_path / "run")
    assert list(scalars["val/err"]) == [2 * STEPS_PER_EPOCH - 1, 4 * STEPS_PER_EPOCH - 1]
    assert list(scalars["train/loss_step"]) == list(range(4 * STEPS_PER_EPOCH))
    curves = epoch_curves(scalars)
    assert set(curves) == {"val/err", "train/loss"}
    assert curves["val/err"].epochs == (2, 4)
    assert curves["val/err"].values == pytest.approx([0.4, 0.3])
    assert curves["train/loss"].epochs == (1, 2, 3, 4)
    assert curves["train/loss"].values == pytest.approx([2.0, 1.5, 1.2, 1.0])


def test_a_resumed_writer_s_purge_step_drops_the_later_points_of_earlier_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with attempt_writer(tmp_path) as writer:
        for step in range(10):
            writer.add_scalar("x", step, step)
    with attempt_writer(tmp_path, attempt=1, purge_step=5) as writer:
        for step in range(5, 8):
            writer.add_scalar("x", 100 + step, step)
    expected = {step: float(step if step < 5 else 100 + step) for step in range(8)}
    assert read_scalars(tmp_path) == {"x": expected}
    assert read_scalars_independently(tmp_path) == {"x": expected}
    assert not caplog.records  # TensorBoard's warning about each purge is not passed on


def test_train_curve_pass_draws_the_end_of_epoch_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "logs"
    curves = {"val/err": [0.5, 0.4], "train/loss": [2.0, 1.5], "train_pass/loss": [1.8, 1.2]}
    write_run(logdir / "a-seed0", config(max_epochs=2), curves, axes={"o": ("a", "A")})
    groups, layout, _ = build_report(logdir, train_curve="pass")
    fig = build_figures(groups, layout)["curves"]
    assert _line(fig, 0, 0, "A")[1] == pytest.approx([1.8, 1.2])
    assert fig.axes[0].get_ylabel() == "train loss (end-of-epoch pass)"
    numbers = results_json(groups, layout, [], logdir)["groups"][0]
    assert numbers["final_train_loss"]["mean"] == pytest.approx(1.2)
    # The default is the running mean, as Lightning logs it.
    groups, layout, _ = build_report(logdir)
    assert build_figures(groups, layout)["curves"].axes[0].get_ylabel().endswith("(running mean)")
    # A run without the pass's tags: one clear line.
    write_run(logdir / "b-seed0", config(max_epochs=2), {"val/err": [0.5, 0.4]})
    assert main([str(logdir), "--out", str(tmp_path / "out"), "--train-curve", "pass"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("padam-report: error: --train-curve pass: 1 of 2 runs (e.g. b-seed0)")
    assert "released_metrics.yaml" in err


def test_a_resumed_run_shows_only_the_points_of_the_attempt_that_went_on(tmp_path: Path) -> None:
    run_dir = tmp_path / "logs" / "run"
    run_config = config(max_epochs=4)
    # The first attempt logs epochs 1-4 but saved its checkpoint at the end of epoch 2 only;
    # the resume from there (global step 20) repeats epoch 3 and is stopped before epoch 4.
    write_run(run_dir, run_config, {"val/err": [0.5, 0.4, 0.9, 0.8]}, finished=False)
    resumed_at = 2 * STEPS_PER_EPOCH
    write_run(
        run_dir, run_config, {"val/err": [0.3]}, first_epoch=3, attempt=1, purge_step=resumed_at
    )
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    record = read_run(run_dir, tmp_path / "logs")
    assert record is not None
    assert record.curves["val/err"].epochs == (1, 2, 3)
    assert record.curves["val/err"].values == pytest.approx([0.5, 0.4, 0.3])
    assert record.epochs_completed == 3
    steps = read_scalars(run_dir)["train/loss_step"]
    assert list(steps) == list(range(resumed_at + STEPS_PER_EPOCH))
    assert read_scalars(run_dir) == read_scalars_independently(run_dir)


def test_runs_without_config_or_test_error_are_left_out_with_a_note(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    write_run(logdir / "good", config(), {"val/err": [0.5]})
    write_run(logdir / "no-err", config(), {"train/loss": [1.0]})
    write_run(logdir / "no-config", config(), {"val/err": [0.5]})
    (logdir / "no-config" / "config.yaml").unlink()
    groups, _, notes = build_report(logdir)
    assert [r.name for g in groups for r in g.runs] == ["good"]
    assert any("no-config: no config.yaml" in note for note in notes)
    assert any("no-err: no test error logged yet" in note for note in notes)


def test_damaged_run_files_are_passed_over_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "logs"
    damaged = ("cut-finished", "list-finished", "cut-config", "binary-config", "list-config")
    for name in ("good", *damaged, "cut-identity"):
        write_run(logdir / name, config(), {"val/err": [0.5, 0.4]}, axes={"x": (name, name)})
    (logdir / "cut-finished" / "finished.json").write_text('{"epoch": 4, "global_st')
    (logdir / "list-finished" / "finished.json").write_text("[4]")
    (logdir / "cut-config" / "config.yaml").write_text("model: {arch: resnet18, optimi")
    (logdir / "binary-config" / "config.yaml").write_bytes(b"\xff\xfe\x00model")
    (logdir / "list-config" / "config.yaml").write_text("- model\n")
    (logdir / "cut-identity" / "run.json").write_text('{"axes": {"x": {"lab')
    out = tmp_path / "report"

    assert main([str(logdir), "--out", str(out)]) == 0

    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == len(damaged) + 1, notes  # one line per damaged file, no traceback
    assert all(note.startswith(f"padam-report: {logdir}/") for note in notes)
    (note,) = [n for n in notes if "/cut-config: " in n]
    assert note.endswith(
        "config.yaml is unreadable (expected ',' or '}', but got '<stream end>' at line 1, "
        "column 31); left out"
    )
    (note,) = [n for n in notes if "/binary-config: " in n]
    assert "config.yaml is unreadable ('utf-8' codec can't decode" in note
    (note,) = [n for n in notes if "/list-config: " in n]
    assert note.endswith("config.yaml holds a list, not padam-fit's config mapping; left out")
    (note,) = [n for n in notes if "/cut-finished: " in n]
    assert "finished.json is unreadable (" in note and note.endswith("taken as not finished")
    (note,) = [n for n in notes if "/list-finished: " in n]
    assert note.endswith("finished.json is not a JSON object; taken as not finished")
    (note,) = [n for n in notes if "/cut-identity: " in n]
    assert "run.json is unreadable (" in note and note.endswith("grouped by its folder name")
    runs = {run["name"]: run for run in json.loads((out / "results.json").read_text())["runs"]}
    assert sorted(runs) == ["cut-finished", "cut-identity", "good", "list-finished"]
    assert runs["good"]["finished"] and not runs["cut-finished"]["finished"]
    assert not runs["list-finished"]["finished"]
    assert runs["cut-finished"]["final_val_err"] == pytest.approx(0.4)
    assert runs["cut-identity"]["axes"] == {
        "run": {"label": "cut-identity", "title": "cut-identity"}
    }


def test_user_errors_print_one_line_and_exit_2(
    tmp_path: Path, optimizer_logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "missing"), "--out", out]) == 2
    assert capsys.readouterr().err.startswith("padam-report: error: ")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", out]) == 2
    assert "no runs with a logged test error" in capsys.readouterr().err
    assert main([str(optimizer_logs), "--out", out, "--panels", "depth"]) == 2
    err = capsys.readouterr().err
    assert "--panels depth: not an axis of these runs; their axes: arch, optimizer" in err
    assert main([str(optimizer_logs), "--out", out, "--target-err", "10"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_a_one_epoch_comparison_of_eight_optimizers_is_readable(tmp_path: Path) -> None:
    # The final version's eight optimizers after one epoch (a quick check): every line has its
    # own dash pattern too, the x axis ticks whole epochs only, and the title says "1 epoch".
    titles = {
        "sgdm": "SGDM",
        "adam": "Adam",
        "amsgrad": "AMSGrad",
        "padam": "Padam",
        "adamw": "AdamW",
        "radam": "RAdam",
        "yogi": "Yogi",
        "adabound": "AdaBound",
    }
    logdir = tmp_path / "extended"
    for o, (name, title) in enumerate(titles.items()):
        write_run(
            logdir / f"resnet18-{name}-seed0",
            config(optimizer=list(OPTIMIZERS)[o % 4], max_epochs=1),
            {"val/err": [0.6], "train/loss": [2.0]},  # all eight coincide
            axes={"arch": ("resnet18", "ResNet-18", 0), "optimizer": (name, title, o)},
        )
    groups, layout, _ = build_report(logdir)
    fig = build_figures(groups, layout)["curves"]
    fig.canvas.draw()
    lines = _ax(fig, 1, 0).get_lines()
    assert [line.get_label() for line in lines] == list(titles.values())
    for look in (Line2D.get_color, Line2D.get_marker):
        assert len({str(look(line)) for line in lines}) == 8
    # get_linestyle() says "--" for every custom dash pattern; the pattern itself tells them apart.
    assert len({str(getattr(line, "_unscaled_dash_pattern")) for line in lines}) == 8  # noqa: B009
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [1.0]
    assert fig.get_suptitle() == "ResNet-18 · CIFAR-10 · 1 epoch · seed 0"


def test_plain_runs_of_one_name_are_labelled_by_the_settings_they_differ_in(
    tmp_path: Path,
) -> None:
    # padam-fit runs under one name: two with another lr and p, and two seeds of the first.
    logdir = tmp_path / "lightning_logs"
    name = logdir / "synthetic-wrn10_1-padam"
    for version, (lr, p, seed) in enumerate(((0.1, 0.125, 0), (0.05, 0.25, 0), (0.1, 0.125, 1))):
        write_run(
            name / f"version_{version}",
            config(arch="wrn10_1", lr=lr, p=p, seed=seed, max_epochs=2),
            {"val/err": [0.5, 0.4 - lr]},
        )
    # What `padam-fit validate` of a run writes: not a training run, and no note about it.
    write_run(
        name / "version_0" / "eval" / "validate-0",
        config(arch="wrn10_1", max_epochs=2),
        {"val/err": [0.45]},
    )
    groups, layout, notes = build_report(logdir)
    assert notes == []
    assert [(g.label, [r.name.rsplit("/", 1)[1] for r in g.runs]) for g in groups] == [
        ("synthetic-wrn10_1-padam lr=0.05 p=0.25", ["version_1"]),
        ("synthetic-wrn10_1-padam lr=0.1 p=0.125", ["version_0", "version_2"]),  # two seeds
    ]
    fig = build_figures(groups, layout)["curves"]
    assert _legend(fig, 1, 0) == [g.label for g in groups]


@pytest.mark.parametrize("where", ["name folder", "run folder"])
def test_a_report_on_one_run_says_what_ran_and_epochs_done_of_planned(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # One padam-fit run stopped (max_steps, Ctrl-C) after 1 of its 10 planned epochs.
    run_dir = tmp_path / "r" / "cifar10-resnet18-sgdm" / "version_0"
    write_run(
        run_dir,
        config(optimizer="sgdm", max_epochs=10),
        {"val/err": [0.6], "train/loss": [2.0]},
        finished=False,
    )
    logdir = run_dir.parent if where == "name folder" else run_dir
    groups, layout, _ = build_report(logdir)
    # The line is the run's name, not its version folder.
    assert [g.label for g in groups] == ["cifar10-resnet18-sgdm"]
    fig = build_figures(groups, layout)["curves"]
    assert _legend(fig, 0, 0) == ["cifar10-resnet18-sgdm"]
    # The optimizer is in the title, and the epochs are those done of those planned.
    assert fig.get_suptitle() == "ResNet-18 · CIFAR-10 · SGDM · 1 of 10 epochs · seed 0"
    assert {ax.get_xlabel() for ax in fig.axes} == {"epochs completed"}
    out = tmp_path / "out"
    assert main([str(logdir), "--out", str(out)]) == 0
    markdown = (out / "results.md").read_text()
    assert "| cifar10-resnet18-sgdm | 1 | 1/10 |" in markdown
    assert "Epochs are epochs completed" in markdown
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert (run["epochs"], run["max_epochs"]) == (1, 10)
    assert run["curves"]["val/err"] == [[1, pytest.approx(0.6)]]


def test_titles_name_one_optimizer_and_lines_say_when_they_stopped_short(
    tmp_path: Path,
) -> None:
    logdir = tmp_path / "p_grid"
    for i, (p, epochs) in enumerate(((0.25, 3), (0.125, 1))):
        write_run(
            logdir / f"p{p}-seed0",
            config(p=p, max_epochs=3),
            {"val/err": [0.5, 0.4, 0.3][:epochs]},
            axes={"p": (f"p{p}", f"p = {p}", i)},
        )
    groups, layout, _ = build_report(logdir)
    fig = build_figures(groups, layout)["curves"]
    # All Padam (the lines are p): the optimizer is named. The runs got to different epochs:
    # the title gives the range, and the line that stopped short says how far it got.
    assert fig.get_suptitle() == "ResNet-18 · CIFAR-10 · Padam · 1–3 epochs · seed 0"
    assert _legend(fig, 1, 0) == ["p = 0.25", "p = 0.125 (1 of 3 epochs)"]
    assert describe_runs(groups[:1]) == "ResNet-18 · CIFAR-10 · Padam · 3 epochs · seed 0"
    assert describe_runs(groups[1:]) == "ResNet-18 · CIFAR-10 · Padam · 1 of 3 epochs · seed 0"
    # Every run stopped after 1 of 3: the title says it once, the lines say nothing more.
    groups, layout, _ = build_report(logdir, lines=["p"])
    fig = build_figures([g for g in groups if g.label == "p = 0.125"], layout)["curves"]
    assert fig.get_suptitle() == "ResNet-18 · CIFAR-10 · Padam · 1 of 3 epochs · seed 0"
    assert _legend(fig, 1, 0) == ["p = 0.125"]


@pytest.mark.parametrize(
    ("class_path", "settings", "title"),
    [
        ("padam_lightning.Padam", {"partial": 0.125, "amsgrad": True}, "Padam"),
        ("torch.optim.SGD", {"momentum": 0.9}, "SGDM"),
        ("torch.optim.SGD", {"momentum": 0.0}, "SGD"),
        ("torch.optim.Adam", {"amsgrad": True}, "AMSGrad"),
        ("torch.optim.Adam", {"amsgrad": False}, "Adam"),
        ("torch.optim.AdamW", {"amsgrad": True}, "AdamW (amsgrad)"),
        ("my.optimizers.LionW", {}, "LionW"),
    ],
)
def test_optimizers_are_named_as_run_names_tell_them_apart(
    class_path: str, settings: dict[str, object], title: str
) -> None:
    assert optimizer_title(class_path, settings) == title


def test_tick_labels_of_a_loss_that_barely_moves_differ(tmp_path: Path) -> None:
    # A tiny run's loss goes from 2.2903 to 2.2912: three significant digits label every tick
    # 2.29; each label is distinct and plain (no powers of ten).
    write_run(
        tmp_path / "logs" / "run",
        config(max_epochs=2),
        {"val/err": [0.9, 0.9], "train/loss": [2.2903, 2.2912]},
    )
    groups, layout, _ = build_report(tmp_path / "logs")
    fig = build_figures(groups, layout)["curves"]
    fig.canvas.draw()
    ax = _ax(fig, 0, 0)
    low, high = ax.get_ylim()
    labels = [t.label1.get_text() for t in ax.yaxis.get_major_ticks() if low <= t.get_loc() <= high]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert all(2.29 <= float(label) <= 2.2915 for label in labels), labels


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        # An existing file as --out (was FileExistsError from mkdir).
        (lambda tmp: _file(tmp / "README.md"), "--out {tmp}/README.md is a file, not a folder"),
        # A path below a file (was NotADirectoryError from mkdir), and deeper below one.
        (lambda tmp: _file(tmp / "somefile") / "sub", "{tmp}/somefile is a file, not a folder"),
        (lambda tmp: _file(tmp / "f") / "a" / "b", "--out {tmp}/f/a/b: {tmp}/f is a file"),
    ],
    ids=["out-is-a-file", "out-below-a-file", "out-two-below-a-file"],
)
def test_an_out_path_that_cannot_be_a_folder_is_one_line_before_reading_runs(
    tmp_path: Path,
    optimizer_logs: Path,
    capsys: pytest.CaptureFixture[str],
    make_out: Callable[[Path], Path],
    message: str,
) -> None:
    out = make_out(tmp_path)
    assert main([str(optimizer_logs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("padam-report: error: ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err
    # The file in the way is left as it was, and nothing was created.
    assert [p.read_text() for p in tmp_path.iterdir() if p.is_file()] == ["mine"]


def _file(path: Path) -> Path:
    path.write_text("mine")
    return path


def test_an_output_file_that_cannot_be_written_is_one_line(
    tmp_path: Path, optimizer_logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A folder where results.md goes: only the writing finds out (was IsADirectoryError).
    out = tmp_path / "out"
    (out / "results.md").mkdir(parents=True)
    assert main([str(optimizer_logs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"padam-report: error: cannot write {out / 'results.md'}: Is a directory\n"


def test_an_unwritable_out_parent_is_refused_up_front(
    tmp_path: Path,
    optimizer_logs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # os.access stands in for a read-only folder: these tests may run as root, which writes
    # anywhere.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    assert main([str(optimizer_logs), "--out", str(locked / "report")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"padam-report: error: --out {locked}/report: cannot write into {locked} "
        "(permission denied).\n"
    )
    assert not (locked / "report").exists()


def test_ctrl_c_is_one_line_and_matplotlib_loads_inside_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C while the report starts: the entry point's module imports nothing slow, so the
    # interrupt lands inside main, which says so in one line (exit 130, as shells expect).
    code = "import sys, padam_lightning.experiments.report; print('matplotlib' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "False"

    def interrupted(argv: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "run_report", interrupted)
    assert main(["anything"]) == 130
    err = capsys.readouterr().err
    assert err == "padam-report: stopped by Ctrl-C; its outputs may be incomplete: run it again.\n"
