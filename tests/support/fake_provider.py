"""A provider for core tests: its "cloud" is a JSON file, its servers are stub engines.

The cloud file survives a killed process, so tests can crash a deploy at a chosen step and check
what the next `destroy` finds. Knobs (attributes): `apply_delay` (seconds between create and
return), `kill_after_create` (SIGKILL this process right after the cloud has the resource, before
`record`), `kill_after_record` (SIGKILL right after `record`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from deployer.provider import (
    Artifacts, Deployment, Endpoint, Owned, Recorder, Request, Secrets, StatusReport, deployment_of, resource_name,
)
from deployer.errors import ProviderError
from deployer.keys import existing_key
from deployer.settings import Settings
from deployer.spec import Spec
from deployer.vllm_command import serve_argv
from tests.support.engine import launch_vllm


class FakeCloud:
    """Servers by id in a JSON file: {id: {"name", "pid", "port"}}. Every write is atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, data: dict[str, dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


class FakeProvider:
    name = "local"

    def __init__(self, cloud: FakeCloud, log_dir: Path) -> None:
        self.cloud = cloud
        self.log_dir = log_dir
        self.apply_delay = 0.0
        self.kill_after_create = False
        self.kill_after_record = False
        self.creates = 0
        self.broken = False  # the endpoint never answers
        self.colds = 0  # make_cold calls

    def render(self, spec: Spec, secrets: Secrets) -> Artifacts:
        body = {"name": resource_name(spec.name), "argv": serve_argv(spec, api_key=secrets.api_key)}
        return Artifacts(requests=[Request("POST", "fake://cloud/servers", body)])

    def _find(self, name: str) -> tuple[str, dict] | None:
        return next(((i, s) for i, s in self.cloud.load().items() if s["name"] == resource_name(name)), None)

    def apply(self, spec: Spec, secrets: Secrets, current: Deployment | None, record: Recorder) -> Endpoint:
        argv = serve_argv(spec, api_key=secrets.api_key)
        digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()
        found = self._find(spec.name)  # a create whose response was lost is found again by name
        if found is not None and found[1]["argv_sha"] != digest:  # new settings: replace the server
            self.destroy(Deployment(name=spec.name, provider=self.name, spec=None))
            found = None
        if found is None:
            engine = launch_vllm(argv, log_path=self.log_dir / f"{spec.name}.log")
            data = self.cloud.load()
            server_id = f"srv-{engine.proc.pid}"
            data[server_id] = {"name": resource_name(spec.name), "pid": engine.proc.pid, "port": engine.port,
                               "argv_sha": digest}
            self.cloud.save(data)
            self.creates += 1
            found = (server_id, data[server_id])
            if self.kill_after_create:
                os.kill(os.getpid(), signal.SIGKILL)
        server_id, server = found
        record("server", server_id, port=server["port"])
        if self.kill_after_record:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.apply_delay)
        port = 9 if self.broken else server["port"]  # port 9 (discard) has no listener here
        return Endpoint(url=f"http://127.0.0.1:{port}/v1", api_key=secrets.api_key, model=spec.model.served)

    def probe(self, deployment: Deployment) -> str | None:
        return None

    def not_ready(self, deployment: Deployment, reason: str) -> str:
        return "fake diagnosis"

    def readiness_timeout(self, spec: Spec) -> float:
        return 30.0

    def probe_timeout(self) -> float:
        return 5.0

    def client_key(self, deployment: Deployment) -> str | None:
        return existing_key(deployment.spec, Settings())

    def status(self, deployment: Deployment) -> StatusReport:
        return StatusReport("ready" if self._find(deployment.name) else "gone")

    def destroy(self, deployment: Deployment) -> None:
        """Removes the recorded servers and any found by the deployment's name."""
        data = self.cloud.load()
        recorded = {r.id for r in deployment.resources if r.kind == "server"}
        for server_id, server in list(data.items()):
            if server_id in recorded or server["name"] == resource_name(deployment.name):
                _kill(server["pid"])
                del data[server_id]
        self.cloud.save(data)

    def list_owned(self) -> list[Owned]:
        return [Owned(self.name, "server", i, deployment_of(s["name"])) for i, s in self.cloud.load().items()]

    def logs(self, deployment: Deployment, follow: bool = False) -> Iterator[str]:
        yield from ()

    def has_credentials(self) -> bool:
        return True

    def make_cold(self, deployment: Deployment, record: Recorder, timeout: float) -> str:
        """Like a backend that cannot start on demand: stop the server, start it again on the same
        port (new id, recorded), return at once. Raises ProviderError when the cloud has none."""
        found = self._find(deployment.name)
        if found is None or deployment.spec is None:
            raise ProviderError(self.name, f"no server of {deployment.name} in the fake cloud")
        old_id, server = found
        _kill(server["pid"])
        argv = serve_argv(deployment.spec, api_key=existing_key(deployment.spec, Settings()))
        engine = launch_vllm(argv, port=server["port"], log_path=self.log_dir / f"{deployment.name}.log")
        data = self.cloud.load()
        del data[old_id]
        new_id = f"srv-{engine.proc.pid}"
        data[new_id] = {**server, "pid": engine.proc.pid}
        self.cloud.save(data)
        record("server", new_id, port=server["port"])
        self.colds += 1
        return f"restarted fake server {old_id} as {new_id}"


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
        time.sleep(0.05)
