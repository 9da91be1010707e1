"""padam-fit's measured run-time estimate on the CPU: the rule, the arithmetic and the message."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from torch import nn

from padam_lightning import Padam
from padam_lightning.cli import build_cli, main
from padam_lightning.training import run_estimate
from padam_lightning.training.run_estimate import RunTimeEstimate, format_duration

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.4, "0 s"), (45, "45 s"), (89, "89 s"), (90, "2 min"), (38 * 60, "38 min"),
     (5399, "90 min"), (5400, "1.5 hours"), (9.94 * 3600, "9.9 hours"), (127 * 3600, "127 hours")],
)  # fmt: skip
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


class _Module(nn.Module):
    """Stands in for the LightningModule: an ``arch`` and 1,000,000 + 1,000 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.hparams = {"arch": "wrn16_4"}
        self.layer = nn.Linear(1000, 1000)


def _trainer(**overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "num_training_batches": 391,
        "num_val_batches": [100],
        "check_val_every_n_epoch": 1,
        "global_step": 22,
        "max_epochs": 200,
        "max_steps": -1,
    }
    settings.update(overrides)
    return SimpleNamespace(**settings)


def _estimate(step_times: list[float], eval_times: list[float], steps_seen: int) -> RunTimeEstimate:
    callback = RunTimeEstimate()
    callback._step_times = step_times
    callback._eval_times = eval_times
    callback._steps_seen = steps_seen
    return callback


def test_gpu_sized_run_gets_epoch_and_run_times_and_the_cpu_alternative() -> None:
    # Median step 2 s over [1, 2, 30] (an outlier does not move it); eval batches 0.5 s.
    # Epoch: 391 * 2 + 100 * 0.5 = 832 s = 13.9 min. Run: 200 epochs of 391 steps, 22 done:
    # 78178 steps * 2 s + 78178 / 391 * 50 s = 166352.6 s = 46.2 hours.
    callback = _estimate([1.0, 2.0, 30.0], [0.4, 0.5, 0.6], steps_seen=22)
    message = callback.describe(_trainer(), _Module())  # type: ignore[arg-type]
    assert message is not None
    assert message.startswith("padam-fit: training wrn16_4 (1.00M parameters) for 200 epochs")
    assert "2.00 s per step (median of 3 steps)" in message
    assert "an epoch (391 steps and 100 evaluation batches) takes ~14 min" in message
    assert "the run ~46 hours" in message
    assert "sized for a GPU" in message and "make fit-cpu" in message
    assert "--config configs/cpu.yaml" in message


def test_untimed_evaluation_and_a_resumed_run_are_said() -> None:
    # No sanity-check batches timed: training steps only. 100 steps done before this process
    # saw its 10: the remaining run, (200 * 391 - 100) steps * 0.1 s = 7810 s = 2.2 hours.
    callback = _estimate([0.1] * 5, [], steps_seen=10)
    message = callback.describe(_trainer(global_step=100), _Module())  # type: ignore[arg-type]
    assert message is not None
    assert "an epoch (391 steps) takes ~39 s" in message
    assert "the remaining run ~2.2 hours (training steps only" in message


def test_short_runs_get_no_message_and_medium_ones_no_advice() -> None:
    module: Any = _Module()
    # 2 epochs * 391 steps * 0.1 s = 78 s < 120 s: nothing.
    assert _estimate([0.1] * 5, [], 22).describe(_trainer(max_epochs=2), module) is None
    # max_steps caps the run below max_epochs: 1000 steps * 0.1 s = 100 s.
    assert _estimate([0.1] * 5, [], 22).describe(_trainer(max_steps=1000), module) is None
    # 10 epochs * (391 * 0.2 + 100 * 0.05) s = 832 s: the estimate, without the GPU advice.
    message = _estimate([0.2] * 5, [0.05], 22).describe(_trainer(max_epochs=10), module)
    assert message is not None and "the run ~14 min." in message
    assert "GPU" not in message


def test_a_run_no_larger_than_the_cpu_config_is_not_sent_to_it() -> None:
    # 10 epochs of a 79k-parameter network at 1 s per step (a busy CPU): (3910 - 22) s = 65 min, but
    # configs/cpu.yaml is this run, so no advice. Add an epoch and it is larger than that.
    module: Any = _Module()
    module.layer = nn.Linear(78, 1000)  # 79,000 parameters
    message = _estimate([1.0] * 5, [], 22).describe(_trainer(max_epochs=10), module)
    assert message is not None and "~65 min" in message and "GPU" not in message
    message = _estimate([1.0] * 5, [], 22).describe(_trainer(max_epochs=11), module)
    assert message is not None and "sized for a GPU" in message


def _tiny_run(tiny_fit_args: list[str], caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages a tiny padam-fit run logs (rank_zero_info goes through logging)."""
    with caplog.at_level(logging.INFO):
        main(tiny_fit_args)
    return caplog.messages


def test_tiny_cpu_run_prints_no_estimate(
    tiny_fit_args: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    messages = _tiny_run(tiny_fit_args, caplog)
    assert messages, "the run's own messages (e.g. `Trainer.fit` stopped) are captured"
    assert not [message for message in messages if "padam-fit: training" in message]


def test_cpu_run_over_the_thresholds_prints_its_measured_estimate(
    tiny_fit_args: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tiny run counts as long. Its epochs have 3 steps: 2 warm-up steps, 1 timed, so the
    # estimate comes at the end of the first epoch, for the 3 steps left; the evaluation is not
    # timed because tiny.yaml has no sanity check.
    monkeypatch.setattr(run_estimate, "MIN_REPORTED_RUN_S", 0.0)
    monkeypatch.setattr(run_estimate, "GPU_SIZED_RUN_S", 0.0)
    monkeypatch.setattr(run_estimate, "CPU_SCALE_PARAMETERS", 0)
    messages = _tiny_run(tiny_fit_args, caplog)
    lines = [message for message in messages if message.startswith("padam-fit: training")]
    assert len(lines) == 1, messages
    pattern = (
        r"padam-fit: training wrn10_1 \(0\.08M parameters\) for 2 epochs on the CPU: "
        r"\d+\.\d\d s per step \(median of 1 step\), so an epoch \(3 steps\) takes ~\d+ s and "
        r"the run ~\d+ s \(training steps only: the evaluation was not timed\)\. "
        r"This config is sized for a GPU\. For a CPU-scale run use `make fit-cpu`"
    )
    assert re.match(pattern, lines[0]), lines[0]


def test_the_named_cpu_config_is_the_compressed_cpu_scale_run(tmp_path: Path) -> None:
    # configs/cpu.yaml stands alone (no architecture config before it), as the message says.
    cli = build_cli(
        ["--config", str(CONFIGS / "cpu.yaml"), "--trainer.logger.init_args.save_dir",
         str(tmp_path)],
        run=False,
    )  # fmt: skip
    assert cli.model.hparams.arch == "wrn10_1"
    assert cli.trainer.max_epochs == 10
    assert cli.datamodule.batch_size == 128 and cli.datamodule.eval_batch_size == 100
    optimizers = cli.model.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    assert type(optimizer) is Padam
    group = optimizer.param_groups[0]
    assert (group["lr"], group["partial"], group["weight_decay"]) == (0.1, 0.125, 5e-4)
    assert sorted(scheduler.milestones) == [5, 8] and scheduler.gamma == 0.1
