"""Plumbing of the fault-injection matrix (tests/test_fault_matrix.py).

- `Matrix`: the session's results, one per (provider, fault) cell, rendered as a table by
  `table()` and written in pytest's terminal summary by the `fault_matrix` fixture's plugin.
- `Cli`: `deployer` in this process (typer's runner, the same code path as the console script:
  exit codes, messages, `--json` documents), for cells that are not about a killed process.
- `spawn_deploy` / `kill_when`: a real `python -m deployer deploy` subprocess, SIGKILLed the
  moment a condition about the emulator or the state holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cli import CliResult as Run
from tests.support.engine import REPO

SUMMARY_KEY = "summary_section"  # workeroutput key: a (title, text) a pytest-xdist worker hands to the controller

# -- results ----------------------------------------------------------------------------------


@dataclass
class CellResult:
    provider: str
    fault: str
    outcome: str  # "ok" ridden out | "error" clear error | "recovered" killed, then cleaned | "FAILED"
    leaked: int | None  # what the emulators held of ours at the end (None: not measured)
    seconds: float


@dataclass
class Matrix:
    """Rows are faults (id, label), columns providers. `cells` are the (provider, fault) pairs that
    apply; the others show `n/a`, and one that applies but did not run shows `not run`."""

    faults: list[tuple[str, str]]
    providers: list[str]
    cells: set[tuple[str, str]]
    results: dict[tuple[str, str], CellResult] = field(default_factory=dict)

    def add(self, result: CellResult) -> None:
        self.results[(result.provider, result.fault)] = result

    def table(self) -> str:
        """The matrix as fixed-width text, with a totals line (cells tried, resources leaked)."""
        head = ["fault"] + self.providers
        rows = [head]
        for fault, label in self.faults:
            row = [label]
            for provider in self.providers:
                cell = self.results.get((provider, fault))
                if cell is None:
                    row.append("not run" if (provider, fault) in self.cells else "n/a")
                else:
                    leaked = "?" if cell.leaked is None else str(cell.leaked)
                    row.append(f"{cell.outcome}, leaked {leaked}")
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines + ["", self.totals()])

    def totals(self) -> str:
        done = list(self.results.values())
        by = {k: sum(1 for r in done if r.outcome == k) for k in ("ok", "error", "recovered", "FAILED")}
        leaked = sum(r.leaked or 0 for r in done)
        unknown = sum(1 for r in done if r.leaked is None)
        seconds = sum(r.seconds for r in done)
        text = (f"cells tried: {len(done)} (ridden out: {by['ok']}, clear error: {by['error']}, "
                f"killed and recovered: {by['recovered']}, failed: {by['FAILED']}); "
                f"resources leaked: {leaked}")
        if unknown:
            text += f" (+{unknown} cell(s) not measured)"
        return text + f"; {seconds:.0f}s in cells"


# -- the CLI in this process ------------------------------------------------------------------


class Cli:
    """`deployer ARGS` in this process, reading os.environ (DEPLOYER_HOME, provider settings)."""

    def __call__(self, *args: str) -> Run:
        from typer.testing import CliRunner

        from deployer.cli import app

        result = CliRunner().invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # the CLI must turn everything into a message; this is a bug
        return Run(args, result.exit_code, result.stdout, result.stderr)

    def ok(self, *args: str) -> Run:
        run = self(*args)
        assert run.code == 0, run
        return run

    def json(self, *args: str) -> Any:
        return self.ok(*args, "--json").json()


def assert_clear_error(run: Run, provider: str, *words: str) -> None:
    """Exit code 1, one message in the provider's terms, no traceback, no internal error."""
    assert run.code == 1, run
    text = run.out + run.err
    assert "Traceback" not in text and "a bug in deployer" not in text and "internal error:" not in run.out, run
    assert f"error: {provider}: " in run.err, run
    for word in words:
        assert word in run.err, f"{word!r} not in the message: {run}"


# -- a deploy to kill -------------------------------------------------------------------------


def spawn_deploy(config: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    """`python -m deployer deploy CONFIG --json` with this process's environment; output to files."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / "deploy.out", "wb")  # noqa: SIM115 - closed with the process
    err = open(log_dir / "deploy.err", "wb")  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, "-m", "deployer", "deploy", str(config), "--json"],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(os.environ), cwd=REPO)
    finally:
        out.close()
        err.close()


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log_dir: Path, *,
              what: str, timeout: float = 30.0) -> None:
    """SIGKILL `proc` as soon as `ready()` holds. Fails when the process ends first or `timeout`
    passes (either means the kill would not land where the cell says)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            output = (log_dir / "deploy.err").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the deploy never reached {what!r} (exit {proc.returncode}):\n{output}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
