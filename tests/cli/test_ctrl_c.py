"""Ctrl-C or SIGTERM outside the training loop: one line, exit status 130 or 143, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from test_robustness import stop_line, tiny_cli_args

import padam_lightning.cli
import padam_lightning.cli.padam_cli as padam_cli
from padam_lightning.cli import CTRL_C_EXIT_STATUS, main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_entry_point_imports_nothing_heavy() -> None:
    # Ctrl-C while torch and Lightning load must reach main's handler: the console script's own
    # import (padam_lightning.cli) runs before it, so it must not import them.
    code = (
        "import sys, padam_lightning.cli, padam_lightning; "
        "print(sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _interrupted(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt  # as Ctrl-C raises it wherever the interpreter is


def test_ctrl_c_while_importing_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(padam_lightning.cli.importlib, "import_module", _interrupted)
    # As in a fresh process: no subcommand begun, no run from an earlier test.
    monkeypatch.setattr(padam_cli, "subcommand_started", False)
    monkeypatch.setattr(padam_cli, "_running", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "wrn.yaml")])
    assert exit_info.value.code == CTRL_C_EXIT_STATUS == 130
    err = capsys.readouterr().err
    assert err.strip() == "padam-fit: stopped by Ctrl-C before the run started."


def _terminated(*args: Any, **kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # as a cluster's scheduler stops a job


@pytest.mark.parametrize(
    ("stop", "line", "status"),
    [(_interrupted, "Ctrl-C", 130), (_terminated, "SIGTERM", 143)],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stop_while_parsing_or_building_the_run_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stop: Callable[..., None],
    line: str,
    status: int,
) -> None:
    monkeypatch.setattr(padam_cli, "build_cli", stop)
    # As in a fresh process: no subcommand begun, no run from an earlier test.
    monkeypatch.setattr(padam_cli, "subcommand_started", False)
    monkeypatch.setattr(padam_cli, "_running", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "wrn.yaml")])
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    # Nothing has trained yet: the seconds of parsing, data and model set-up come first.
    assert err.strip() == f"padam-fit: stopped by {line} before the run started."
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handed back


class InterruptAtTrainStart(L.Callback):
    """Raise KeyboardInterrupt as Ctrl-C does before padam-fit's own handler took it over."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_that_lightning_catches_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callback = f"--trainer.callbacks+={__name__}.InterruptAtTrainStart"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_cli_args(tmp_path, "run", callback, configs=CONFIGS)])
    assert exit_info.value.code == 130  # Lightning itself exits 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert stop_line(err) == (
        "padam-fit: stopped by Ctrl-C before the run's first checkpoint; start it again."
    )
    assert not list(tmp_path.rglob("*.ckpt"))


class _SignalIn(L.Callback):
    """Send this process ``SIGNAL`` in the hook ``HOOK``, before training starts."""

    SIGNAL, HOOK = signal.SIGTERM, "setup"

    def __init__(self) -> None:
        self.sent = False
        setattr(self, self.HOOK, self._send)

    def _send(self, *args: Any, **kwargs: Any) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.SIGNAL)


class SigtermInSetup(_SignalIn):
    """Before Lightning has a SIGTERM handler (data module setup, restore)."""


class Sigusr1InSetup(_SignalIn):
    """SIGUSR1 (SLURM's notice) before any handler of Lightning's or the RunRecord's."""

    SIGNAL = signal.SIGUSR1


class SigtermAtFitStart(_SignalIn):
    HOOK = "on_fit_start"


class Sigusr1AtTrainStart(_SignalIn):
    """After Lightning's handler, before the first batch."""

    SIGNAL, HOOK = signal.SIGUSR1, "on_train_start"


@pytest.mark.parametrize(
    ("callback", "name", "status"),
    [
        (SigtermInSetup, "SIGTERM", 143),
        (Sigusr1InSetup, "SIGUSR1", 138),
        (SigtermAtFitStart, "SIGTERM", 143),
        (Sigusr1AtTrainStart, "SIGUSR1", 138),
    ],
)
def test_a_stop_signal_while_the_fit_starts_stops_it_at_its_first_batch_boundary(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    callback: type[L.Callback],
    name: str,
    status: int,
) -> None:
    # Never a silent death (SIGTERM's or SIGUSR1's default action): a graceful stop, saved.
    hook = f"--trainer.callbacks+={__name__}.{callback.__name__}"
    args = tiny_cli_args(tmp_path, "run", hook, "--trainer.num_sanity_val_steps", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--trainer.max_epochs", "1"])
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = stop_line(err)
    assert line.startswith(f"padam-fit: stopped by {name}")
    assert "step 1)" in line or "step 0)" in line, line
    assert (tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handed back


@pytest.mark.parametrize(("callback", "status"), [(SigtermInSetup, 143), (Sigusr1InSetup, 138)])
def test_a_stop_signal_in_an_evaluation_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], callback: type[L.Callback], status: int
) -> None:
    hook = f"--trainer.callbacks+={__name__}.{callback.__name__}"
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *tiny_cli_args(tmp_path, "run", hook)])
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip().splitlines()[-1]
        == f"padam-fit: stopped by {signal.Signals(status - 128).name}."
    )
