"""The fault-injection matrix: every provider x every fault, run the same way, printed as a table.

Each cell deploys one deployment (`fm`) against the provider's emulator with one fault injected,
then asserts:
  (a) a clear error (exit 1, `error: <provider>: ...` in the provider's terms, no traceback), or
      success where the fault is transient and retried;
  (b) a consistent state: `list --json` and `status --json` name the same rows; whatever the
      provider bills for the deployment is recorded in the state, or else `gc` lists it as an
      orphan; status calls a row a ghost exactly when the provider bills nothing under its name;
  (c) after `deployer destroy fm` (and `deployer gc --yes` where the state lost the resource) the
      emulator holds nothing of ours: the cell's "leaked" count, which must be 0.
Cells about a killed deploy SIGKILL a real `python -m deployer deploy` subprocess at a step chosen
through the emulators' slow-answer knobs; the others run the CLI in this process.

Emulators are the providers' own fixtures (tests/emulators/*), at their accelerated clocks, with
the stub engine. `pytest -q tests/test_fault_matrix.py` prints the table at the end.
"""

from __future__ import annotations

import copy
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpclib import Status

from deployer.provider import resource_name
from tests.emulators.lambda_cloud.fixture import RATE_INTERVAL, start_testbed
from tests.emulators.lambda_cloud.server import WINDOW
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 - provides `modal_emulator`
from tests.emulators.runpod.fixture import start_runpod, tiny_spec  # noqa: F401 - `start_runpod` is a fixture
from tests.support.engine import tiny_model
from tests.support.matrix import (
    SUMMARY_KEY,
    CellResult,
    Cli,
    Matrix,
    assert_clear_error,
    kill_when,
    spawn_deploy,
)

NAME = "fm"
PROVIDERS = ["runpod", "lambda", "modal", "local"]
FAULTS = [
    ("storm-create", "5xx + 429 storm on create"),
    ("storm-get", "5xx + 429 storm on get"),
    ("storm-delete", "5xx + 429 storm on delete, one answer lost"),
    ("outage-create", "5xx on create outlasting retries"),
    ("lost-create", "create acted, answer lost (5xx)"),
    ("late-create", "create acted, answer late / timed out"),
    ("capacity", "no capacity"),
    ("crash-loop", "crash-looping worker"),
    ("unhealthy", "unhealthy VM"),
    ("never-ready", "readiness never reached"),
    ("delete-fails", "delete fails, then destroy again"),
    ("delete-lags", "delete lags"),
    ("kill-create", "SIGKILL: create in flight"),
    ("kill-ready", "SIGKILL: created, before ready"),
    ("kill-update", "SIGKILL: during an update"),
    ("kill-switch", "SIGKILL: during a provider switch"),
]
SWITCH_FROM = {"runpod": "modal", "lambda": "runpod", "modal": "runpod", "local": "runpod"}
HOLD = 5.0  # seconds an emulator holds an answer the killed deploy waits for
OUTAGE = 40  # failures in a row: more than any client retries
LAG = 0.5  # seconds a deleted resource stays (or a delete's answer takes)
MATRIX_TITLE = "fault matrix (provider x fault: outcome, resources leaked)"


# -- the matrix -------------------------------------------------------------------------------


class _MatrixReport:
    """Writes the table in pytest's terminal summary (registered by the `fault_matrix` fixture).
    In a pytest-xdist worker, whose summary nobody sees, it hands the table to the controller
    instead (`workeroutput`), which prints it (tests/conftest.py)."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.matrix.results and hasattr(session.config, "workeroutput"):
            session.config.workeroutput[SUMMARY_KEY] = (MATRIX_TITLE, self.matrix.table())

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.matrix.results:
            terminalreporter.write_sep("=", MATRIX_TITLE)
            terminalreporter.write_line(self.matrix.table())


@pytest.fixture(scope="session")
def fault_matrix(request: pytest.FixtureRequest) -> Matrix:
    matrix = Matrix(FAULTS, PROVIDERS, {(p, f) for f, _ in FAULTS for p in PROVIDERS if BEDS[p].supports(f)})
    request.config.pluginmanager.register(_MatrixReport(matrix), "fault-matrix-report")
    return matrix


# -- beds: one provider's emulator with its fault knobs -----------------------------------------
#
# A bed knows: the spec of `fm` on its provider, what the emulator bills for a deployment
# (`billable`, as (kind, id) pairs the state and `gc` use too), everything of ours it still holds
# (`held`), the faults it supports (`fault_<id>` methods return the words the error must carry, or
# None where the fault is ridden out) and the knobs the killed cells need.


class Bed:
    provider = ""
    kills: tuple[str, ...] = ()  # the SIGKILL cells it supports
    short_wait = 1  # readiness_timeout of cells that must give up waiting
    waits: dict[str, int] = {}  # a longer one for some faults

    @classmethod
    def supports(cls, fault: str) -> bool:
        return fault in cls.kills or hasattr(cls, "fault_" + fault.replace("-", "_"))

    def spec(self, name: str, *, readiness: int = 60) -> dict[str, Any]:
        raise NotImplementedError

    def billable(self, name: str) -> set[tuple[str, str]]:
        """What bills for deployment `name`, as the (kind, id) pairs state and `gc` use."""
        raise NotImplementedError

    def held(self) -> list[str]:
        """Everything of ours the emulator still holds or runs (empty: nothing leaked)."""
        raise NotImplementedError

    def pending(self) -> int:
        """Injected faults not used up (0 once a storm has blown over)."""
        return 0

    def heal(self) -> None:
        """End an outage: forget the faults not used up."""

    def settle(self) -> None:
        """After a SIGKILL: wait until the dead process's calls no longer count against limits."""

    # knobs of the SIGKILL cells

    def never_ready(self) -> None:
        """Engines start and never answer (the deploy stays in its readiness wait)."""
        raise NotImplementedError

    def hold_create(self) -> None:
        """The next create acts, then its answer is held for HOLD seconds."""
        raise NotImplementedError

    def changed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """`spec` with a change the provider applies as an update."""
        raise NotImplementedError

    def hold_update(self, name: str) -> Callable[[], bool]:
        """Hold the answer to the update's write; returns whether the provider has applied it."""
        raise NotImplementedError


class RunPodBed(Bed):
    provider = "runpod"
    kills = ("kill-create", "kill-ready", "kill-update", "kill-switch")
    waits = {"crash-loop": 30}

    def __init__(self, cell: Cell) -> None:
        start = cell.request.getfixturevalue("start_runpod")
        self.emu = start(openai_wait_s=0.5, cold_start_s=0.05, engine_startup_s=0.0)
        self.monkeypatch = cell.monkeypatch
        self.monkeypatch.setenv("DEPLOYER_RUNPOD_BACKOFF", "0.01")
        self.monkeypatch.setenv("DEPLOYER_RUNPOD_LOG_IDLE", "0.1")

    def spec(self, name: str, *, readiness: int = 60) -> dict[str, Any]:
        return tiny_spec(name=name, startup={"readiness_timeout": readiness}).model_dump(mode="json")

    def billable(self, name: str) -> set[tuple[str, str]]:
        return {("endpoint", e["id"]) for e in self.emu.endpoints() if e["name"] == resource_name(name)}

    def held(self) -> list[str]:
        return self.emu.leftovers()

    def pending(self) -> int:
        return sum(max(rule.count, 0) for rule in self.emu.faults.rules)

    def heal(self) -> None:
        with self.emu.faults.lock:
            self.emu.faults.rules.clear()

    # faults: RunPod's REST v2 answers problem+json; POST /serverless is the create
    def fault_storm_create(self) -> None:
        self.emu.faults.fail(503, count=2, method="POST", path=r"^/v2/serverless$")
        self.emu.faults.fail(429, count=1, method="POST", path=r"^/v2/serverless$", retry_after=0)

    def fault_storm_get(self) -> None:
        self.emu.faults.fail(503, count=2, method="GET")
        self.emu.faults.fail(429, count=2, method="GET", retry_after=0)

    def fault_storm_delete(self) -> None:
        self.emu.faults.fail(502, method="DELETE", after_acting=True)  # deleted; the retry meets a 404
        self.emu.faults.fail(503, count=2, method="DELETE")
        self.emu.faults.fail(429, count=1, method="PATCH", retry_after=0)

    def fault_outage_create(self) -> list[str]:
        self.emu.faults.fail(503, count=OUTAGE, method="POST", path=r"^/v2/serverless$")
        return ["POST /v2/serverless: RunPod failed (503"]

    def fault_lost_create(self) -> None:
        self.emu.faults.fail(502, method="POST", path=r"^/v2/serverless$", after_acting=True)

    def fault_late_create(self) -> None:
        self.monkeypatch.setenv("DEPLOYER_RUNPOD_TIMEOUT", "0.5")
        self.emu.faults.slow(1.5, method="POST", path=r"^/v2/serverless$")

    def fault_capacity(self) -> list[str]:
        self.emu.faults.no_capacity = True
        return ["no capacity", "throttled"]

    def fault_crash_loop(self) -> list[str]:
        self.emu.faults.crash = True
        return ["crash-looping", "crashing on purpose"]

    def fault_never_ready(self) -> list[str]:
        self.never_ready()
        return ["not ready after", "initializing"]

    def fault_delete_fails(self) -> list[str]:
        self.emu.faults.fail(500, count=OUTAGE, method="DELETE")
        return ["RunPod failed (500"]

    def fault_delete_lags(self) -> None:
        self.emu.faults.linger_delete_s = LAG

    # knobs of the killed cells
    def never_ready(self) -> None:
        self.emu.cluster.timing.engine_startup_s = 600

    def hold_create(self) -> None:
        self.emu.faults.slow(HOLD, method="POST", path=r"^/v2/serverless$")

    def changed(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        spec["scaling"]["idle_timeout"] = 120
        return spec

    def hold_update(self, name: str) -> Callable[[], bool]:
        self.emu.faults.slow(HOLD, method="PATCH")
        return lambda: any(e["workers"].get("idleTimeout") == 120 for e in self.emu.endpoints()
                           if e["name"] == resource_name(name))


class LambdaBed(Bed):
    provider = "lambda"
    kills = ("kill-create", "kill-ready", "kill-update", "kill-switch")

    def __init__(self, cell: Cell) -> None:
        self.testbed = start_testbed(cell.tmp_path / "lambda", cell.monkeypatch)
        self.emu, self.cloud = self.testbed.emulator, self.testbed.cloud
        self.cloud.engine_env["STUB_ENGINE_STARTUP_S"] = "0"
        self.cloud.speed = 5000.0  # emulated seconds per second: a VM boots in 0.06 s (API pacing unchanged)
        self.monkeypatch = cell.monkeypatch
        self.monkeypatch.setenv("DEPLOYER_LAMBDA_RETRY_BACKOFF", "0.01")
        self.injected_429 = 0
        self._stop = threading.Event()
        cell.request.addfinalizer(self.finish)

    def finish(self) -> None:
        """Stop the emulator; fail on an OpenAPI violation or a 429 the adapter provoked itself."""
        self._stop.set()
        unused_429 = self.emu.pending_faults(status=429)
        self.testbed.emulator.stop()
        assert not self.emu.violations, f"OpenAPI violations: {self.emu.violations}"
        assert self.emu.too_many == self.injected_429 - unused_429, "the adapter provoked a 429"

    def spec(self, name: str, *, readiness: int = 60) -> dict[str, Any]:
        data = self.testbed.spec_data(name)
        data["startup"]["readiness_timeout"] = readiness
        return data

    def _ours(self, name: str) -> list[Any]:
        return [i for i in self.cloud.live()
                if i.name == resource_name(name) or {"key": "deployer-name", "value": name} in i.tags]

    def billable(self, name: str) -> set[tuple[str, str]]:
        return {("instance", i.id) for i in self._ours(name)}

    def held(self) -> list[str]:
        out = [f"instance {i.id} ({i.status})" for i in self.cloud.live()]
        return out + [f"firewall ruleset {r['id']} ({r['name']})" for r in self.cloud.rulesets.values()]

    def pending(self) -> int:
        return self.emu.pending_faults()

    def heal(self) -> None:
        self.injected_429 -= self.emu.pending_faults(status=429)
        self.emu.clear_faults()

    def settle(self) -> None:
        time.sleep(WINDOW * RATE_INTERVAL)  # this process's pacing does not know the dead one's calls

    def _inject(self, method: str, template: str, status: int, *, count: int = 1, after: bool = False) -> None:
        self.emu.inject(method, template, status, count=count, after=after)
        self.injected_429 += count if status == 429 else 0

    # faults: Lambda answers {"error": {"code", "message", "suggestion"}}; launch is the create
    def fault_storm_create(self) -> None:
        self._inject("POST", "/firewall-rulesets", 503)
        self._inject("POST", "/firewall-rulesets", 429)
        self._inject("POST", "/instance-operations/launch", 500)

    def fault_storm_get(self) -> None:
        self._inject("GET", "/instances", 503, count=2)
        self._inject("GET", "/instance-types", 429)
        self._inject("GET", "/instances/{id}", 502)

    def fault_storm_delete(self) -> None:
        self._inject("POST", "/instance-operations/terminate", 503, count=2)
        self._inject("POST", "/instance-operations/terminate", 502, after=True)  # terminating; answer lost
        self._inject("DELETE", "/firewall-rulesets/{id}", 429)

    def fault_outage_create(self) -> list[str]:
        self._inject("POST", "/firewall-rulesets", 503, count=OUTAGE)
        return ["provider/internal-unavailable"]

    def fault_lost_create(self) -> None:
        self._inject("POST", "/instance-operations/launch", 500, after=True)

    def fault_late_create(self) -> None:
        self.monkeypatch.setenv("DEPLOYER_LAMBDA_REQUEST_TIMEOUT", "0.5")
        self.emu.hold("POST", "/instance-operations/launch", 1.5)

    def spec_capacity(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec["providers"]["lambda"] |= {"instance_types": ["gpu_1x_h100_sxm5"], "regions": ["us-south-2"]}
        return spec

    def fault_capacity(self) -> list[str]:
        self.cloud.set_phantom("gpu_1x_h100_sxm5", "us-south-2")  # listed, yet the launch is refused
        return ["no capacity for the deployment", "gpu_1x_h100_sxm5 in us-south-2"]

    def fault_crash_loop(self) -> list[str]:
        self.cloud.engine_env["STUB_ENGINE_EXIT_CODE"] = "3"
        return ["not ready after", "deployer terminated the instance"]

    def fault_unhealthy(self) -> list[str]:
        def sicken() -> None:  # the VM turns unhealthy once it is up
            while not self._stop.wait(0.05):
                active = [i for i in self.cloud.live() if i.status == "active"]
                if active:
                    self.cloud.set_status(active[0].id, "unhealthy")
                    return

        self.never_ready()
        threading.Thread(target=sicken, name="matrix-unhealthy", daemon=True).start()
        return ["unhealthy"]

    def fault_never_ready(self) -> list[str]:
        self.never_ready()
        return ["not ready after", "deployer terminated the instance"]

    def fault_delete_fails(self) -> list[str]:
        self._inject("POST", "/instance-operations/terminate", 500, count=OUTAGE)
        return ["global/internal-error"]

    def fault_delete_lags(self) -> None:
        self.cloud.terminate_seconds = LAG * self.cloud.speed  # emulated seconds

    # knobs of the killed cells
    def never_ready(self) -> None:
        self.cloud.engine_env["STUB_ENGINE_STARTUP_S"] = "600"

    def hold_create(self) -> None:
        self.emu.hold("POST", "/instance-operations/launch", HOLD)

    def changed(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        spec["model"]["max_model_len"] = 128  # new user_data: Lambda replaces the VM
        return spec

    def hold_update(self, name: str) -> Callable[[], bool]:
        before = self.billable(name)
        self.emu.hold("POST", "/instance-operations/launch", HOLD)
        return lambda: bool(self.billable(name) - before)


class ModalBed(Bed):
    provider = "modal"
    kills = ("kill-create", "kill-ready", "kill-update", "kill-switch")
    waits = {"crash-loop": 2}  # long enough for a container to crash and log why

    def __init__(self, cell: Cell) -> None:
        self.emu = cell.request.getfixturevalue("modal_emulator")
        self.monkeypatch = cell.monkeypatch
        self.monkeypatch.setenv("STUB_ENGINE_STARTUP_S", "0")  # containers inherit this process's env

    def spec(self, name: str, *, readiness: int = 60) -> dict[str, Any]:
        return {"name": name, "provider": "modal",
                "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256},
                "resources": {"gpu": "L40S"},
                "scaling": {"min_replicas": 0, "max_replicas": 1, "idle_timeout": 120, "concurrency": 16},
                "startup": {"readiness_timeout": readiness}}

    def billable(self, name: str) -> set[tuple[str, str]]:
        with self.emu.control.lock:
            return {("app", app_id) for (_, app_name), app_id in self.emu.control.deployed.items()
                    if app_name == resource_name(name)}

    def held(self) -> list[str]:
        with self.emu.control.lock:
            out = [f"app {app_id} ({app_name})" for (_, app_name), app_id in self.emu.control.deployed.items()]
            out += [f"secret {s.name}" for s in self.emu.control.secrets.values() if s.name.startswith("dplr-")]
        engines = [c for c in list(self.emu.containers.values()) + self.emu.retired
                   if c.engine is not None and c.engine.alive()]
        return out + [f"engine of {c.spec.app_id}" for c in engines]  # volumes are shared caches: kept

    def pending(self) -> int:
        return self.emu.pending_faults()

    def heal(self) -> None:
        self.emu.clear_faults()

    # faults: Modal is gRPC; its client retries INTERNAL/UNAVAILABLE and waits out a throttle
    # (RESOURCE_EXHAUSTED carrying a retry policy)
    def fault_storm_create(self) -> None:
        self.emu.fail_next("AppCreate", Status.UNAVAILABLE, "upstream connect error")
        self.emu.fail_next("AppCreate", Status.INTERNAL, "upstream failure")
        self.emu.fail_next("FunctionCreate", Status.RESOURCE_EXHAUSTED, "rate limited", retry_after=0.1)
        self.emu.fail_next("AppPublish", Status.UNAVAILABLE, "upstream connect error")

    def fault_storm_get(self) -> None:
        self.emu.fail_next("AppGetOrCreate", Status.UNAVAILABLE, "upstream connect error")
        self.emu.fail_next("AppGetLifecycle", Status.INTERNAL, "upstream failure")
        self.emu.fail_next("AppList", Status.RESOURCE_EXHAUSTED, "rate limited", retry_after=0.1)

    def fault_storm_delete(self) -> None:
        self.emu.fail_next("AppStop", Status.UNAVAILABLE, "upstream connect error")
        self.emu.fail_next("AppStop", Status.RESOURCE_EXHAUSTED, "rate limited", retry_after=0.1)
        self.emu.answer_late("AppStop", status=Status.UNAVAILABLE, message="connection reset")  # stopped
        self.emu.fail_next("SecretDelete", Status.INTERNAL, "upstream failure")

    def fault_outage_create(self) -> list[str]:
        for _ in range(OUTAGE):
            self.emu.fail_next("AppPublish", Status.UNAVAILABLE, "upstream connect error")
        return ["deploying the Modal app 'dplr-fm' failed"]

    def fault_lost_create(self) -> None:
        self.emu.answer_late("AppPublish", status=Status.UNAVAILABLE, message="connection reset")

    def fault_late_create(self) -> None:
        self.emu.answer_late("AppPublish", 1.5)

    def fault_capacity(self) -> list[str]:
        self.emu.gpu_capacity = False
        return ["not ready after", "queued: no GPU capacity"]

    def fault_crash_loop(self) -> list[str]:
        self.monkeypatch.setenv("STUB_ENGINE_EXIT_CODE", "3")  # containers inherit this process's env
        return ["not ready after", "exited with code 3"]

    def fault_never_ready(self) -> list[str]:
        self.never_ready()
        return ["not ready after", "stays deployed"]

    def fault_delete_fails(self) -> list[str]:
        for _ in range(OUTAGE):
            self.emu.fail_next("AppStop", Status.INTERNAL, "upstream failure")
        return ["stopping the Modal app", "failed"]

    def fault_delete_lags(self) -> None:
        self.emu.answer_late("AppStop", LAG)

    # knobs of the killed cells
    def never_ready(self) -> None:
        self.monkeypatch.setenv("STUB_ENGINE_STARTUP_S", "600")

    def hold_create(self) -> None:
        self.emu.answer_late("AppPublish", HOLD)

    def changed(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        spec["scaling"]["concurrency"] = 8
        return spec

    def hold_update(self, name: str) -> Callable[[], bool]:
        self.emu.answer_late("AppPublish", HOLD)
        return lambda: (app := self.emu.deployed_app(resource_name(name))) is not None and app.version == 2


class LocalBed(Bed):
    """The local provider runs the real vLLM: only the cells that never wait for it to answer."""

    provider = "local"
    kills = ("kill-ready", "kill-switch")

    def __init__(self, cell: Cell) -> None:
        self.home = cell.home
        cell.request.addfinalizer(self.finish)

    def finish(self) -> None:
        for pid in self._processes():  # a failed cell must not leave a vLLM behind
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def spec(self, name: str, *, readiness: int = 60) -> dict[str, Any]:
        return {"name": name, "provider": "local",
                "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256,
                          "dtype": "float32", "engine_args": {"enforce-eager": True}},
                "startup": {"readiness_timeout": readiness}}

    def _processes(self, name: str | None = None) -> list[str]:
        """Leaders of process groups started for this state home (and deployment `name`)."""
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                env = dict(e.split(b"=", 1) for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, ValueError, IndexError):
                continue
            if stat[0] == "Z" or int(stat[2]) != int(proc.name):
                continue
            if env.get(b"DEPLOYER_STATE_HOME") == str(self.home).encode() and \
                    (name is None or env.get(b"DEPLOYER_DEPLOYMENT") == name.encode()):
                found.append(proc.name)
        return found

    def billable(self, name: str) -> set[tuple[str, str]]:
        return {("process", pid) for pid in self._processes(name)}

    def held(self) -> list[str]:
        return [f"process {pid}" for pid in self._processes()]

    def never_ready(self) -> None:
        """Nothing to do: the real vLLM needs ~20 s of CPU, longer than these cells wait."""

    def fault_never_ready(self) -> list[str]:
        return ["not ready after"]


# -- one cell ----------------------------------------------------------------------------------


class Cell:
    """The state home, the CLI and the beds of one cell."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.request, self.tmp_path, self.monkeypatch = request, tmp_path, monkeypatch
        self.home = tmp_path / "state"
        self.cli = Cli()
        self.beds: dict[str, Bed] = {}

    def bed(self, provider: str) -> Bed:
        """The provider's bed, started on first use."""
        if provider not in self.beds:
            self.beds[provider] = BEDS[provider](self)
            self.monkeypatch.setenv("DEPLOYER_HOME", str(self.home))  # the fixtures set their own
        return self.beds[provider]

    def write(self, spec: dict[str, Any], tag: str = "") -> Path:
        path = self.tmp_path / f"{spec['name']}-{spec['provider']}{tag}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def deploy(self, spec: dict[str, Any], tag: str = "") -> Any:
        return self.cli("deploy", str(self.write(spec, tag)), "--json")

    def deploy_ok(self, spec: dict[str, Any], tag: str = "") -> None:
        run = self.deploy(spec, tag)
        assert run.code == 0, run
        assert run.json()["status"] == "ready"

    def status_of(self, name: str, provider: str) -> str | None:
        """The status word the state records, read without a lock (the deploy may hold it)."""
        path = self.home / "state.db"
        if not path.exists():
            return None
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT status FROM deployments WHERE name=? AND provider=?", (name, provider)).fetchone()
        except sqlite3.OperationalError:  # the schema is being created
            return None
        finally:
            db.close()
        return row[0] if row else None

    def killed_deploy(self, spec: dict[str, Any], when: Callable[[], bool], what: str, tag: str = "") -> None:
        """Run `deploy` in a subprocess and SIGKILL it once `when()` holds."""
        log_dir = self.tmp_path / f"killed-{spec['provider']}{tag}"
        proc = spawn_deploy(self.write(spec, tag), log_dir)
        kill_when(proc, when, log_dir, what=what)
        for bed in self.beds.values():
            bed.settle()

    # (b) consistency

    def check_consistent(self, name: str) -> list[dict[str, Any]]:
        """State and emulators agree (see the module docstring); returns the status rows."""
        listed = [r for r in self.cli.json("list") if r["name"] == name]
        rows = self.cli.json("status", name) if listed else []
        assert sorted((r["provider"], r["status"]) for r in listed) == \
            sorted((r["provider"], r["recorded"]) for r in rows), (listed, rows)
        for provider, bed in self.beds.items():
            billable = bed.billable(name)
            row = next((r for r in rows if r["provider"] == provider), None)
            recorded = {(r["kind"], r["id"]) for r in row["resources"]} if row else set()
            if billable - recorded:  # the state lost it: gc must find it
                report = self.cli.json("gc", "--provider", provider)
                found = {(o["kind"], o["id"]) for o in report["orphans"] if o["deployment"] in (name, None)}
                found |= {(x["kind"], x["id"]) for g in report["ghosts"] for x in g.get("left", [])}
                assert billable - recorded <= found, \
                    f"{provider} bills {billable - recorded - found}, unknown to the state and to gc: {row} {report}"
            if row is not None and row["ghost"]:
                assert not billable, f"status calls {name} on {provider} a ghost, yet {billable} bill under its name"
            elif row is not None:
                assert billable, f"status says {row['state']} on {provider}, and it holds nothing billable"
        return rows

    # (c) cleanup

    def destroy_clean(self, name: str) -> None:
        run = self.cli("destroy", name, "--json")
        assert run.code == 0, run
        self.assert_nothing_left(name)

    def assert_nothing_left(self, name: str) -> None:
        assert [r for r in self.cli.json("list") if r["name"] == name] == []
        for provider, bed in self.beds.items():
            assert bed.held() == [], f"{provider} still holds {bed.held()}"

    def leaked(self) -> int:
        return sum(len(bed.held()) for bed in self.beds.values())


# -- scenarios: what a cell does, by fault -------------------------------------------------------


def ride_out(cell: Cell, bed: Bed, fault: str) -> str:
    """A transient fault on the way up: the deploy succeeds with exactly one resource."""
    getattr(bed, "fault_" + fault.replace("-", "_"))()
    cell.deploy_ok(bed.spec(NAME))
    assert len(bed.billable(NAME)) == 1, f"one deploy made {bed.billable(NAME)}"
    cell.check_consistent(NAME)
    cell.destroy_clean(NAME)
    assert bed.pending() == 0, "the injected faults were not all met"
    return "ok"


def fail_clearly(cell: Cell, bed: Bed, fault: str) -> str:
    """A fault the deploy cannot ride out: a clear error, a consistent state, destroy cleans."""
    words = getattr(bed, "fault_" + fault.replace("-", "_"))()
    spec = bed.spec(NAME, readiness=bed.waits.get(fault, bed.short_wait))
    adapt = getattr(bed, "spec_" + fault.replace("-", "_"), None)
    run = cell.deploy(adapt(spec) if adapt else spec)
    assert_clear_error(run, bed.provider, *words)
    assert len(bed.billable(NAME)) <= 1
    if fault == "outage-create":
        assert bed.pending() > 0, "the outage must outlast the retries"
        bed.heal()
    assert bed.pending() == 0
    cell.check_consistent(NAME)
    cell.destroy_clean(NAME)
    return "error"


def destroy_under_fault(cell: Cell, bed: Bed, fault: str) -> str:
    """A fault on the way down: ridden out, or a clear error with the state kept for the next destroy."""
    cell.deploy_ok(bed.spec(NAME))
    words = getattr(bed, "fault_" + fault.replace("-", "_"))()
    run = cell.cli("destroy", NAME, "--json")
    outcome = "ok"
    if words is not None:  # the delete keeps failing: say so, keep the record, finish next time
        assert_clear_error(run, bed.provider, *words)
        bed.heal()
        rows = cell.check_consistent(NAME)
        assert [r["provider"] for r in rows] == [bed.provider], "a failed destroy keeps the record"
        run = cell.cli("destroy", NAME, "--json")
        outcome = "error"
    assert run.code == 0, run
    assert run.json()["destroyed"] == [bed.provider]
    cell.assert_nothing_left(NAME)
    assert bed.pending() == 0
    return outcome


def kill_create(cell: Cell, bed: Bed, fault: str) -> str:
    """Killed while the create is in flight: the provider made it, the state never learnt its id.
    `gc --yes` finds it by name or tag and removes it; `destroy` then forgets the rest."""
    bed.hold_create()
    cell.killed_deploy(bed.spec(NAME), lambda: bool(bed.billable(NAME)), "the provider created it")
    cell.check_consistent(NAME)
    cell.cli.json("gc", "--provider", bed.provider, "--yes")
    assert bed.billable(NAME) == set(), "gc --yes left what the state lost"
    cell.destroy_clean(NAME)
    return "recovered"


def kill_ready(cell: Cell, bed: Bed, fault: str) -> str:
    """Killed while waiting for readiness: the resource is recorded, destroy removes it."""
    bed.never_ready()
    cell.killed_deploy(bed.spec(NAME), lambda: cell.status_of(NAME, bed.provider) == "starting",
                       "waiting for readiness")
    rows = cell.check_consistent(NAME)
    assert rows and rows[0]["resources"], "the resource is recorded before readiness"
    cell.destroy_clean(NAME)
    return "recovered"


def kill_update(cell: Cell, bed: Bed, fault: str) -> str:
    """Killed while an update is in flight: the next deploy resumes without a second resource."""
    spec = bed.spec(NAME)
    cell.deploy_ok(spec)
    changed = bed.changed(spec)
    cell.killed_deploy(changed, bed.hold_update(NAME), "the provider applied the update", tag="-v2")
    cell.check_consistent(NAME)
    run = cell.deploy(changed, tag="-v2")
    assert run.code == 0, run
    assert len(bed.billable(NAME)) == 1, f"the resumed update left {bed.billable(NAME)}"
    cell.destroy_clean(NAME)
    return "recovered"


def kill_switch(cell: Cell, bed: Bed, fault: str) -> str:
    """Killed while moving to this provider: the old deployment stays up, both are recorded,
    and one destroy removes both."""
    old = cell.bed(SWITCH_FROM[bed.provider])
    cell.deploy_ok(old.spec(NAME))
    bed.never_ready()
    cell.killed_deploy(bed.spec(NAME), lambda: cell.status_of(NAME, bed.provider) == "starting",
                       "the new provider's resource recorded")
    rows = cell.check_consistent(NAME)
    assert {r["provider"]: r["recorded"] for r in rows} == {old.provider: "ready", bed.provider: "starting"}
    assert old.billable(NAME), "the old deployment must stay up"
    run = cell.cli("destroy", NAME, "--json")
    assert run.code == 0 and sorted(run.json()["destroyed"]) == sorted([old.provider, bed.provider]), run
    cell.assert_nothing_left(NAME)
    return "recovered"


SCENARIOS: dict[str, Callable[[Cell, Bed, str], str]] = {
    "storm-create": ride_out, "storm-get": ride_out, "lost-create": ride_out, "late-create": ride_out,
    "outage-create": fail_clearly, "capacity": fail_clearly, "crash-loop": fail_clearly,
    "unhealthy": fail_clearly, "never-ready": fail_clearly,
    "storm-delete": destroy_under_fault, "delete-lags": destroy_under_fault, "delete-fails": destroy_under_fault,
    "kill-create": kill_create, "kill-ready": kill_ready, "kill-update": kill_update, "kill-switch": kill_switch,
}
BEDS: dict[str, type[Bed]] = {"runpod": RunPodBed, "lambda": LambdaBed, "modal": ModalBed, "local": LocalBed}
CELLS = [pytest.param(p, f, id=f"{p}-{f}") for f, _ in FAULTS for p in PROVIDERS if BEDS[p].supports(f)]


@pytest.mark.parametrize("provider, fault", CELLS)
def test_cell(provider: str, fault: str, fault_matrix: Matrix, request: pytest.FixtureRequest,
              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    cell = Cell(request, tmp_path, monkeypatch)
    outcome, leaked = "FAILED", None
    try:
        bed = cell.bed(provider)
        outcome = SCENARIOS[fault](cell, bed, fault)
    finally:
        try:
            leaked = cell.leaked()
        finally:
            fault_matrix.add(CellResult(provider, fault, outcome, leaked, time.monotonic() - started))
    assert leaked == 0
