"""Shared fixtures: a tiny CPU training configuration, built once per test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def tiny_fit_args(tmp_path: Path) -> list[str]:
    """Arguments for a ``padam-fit fit`` run of a few CPU seconds, logging under ``tmp_path``."""
    return [
        "fit",
        "--config",
        str(CONFIGS / "wrn.yaml"),
        "--config",
        str(CONFIGS / "tiny.yaml"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "logs"),
        "--trainer.logger.init_args.name",
        "run",
    ]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide pytest's own arguments from LightningCLI, which warns when it sees two sets."""
    monkeypatch.setattr("sys.argv", ["padam-fit"])
