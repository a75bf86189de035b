"""``l2o bench`` runs the benchmarks of a source checkout in a subprocess; the library never imports them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from l2o import cli

ROOT = Path(__file__).resolve().parents[1]


def test_bench_finds_the_checkout_next_to_the_package_or_in_the_working_directory(tmp_path):
    assert cli.find_benchmarks() == ROOT  # this editable install
    wheel = tmp_path / "site-packages" / "l2o"  # an installed wheel: no benchmarks beside it
    wheel.mkdir(parents=True)
    assert cli.find_benchmarks(wheel, cwd=tmp_path) is None
    assert cli.find_benchmarks(wheel, cwd=ROOT) == ROOT


def test_bench_runs_the_checkouts_suite_in_a_subprocess(tmp_path, monkeypatch, capfd):
    decoy = tmp_path / "benchmarks"  # another project's package in the working directory does not shadow ours
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the wrong benchmarks package')\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "no_such_benchmark"]) == 2
    err = capfd.readouterr().err
    assert "unknown benchmark(s) ['no_such_benchmark']" in err and "step_overhead" in err


def test_bench_without_a_checkout_says_where_the_benchmarks_live(monkeypatch, capsys):
    monkeypatch.setattr(cli, "find_benchmarks", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "source repository" in err and "python -m benchmarks" in err and "pip install -e ." in err


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_library_never_imports_benchmarks_or_tests():
    """Static, so lazy imports inside functions count too; encoders also never imports l2o."""
    offenders = []
    for package, forbidden in (("l2o", {"benchmarks", "tests"}), ("encoders", {"benchmarks", "tests", "l2o"})):
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = {name for name in _imported_modules(path) if name.split(".")[0] in forbidden}
            offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(bad)]
    assert not offenders, offenders


def test_cli_parser_loads_without_benchmarks(tmp_path):
    code = ("import sys; from l2o.cli import build_parser; build_parser(); "
            "assert 'benchmarks' not in sys.modules, sorted(m for m in sys.modules if 'bench' in m)")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)
