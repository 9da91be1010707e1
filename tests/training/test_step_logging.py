"""What TensorBoard shows: every curve on one axis, the global step.

Per-step values sit at their step; an epoch's values at its last step, with Lightning's ``epoch``
beside them. One axis is what makes a resume exact: TensorBoard's ``purge_step`` drops the points
a stopped attempt wrote past its checkpoint, for every tag at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from padam_lightning.cli import main
from padam_lightning.experiments.run_logs import epoch_curves, read_scalars

EPOCH_LEVEL = ("train/loss", "train/err", "val/loss", "val/err", "optim/lr", "optim/partial")


def test_epoch_curves_are_at_the_epochs_last_step_and_the_step_loss_at_global_steps(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    # The tiny config: 2 epochs of 3 steps of 16 images, log_every_n_steps 1.
    main(tiny_fit_args)
    run_dir = tmp_path / "logs" / "run" / "version_0"
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()

    def steps(tag: str) -> list[int]:
        return [event.step for event in accumulator.Scalars(tag)]

    for tag in EPOCH_LEVEL:
        assert steps(tag) == [2, 5], tag  # the last step of each 3-step epoch
    assert steps("train/loss_step") == [0, 1, 2, 3, 4, 5]  # the global step
    # Equal batches: an epoch's mean loss is the mean of its steps' losses.
    step_losses = [event.value for event in accumulator.Scalars("train/loss_step")]
    epoch_losses = [event.value for event in accumulator.Scalars("train/loss")]
    for epoch, logged in enumerate(epoch_losses):
        assert logged == pytest.approx(sum(step_losses[3 * epoch : 3 * epoch + 3]) / 3, rel=1e-5)
    # padam-report's reader numbers them as epochs completed, 1 and 2, and leaves the per-step
    # loss out of the epoch curves.
    curves = epoch_curves(read_scalars(run_dir))
    assert all(curves[tag].epochs == (1, 2) for tag in EPOCH_LEVEL)
    assert "train/loss_step" not in curves


def test_the_step_loss_follows_log_every_n_steps(tiny_fit_args: list[str], tmp_path: Path) -> None:
    main([*tiny_fit_args, "--trainer.log_every_n_steps", "2", "--trainer.max_epochs", "1"])
    accumulator = EventAccumulator(str(tmp_path / "logs" / "run" / "version_0"))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("train/loss_step")] == [1]


def test_the_epoch_card_never_runs_back(tiny_fit_args: list[str], tmp_path: Path) -> None:
    # Lightning adds `epoch` to every logging call; all of them are on the global-step axis.
    main(tiny_fit_args)
    accumulator = EventAccumulator(str(tmp_path / "logs" / "run" / "version_0"))
    accumulator.Reload()
    points = [(event.step, event.value) for event in accumulator.Scalars("epoch")]
    assert points == sorted(points)
    assert {step: value for step, value in points} == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1}


def test_curves_validated_every_other_epoch_are_read_at_their_epochs(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    # Validation after epochs 2 and 4 only: its points are read at those epochs.
    main([*tiny_fit_args, "--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "2"])
    curves = epoch_curves(read_scalars(tmp_path / "logs" / "run" / "version_0"))
    assert curves["val/err"].epochs == (2, 4)
    assert curves["train/loss"].epochs == (1, 2, 3, 4)
