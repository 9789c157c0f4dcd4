"""mypy passes on the installed package graph, so a type mismatch across gpupack.* packages fails CI.

setuptools maps folders to packages (exporter/ -> gpupack.exporter, ...) through the editable
install's import hook, which mypy cannot follow: it would treat every cross-package import as
missing. So the test lays the installed layout out as symlinks and points mypy at it; the settings
live in pyproject.toml's [tool.mypy].
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"

pytest.importorskip("mypy", reason="mypy comes with the test extra: pip install -e '.[test]'")


def installed_layout(root: Path) -> dict[Path, Path]:
    """Symlinks under ``root`` that mirror the installed packages; returns link -> real folder."""
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    links: dict[Path, Path] = {}
    top = root / "gpupack"
    top.mkdir(parents=True)
    for entry in (REPO / package_dir.pop("gpupack")).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in package_dir.items():
        link = root.joinpath(*package.split("."))
        link.symlink_to(REPO / folder)
        links[link] = REPO / folder
    links[top] = REPO / "gpupack"
    return links


def test_mypy_finds_no_errors_in_the_installed_package_graph(tmp_path: Path) -> None:
    links = installed_layout(tmp_path / "layout")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(tmp_path / "cache"),
         "-p", "gpupack"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "MYPYPATH": str(tmp_path / "layout")},
    )
    report = result.stdout + result.stderr
    for link, real in links.items():  # name the files a developer edits, not the symlinks
        report = report.replace(f"{link}{os.sep}", f"{real.relative_to(REPO)}{os.sep}")
    assert result.returncode == 0, report
    assert "Success: no issues found" in result.stdout, report
