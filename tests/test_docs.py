"""The documentation builds offline with no warnings, and its results page is generated."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import RESULTS, build

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_is_generated_from_the_committed_benchmark_outputs(tmp_path):
    (tmp_path / "images").mkdir()
    assert build(RESULTS, tmp_path) == (ROOT / "docs" / "results.md").read_text(), (
        "docs/results.md is out of date: run python -m benchmarks.report"
    )


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is part of the dev extra")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()
