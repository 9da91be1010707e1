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
