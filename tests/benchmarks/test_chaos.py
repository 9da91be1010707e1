"""A handful of benchmarks/chaos.py's chosen stops: each stopped and resumed run is bit-exact.

Every trial is a real ``padam-fit fit`` stopped at one moment (from inside the run, by
``benchmarks/_chaos_child.py``) and resumed with ``--ckpt_path last`` until it finishes; its final
``last.ckpt`` (weights, optimizer, lr scheduler) and its TensorBoard points must equal those of
one uninterrupted run, shared by the module. ``make chaos`` runs every moment with every kind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import chaos
from _chaos_compare import compare_curves, first_difference

pytestmark = pytest.mark.slow  # separate padam-fit processes: about 45 s of CPU

#: (moment, kind): a graceful stop, a crash and a Trainer limit, a few seconds of CPU each. A kill
#: right after a save is tests/cli/test_robustness.py's, one before finished.json
#: tests/training/test_run_record.py's; make chaos runs every moment with every kind.
CHOSEN = [
    ("val-first", "SIGINT"),  # Ctrl-C during validation: a graceful stop
    ("during-save", "SIGKILL"),  # killed half-way through writing last.ckpt
    ("max-time", "max_time"),  # --trainer.max_time stops, resumed with a larger one
]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], chaos.Reference]:
    return {(): chaos.run_reference(tmp_path_factory.mktemp("chaos-reference"))}


@pytest.mark.parametrize(("moment", "kind"), CHOSEN)
def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(
    moment: str,
    kind: str,
    references: dict[tuple[str, ...], chaos.Reference],
    tmp_path: Path,
) -> None:
    result = chaos.run_trial(chaos.chosen_trial(moment, kind), tmp_path, references)
    report = chaos.format_row(result)
    assert result.reached, f"the stop never happened:\n{report}"
    assert result.failures() == [], report


def test_checkpoint_entries_are_compared_key_by_key() -> None:
    import torch

    ours = {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}
    same = {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}
    other = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}
    assert first_difference(ours, same) is None
    assert first_difference(ours, other) == "state.0.exp_avg"
    assert first_difference({"lr": 0.1}, {"lr": 0.01}) == "lr (0.1 vs 0.01)"


def test_curves_are_compared_point_by_point() -> None:
    reference = {"val/err": [(3, 0.5), (7, 0.4)], "train/loss": [(0, 2.0)]}
    resumed = {"val/err": [(3, 0.5), (3, 0.5), (7, 0.25)]}
    diff = compare_curves(resumed, reference)
    assert diff.lost == [("train/loss", 0)]
    assert diff.extra == [("val/err", 3)]
    assert diff.duplicated == [("val/err", 3)]
    assert diff.changed == [("val/err", 7)]
    assert compare_curves(reference, reference).ok
