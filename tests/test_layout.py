"""Imports go one way: the library (forecast/) → the jobs (pipelines/) and the service
(serving/) → the command line (forecast/cli.py, forecast/entry.py, forecast/__main__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = {"forecast/cli.py", "forecast/entry.py", "forecast/__main__.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer(module: str) -> int | None:
    """0 library, 1 jobs and service, 2 command line; None for other packages."""
    if module in ("forecast.cli", "forecast.entry", "forecast.__main__"):
        return 2
    top = module.split(".")[0]
    return {"forecast": 0, "pipelines": 1, "serving": 1}.get(top)


def files() -> list[Path]:
    return sorted(p for d in ("forecast", "pipelines", "serving") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_from_the_library_to_the_jobs_and_service_to_the_cli(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    mine = 2 if rel in CLI else layer(rel.removesuffix(".py").replace("/", "."))
    assert mine is not None
    upward = sorted(m for m in imported_modules(path)
                    if (layer(m) or 0) > mine
                    or (mine == 1 and m.split(".")[0] not in (rel.split("/")[0], "forecast")
                        and layer(m) == 1))
    assert upward == [], f"{rel} imports {upward}, which sit above it"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from forecast.cli import main\n")
    assert "forecast.cli" in imported_modules(bad) and layer("forecast.cli") == 2
