"""The documentation site builds strictly: a broken link fails ``make docs`` (and CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def _build(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict"], cwd=root, capture_output=True, text=True
    )


@pytest.fixture
def site_copy(tmp_path: Path) -> Path:
    if not MKDOCS.is_file():
        pytest.skip("mkdocs is not installed (make install installs it)")
    for name in ("docs", "configs", "benchmarks", "padam_lightning"):
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, tmp_path / name)
    for name in ("mkdocs.yml", "README.md", "Makefile", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def test_the_docs_build_strictly(site_copy: Path) -> None:
    result = _build(site_copy)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("page", "broken"),
    [
        ("docs/resume.md", "[a page](troublesh00ting.md)"),
        ("docs/resume.md", "[a heading](troubleshooting.md#no-such-heading)"),
        ("README.md", "[a file](docs/resum.md)"),
    ],
)
def test_a_broken_link_fails_the_build(site_copy: Path, page: str, broken: str) -> None:
    path = site_copy / page
    path.write_text(path.read_text() + f"\n{broken}\n")
    result = _build(site_copy)
    assert result.returncode != 0, result.stderr
