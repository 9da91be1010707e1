"""Helpers of benchmarks/fidelity.py: the released Padam, the subset, the acceptance check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity

from padam_lightning.optim import Padam


def test_released_padam_loop_equals_the_package_padam() -> None:
    # Both pipelines' Padam must be the same update, or the comparison measures the optimizer.
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    params = {name: [p.clone().requires_grad_() for p in start] for name in ("released", "pkg")}
    released = fidelity.ReleasedPadam(params["released"], lr=0.1, partial=0.125, weight_decay=5e-4)
    package = Padam(params["pkg"], lr=0.1, partial=0.125, weight_decay=5e-4)
    for _ in range(6):
        grads = [torch.randn_like(p) for p in start]
        for optimizer, group in ((released, params["released"]), (package, params["pkg"])):
            for p, g in zip(group, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for ours, theirs in zip(params["pkg"], params["released"], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_released_padam_calls_the_closure_first() -> None:
    calls: list[int] = []
    p = torch.ones(2, requires_grad=True)
    p.grad = torch.ones(2)

    def closure() -> float:
        calls.append(1)
        return 3.0

    result = fidelity.ReleasedPadam([p]).step(closure)
    assert calls == [1] and result == 3.0


def test_subset_folder_is_a_fixed_subset(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for split, count in (("train", 6), ("test", 2)):
        for cls in ("a", "b"):
            folder = source / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.jpg").write_bytes(b"x")
    first = fidelity.subset_folder(source, 5, tmp_path / "w1")
    again = fidelity.subset_folder(source, 5, tmp_path / "w2")
    names = sorted(str(p.relative_to(first)) for p in first.glob("train/*/*"))
    assert len(names) == 5
    assert names == sorted(str(p.relative_to(again)) for p in again.glob("train/*/*"))
    assert len(list(first.glob("test/*/*"))) == 4  # the whole test split
    assert fidelity.subset_folder(source, 12, tmp_path / "w3") == source


def _run(pipeline: str, seed: int, test_err: list[float]) -> dict[str, Any]:
    rows = [
        {"epoch": e + 1, **{q: 1.0 for q in fidelity.QUANTITIES}, "test_err": err}
        for e, err in enumerate(test_err)
    ]
    return {"pipeline": pipeline, "optimizer": "padam", "seed": seed, "epochs": rows}


def test_report_flags_epochs_outside_the_released_seed_range() -> None:
    runs = [
        _run("released", 0, [0.50, 0.40]),
        _run("released", 1, [0.54, 0.42]),
        _run("package", 0, [0.51, 0.44]),
        _run("package", 1, [0.53, 0.46]),  # epoch 2 mean 0.45 > 0.42
    ]
    tables, failures, significant = fidelity.report_tables(runs)
    assert failures == ["padam epoch 2 test_err"]
    # t = (0.45 - 0.41) / (sqrt((0.0002 + 0.0002) / 2) * 1) = 2.83 < 4.30: not significant
    assert significant == []
    assert (
        "| 1 | test_err | 52.00% [50.00%, 54.00%] (2) | 52.00% [51.00%, 53.00%] (2) | yes | +0.00 |"
        in (tables)
    )
    assert "| 1 | test_loss | 1.0000 [1.0000, 1.0000] (2) |" in tables  # losses stay plain
    assert fidelity.within([0.5], [0.5, 0.6]) and not fidelity.within([0.61], [0.5, 0.6])


def test_t_statistic_against_a_hand_computed_value() -> None:
    # means 2 and 5; squared deviations 0.25 + 0.25 + 1 + 1 = 2.5 over 2 df: pooled sd
    # sqrt(1.25); standard error sqrt(1.25) * sqrt(1/2 + 1/2).
    t = fidelity.t_statistic([1.5, 2.5], [4.0, 6.0])
    assert t == pytest.approx(-3 / 1.25**0.5)
    assert fidelity.t_critical([1.0, 2.0], [3.0, 4.0]) == pytest.approx(4.303)
    assert fidelity.t_statistic([1.0], [2.0, 3.0]) is None
