"""Emulated Modal containers for deployed web functions: the vLLM command comes from the app file.

The control plane never runs user code; it learns what a container runs the way Modal's
workers do, from what the client uploaded: the app file arrives through MountPutFile, and its
literal `VLLM_COMMAND` is read with `ast` (a missing or non-literal command fails the
container, as a broken app would). Environment = the image's ENV layers, then the secrets'
env dicts (Modal's order). Every uploaded file of the function's mounts (the app file, files the
image adds with add_local_file) is laid out under the container's own root directory, and
PYTHONPATH's absolute entries resolve there, so vLLM imports only what the app shipped. The
engine is `tests.support.engine.launch_vllm`, bound to the web function's port, so the web URL
answers exactly what vLLM answers.

Snapshot functions (checkpointing_enabled with enable_gpu_snapshot) go through the lifecycle
Modal drives for the class: start, /health, one warm-up completion, POST /sleep?level=1,
"snapshot", POST /wake_up, each with the key as the app sends it; a 404 there means the app forgot
VLLM_SERVER_DEV_MODE=1 or --enable-sleep-mode, and the container fails.
"""

from __future__ import annotations

import ast
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.engine import EngineProcess, free_port, launch_vllm

MAX_RESTARTS = 3


class ContainerError(Exception):
    """The container could not start what the app describes."""


def vllm_command_from_source(source: str) -> list[str]:
    """The literal list assigned to VLLM_COMMAND at the module level of `source`."""
    tree = ast.parse(source)
    for node in tree.body:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
        if "VLLM_COMMAND" in names:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise ContainerError("VLLM_COMMAND is not a literal list") from None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ContainerError("VLLM_COMMAND is not a list of strings")
            if value[:2] != ["vllm", "serve"] or len(value) < 3:
                raise ContainerError(f"VLLM_COMMAND does not start with `vllm serve MODEL`: {value[:3]}")
            return value
    raise ContainerError("the app file assigns no VLLM_COMMAND")


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@dataclass
class ContainerSpec:
    """What one web function's containers run (resolved by the servicer at publish time)."""

    app_id: str
    tag: str
    source: str
    env: dict[str, str]
    snapshot: bool
    definition_key: bytes  # equal keys: an unchanged redeploy keeps the running container
    files: dict[str, str] = field(default_factory=dict)  # mounted files: container path -> text
    scaledown_window_s: float = 60.0  # autoscaler_settings.scaledown_window (Modal's default 60 s)
    min_containers: int = 0  # autoscaler_settings.min_containers: kept up even when idle


@dataclass
class Container:
    spec: ContainerSpec
    log_dir: Path
    time_scale: float = 1.0
    real_engine: bool | None = None  # None: DEPLOYER_TEST_ENGINE decides (default: the stub)
    events: list[str] = field(default_factory=list)
    state: str = "pending"  # pending | starting | running | failed | stopped
    engine: EngineProcess | None = None
    starts: int = 0
    running_since: float | None = None  # time.monotonic() when it last became `running`
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _book: list[tuple[float, str]] = field(default_factory=list)  # (first seen, line)
    _offsets: dict[Path, int] = field(default_factory=dict)
    _book_lock: threading.Lock = field(default_factory=threading.Lock)

    def ready_url(self) -> str | None:
        """The engine's base URL once the container has started (Modal routes only then)."""
        engine = self.engine
        return engine.base_url if self.state == "running" and engine is not None and engine.alive() else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"modal-container-{self.spec.tag}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Terminate the engine and the supervising thread; idempotent, blocks until done."""
        self._stop.set()
        if self.engine is not None:  # first, so a start-up wait in the thread ends now
            self.engine.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.engine is not None:
            self.engine.stop()
        self.state = "stopped"
        self._event("stopped")

    @property
    def root(self) -> Path:
        """The container's filesystem: where its mounted files are."""
        return self.log_dir / f"{self.spec.tag}-root"

    def env(self) -> dict[str, str]:
        """The engine's environment, PYTHONPATH's absolute entries resolved inside `root`."""
        env = dict(self.spec.env)
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = ":".join(str(self.root / p.lstrip("/")) if p.startswith("/") else p
                                         for p in env["PYTHONPATH"].split(":"))
        return env

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{self.spec.tag}-*.log")))

    def log_entries(self) -> list[tuple[float, str]]:
        """(timestamp, line) of the container's events and engine output. Engine lines are stamped
        with their file's modification time when first read, so a stamp never changes."""
        with self._book_lock:
            for path in sorted(self.log_dir.glob(f"{self.spec.tag}-*.log")):
                data = path.read_bytes()
                start = self._offsets.get(path, 0)
                end = data.rfind(b"\n") + 1
                if end > start:
                    written = path.stat().st_mtime  # no later than the lines were written
                    self._book += [(written, line) for line in data[start:end].decode(errors="replace").splitlines()]
                    self._offsets[path] = end
            return list(self._book)

    def _event(self, text: str) -> None:
        self.events.append(text)
        with self._book_lock:
            self._book.append((time.time(), f"[modal] {text}"))

    # -- supervision ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            command = vllm_command_from_source(self.spec.source)
        except (ContainerError, SyntaxError) as exc:
            self._fail(f"cannot start: {exc}")
            return
        for path, text in self.spec.files.items():
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        while not self._stop.is_set() and self.starts <= MAX_RESTARTS:
            self.starts += 1
            self.state = "starting"
            log = self.log_dir / f"{self.spec.tag}-{self.starts}.log"
            self.engine = launch_vllm(command[2:], port=free_port(), env=self.env(), log_path=log,
                                      real=self.real_engine)
            self._event(f"start {self.starts}")
            try:
                if self.spec.snapshot:
                    self._snapshot_lifecycle(command)
                self.state = "running"
                self.running_since = time.monotonic()
                self._event("running")
                while not self._stop.wait(0.2):
                    self.log_entries()
                    if not self.engine.alive():
                        raise ContainerError(f"vLLM exited with code {self.engine.proc.returncode}")
                return
            except ContainerError as exc:
                self.engine.stop()
                self._event(f"failed: {exc}")
                if self._stop.wait(min(5.0, 0.5 * self.starts) * self.time_scale):
                    return
        if not self._stop.is_set():
            self._fail(f"gave up after {self.starts} starts")

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self._event(f"failed: {reason}")

    def _snapshot_lifecycle(self, command: list[str]) -> None:
        assert self.engine is not None
        if not self.engine.wait_healthy(timeout=300 if self.engine.real else 60):
            if not self.engine.alive():
                raise ContainerError(f"vLLM exited with code {self.engine.proc.returncode} before the snapshot")
            raise ContainerError("vLLM never answered /health before the snapshot")
        base = self.engine.base_url
        key = self.spec.env.get("VLLM_API_KEY", "")
        served = _flag(command, "--served-model-name") or command[2]
        with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            warm = http.post("/v1/completions", json={"model": served, "prompt": "Hello", "max_tokens": 4})
            if warm.status_code != 200:
                raise ContainerError(f"warm-up completion answered {warm.status_code}: {warm.text[:200]}")
            for path in ("/sleep?level=1", "/wake_up"):
                answer = http.post(path)
                if answer.status_code != 200:
                    raise ContainerError(f"POST {path} answered {answer.status_code} (sleep mode needs "
                                         "VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode)")
                self._event(f"{path.split('?')[0].strip('/')} ok")
        self._event("snapshot restored")
