"""Fixtures shared by the whole suite: an isolated DEPLOYER_HOME, the tiny model, the CLI runner.

Engine tests (marker `engine`) start the real vLLM. In CI (CI=true) such a test may not skip:
a missing engine is a failure there.

The suite stands alone: HOME is a fresh temp dir (no user config, token or cache is read), and
every Python process of the run carries the path guard (tests/support/guarded_site): a test
during which any of them opens an existing file outside the repository, the temp dir and the
system fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import CliResult
from tests.support.engine import IN_PROCESS_ENGINE, REPO, tiny_model as _build_tiny_model
from tests.support.guarded_site import path_guard
from tests.support.matrix import SUMMARY_KEY

GUARDED_SITE = Path(path_guard.__file__).parent
# A pytest-xdist worker inherits the controller's environment: it keeps the controller's HOME and
# takes a log of its own (so each test is charged only with its own opens); what no test of the
# worker was charged with goes to the controller's log, which fails the run at its end.
_CONTROLLER_LOG = os.environ.get(path_guard.LOG_ENV) if os.environ.get("PYTEST_XDIST_WORKER") else None
_RUN_DIR = Path(tempfile.mkdtemp(prefix="deployer-suite-"))
PATH_LOG = _RUN_DIR / "opened-outside.log"
if _CONTROLLER_LOG is None:
    os.environ["HOME"] = str(_RUN_DIR / "home")
    (_RUN_DIR / "home").mkdir()
os.environ[path_guard.LOG_ENV] = str(PATH_LOG)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARDED_SITE), os.environ.get("PYTHONPATH")]))
os.environ.update(IN_PROCESS_ENGINE)
path_guard.install_from_env()


class _OutsideOpens:
    """Lines of PATH_LOG not yet reported."""

    def __init__(self) -> None:
        self.offset = 0

    def take(self) -> str:
        if not PATH_LOG.exists():
            return ""
        with open(PATH_LOG, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        return data.decode(errors="replace")


OUTSIDE_OPENS = _OutsideOpens()
_LATE: list[str] = []  # opened by processes that outlived their test: reported at the end of the run


@pytest.fixture(autouse=True)
def _stays_inside_the_repo() -> Iterator[None]:
    late = OUTSIDE_OPENS.take()
    if late:
        _LATE.append(late)
    yield
    opened = OUTSIDE_OPENS.take()
    if opened:
        pytest.fail("the suite must stand alone, but paths outside the repository were opened or listed:\n" + opened,
                    pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Opens outside the repository that no test was charged with still fail the run."""
    late = "".join(_LATE) + OUTSIDE_OPENS.take()
    if late and _CONTROLLER_LOG:
        with open(_CONTROLLER_LOG, "a") as handle:
            handle.write(late)
    elif late:
        session.config.get_terminal_writer().line(
            "FAILED: paths outside the repository were opened or listed between tests:\n" + late, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_WORKER_SUMMARIES: list[tuple[str, str]] = []  # (title, text) sections workers handed over


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """A pytest-xdist worker is done: keep the summary section it handed over (SUMMARY_KEY)."""
    section = getattr(node, "workeroutput", {}).get(SUMMARY_KEY)
    if section:
        _WORKER_SUMMARIES.append(tuple(section))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what workers handed over (a worker's own summary is not shown)."""
    for title, text in _WORKER_SUMMARIES:
        terminalreporter.write_sep("=", title)
        terminalreporter.write_line(text)


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
