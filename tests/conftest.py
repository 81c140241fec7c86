"""Fixtures shared by the whole suite: an isolated DEPLOYER_HOME, the tiny model, the CLI runner.

Engine tests (marker `engine`) start the real vLLM. In CI (CI=true) such a test may not skip:
a missing engine is a failure there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import CliResult
from tests.support.engine import REPO, tiny_model as _build_tiny_model


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The project's tiny random-weight model (built once per machine under .cache/)."""
    return _build_tiny_model()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh DEPLOYER_HOME for this test (also set in os.environ for in-process code)."""
    path = tmp_path / "deployer-home"
    monkeypatch.setenv("DEPLOYER_HOME", str(path))
    return path


@pytest.fixture
def cli(home: Path):
    """Run `python -m deployer ARGS` as a real subprocess with this test's DEPLOYER_HOME."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        full_env = {**os.environ, "DEPLOYER_HOME": str(home), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "deployer", *args], capture_output=True, text=True,
            env=full_env, cwd=REPO, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        return CliResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """In CI (CI=true) an engine test that skips is reported as failed."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and item.get_closest_marker("engine") and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"an engine test may not skip in CI: {report.longrepr}"
