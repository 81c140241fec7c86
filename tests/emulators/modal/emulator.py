"""ModalEmulator: the control plane (servicer.py) served by grpclib on 127.0.0.1 in a background
thread, plus the emulated containers (containers.py) of deployed web functions.

Clients select it exactly as Modal's own client tests do: MODAL_SERVER_URL=http://127.0.0.1:PORT
with fake MODAL_TOKEN_ID / MODAL_TOKEN_SECRET (see `env()`). Web URLs are http://127.0.0.1:PORT
of a front door (proxy.py) that routes to the engine once the container has started, as Modal's
web endpoints do; a URL stays the same across redeploys of the app.

`real_engine = True` makes containers run the real vLLM (tests marked `engine`).

`scale_to_zero = True` turns on Modal's autoscaling of web functions with `min_containers` 0:
a container idle for the function's `scaledown_window` (x `time_scale`) stops, the app then lists
no running task, and the next request to the web URL starts a container and waits for it (a cold
start). Off by default: most tests inspect the container a deploy started, and need it to stay.
Faults on demand: `fail_next(rpc, status, message)` (e.g. a rejected deploy, or AppStop answering
NOT_FOUND), `gpu_capacity = False` (containers stay queued: the app never becomes ready); AppStop
on an unknown app is NOT_FOUND by itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from grpclib import Status
from grpclib.server import Server
from modal_proto import api_pb2

from tests.support.engine import free_port

from tests.support.polling import wait_until

from .containers import Container, ContainerSpec
from .proxy import WebProxy
from .servicer import AppRecord, ModalControlPlane

TOKEN = ("ak-emulatortoken000000001", "as-emulatorsecret00000001")


class ModalEmulator:
    def __init__(self, work_dir: Path, *, token: tuple[str, str] = TOKEN, time_scale: float = 0.1,
                 hold_seconds: float = 1.0) -> None:
        self.work_dir = work_dir
        self.hold_seconds = hold_seconds
        self.token = token
        self.time_scale = time_scale
        self.gpu_capacity = True
        self.real_engine: bool | None = None  # containers run the real vLLM when True
        self.scale_to_zero = False  # idle containers stop; requests start them again (see above)
        self._scaler_stop = threading.Event()
        self._scaler: threading.Thread | None = None
        self.port = free_port()
        self.containers: dict[tuple[str, str], Container] = {}
        self.retired: list[Container] = []
        self.proxies: dict[tuple[str, str], WebProxy] = {}
        self._lock = threading.RLock()
        self.control = ModalControlPlane(tokens=token, on_publish=self._publish, on_stop=self._stop_app,
                                         web_url=self._web_url, logs=self._logs, running_tasks=self._running_tasks)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client needs to talk to this emulator instead of Modal."""
        return {"MODAL_SERVER_URL": self.url, "MODAL_TOKEN_ID": self.token[0], "MODAL_TOKEN_SECRET": self.token[1]}

    def start(self) -> ModalEmulator:
        started = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = Server([self.control])
                loop.run_until_complete(self._server.start("127.0.0.1", self.port))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                errors.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._thread = threading.Thread(target=serve, name="modal-emulator", daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        self._scaler = threading.Thread(target=self._scale_down_loop, name="modal-scaledown", daemon=True)
        self._scaler.start()
        return self

    def stop(self) -> None:
        """Stop every container and the server; idempotent."""
        self._scaler_stop.set()
        if self._scaler is not None:
            self._scaler.join(30)
        with self._lock:
            containers = list(self.containers.values()) + self.retired
            self.containers.clear()
        for container in containers:
            container.stop()
        with self._lock:
            proxies = list(self.proxies.values())
            self.proxies.clear()
        for proxy in proxies:
            proxy.close()
        if self._loop is not None and self._server is not None and self._loop.is_running():
            async def close() -> None:
                assert self._server is not None
                self._server.close()
                await self._server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._server = None

    def __enter__(self) -> ModalEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and inspection ------------------------------------------------------------

    def fail_next(self, rpc: str, status: Status, message: str, *, retry_after: float | None = None) -> None:
        self.control.fail_next(rpc, status, message, retry_after=retry_after)

    def answer_late(self, rpc: str, seconds: float = 0.0, *, status: Status | None = None, message: str = "") -> None:
        """The next `rpc` acts, then its answer is held `seconds` (and with `status`, lost: that error
        is answered instead)."""
        self.control.answer_late(rpc, seconds, status=status, message=message)

    def pending_faults(self) -> int:
        return self.control.pending_faults()

    def clear_faults(self) -> None:
        self.control.clear_faults()

    def requests(self, rpc: str) -> list[Any]:
        """Every request message of `rpc` received so far, in order."""
        with self.control.lock:
            return [message for name, message in self.control.requests if name == rpc]

    def rpc_names(self) -> list[str]:
        with self.control.lock:
            return [name for name, _ in self.control.requests]

    def deployed_app(self, name: str, environment: str = "main") -> AppRecord | None:
        with self.control.lock:
            app_id = self.control.deployed.get((environment, name))
            return self.control.apps.get(app_id) if app_id else None

    def functions_of(self, app_id: str) -> dict[str, api_pb2.Function]:
        """tag -> the Function definition last published for the app."""
        with self.control.lock:
            app = self.control.apps[app_id]
            return {tag: self.control.functions[fid].definition for tag, fid in app.function_ids.items()}

    def secret_env(self, name: str, environment: str = "main") -> dict[str, str] | None:
        with self.control.lock:
            found = self.control._named(self.control.secrets, name, environment)
            return dict(found.env_dict) if found else None

    def running(self) -> list[Container]:
        with self._lock:
            return [c for c in self.containers.values() if c.state in ("starting", "running")]

    def container(self, app_id: str, tag: str = "serve") -> Container | None:
        with self._lock:
            return self.containers.get((app_id, tag))

    def holds_nothing(self) -> bool:
        """No deployed app and no live engine (what a full destroy leaves)."""
        with self.control.lock:
            deployed = bool(self.control.deployed)
        with self._lock:
            alive = [c for c in self.containers.values() if c.engine is not None and c.engine.alive()]
        return not deployed and not alive

    def wait_running(self, app_id: str, tag: str = "serve", timeout: float = 60) -> Container:
        ok = wait_until(lambda: (c := self.container(app_id, tag)) is not None and c.state == "running", timeout)
        container = self.container(app_id, tag)
        assert ok and container is not None, f"container {tag} not running: {container and container.events}"
        return container

    # -- callbacks from the servicer ------------------------------------------------------

    def _web_url(self, app_id: str, tag: str) -> str:
        """The web URL of endpoint `tag` of the app: a front door that stays across redeploys."""
        with self._lock:
            proxy = self.proxies.get((app_id, tag))
            if proxy is None:
                def upstream() -> str | None:
                    container = self.container(app_id, tag)
                    return container.ready_url() if container else None

                proxy = self.proxies[(app_id, tag)] = WebProxy(
                    free_port(), upstream, hold_seconds=self.hold_seconds, demand=lambda: self._demand(app_id, tag))
        return proxy.url

    # -- autoscaling (scale_to_zero) ------------------------------------------------------

    def _demand(self, app_id: str, tag: str) -> bool:
        """A request found no ready container: start one if the last one scaled down. True while
        one is starting (the front door then holds the request)."""
        if not self.scale_to_zero:
            return False
        with self._lock:
            current = self.containers.get((app_id, tag))
            if current is None:
                return False
            if current.state in ("pending", "starting"):
                return current.state == "starting"
            with self.control.lock:
                app = self.control.apps.get(app_id)
                deployed = app is not None and app.state == api_pb2.APP_STATE_DEPLOYED
            if current.state != "stopped" or not deployed or not self.gpu_capacity:
                return False
            container = Container(current.spec, current.log_dir, time_scale=self.time_scale,
                                  real_engine=self.real_engine)
            self.containers[(app_id, tag)] = container
            self.retired.append(current)
        container._event("cold start: a request arrived with no container running")
        container.start()
        return True

    def _scale_down_loop(self) -> None:
        """Stop containers idle for their scaledown_window (x time_scale) above min_containers."""
        while not self._scaler_stop.wait(0.05):
            if not self.scale_to_zero:
                continue
            now = time.monotonic()
            idle = []
            with self._lock:
                for key, container in self.containers.items():
                    proxy = self.proxies.get(key)
                    if container.state != "running" or container.spec.min_containers or proxy is None:
                        continue
                    since = max(proxy.idle_since, container.running_since or now)
                    if proxy.active == 0 and now - since > container.spec.scaledown_window_s * self.time_scale:
                        idle.append(container)
            for container in idle:
                container.stop()
                container._event("scaled down: idle for the scale-down window")

    def _running_tasks(self, app_id: str) -> int:
        with self._lock:
            return sum(1 for (aid, _), c in self.containers.items() if aid == app_id and c.state == "running")

    def _publish(self, app: AppRecord) -> None:
        """Start (or keep, when unchanged) one container per web endpoint of the deployed app."""
        for spec in self._container_specs(app):
            with self._lock:
                current = self.containers.get((app.app_id, spec.tag))
                if current is not None and current.spec.definition_key == spec.definition_key \
                        and current.state in ("pending", "starting", "running"):
                    continue
                container = Container(spec, self.work_dir / "containers" / app.app_id, time_scale=self.time_scale,
                                      real_engine=self.real_engine)
                container.log_dir.mkdir(parents=True, exist_ok=True)
                self.containers[(app.app_id, spec.tag)] = container
            if current is not None:
                current.stop()
                self.retired.append(current)
            if self.gpu_capacity:
                container.start()
            else:
                container._event("queued: no GPU capacity")

    def _container_specs(self, app: AppRecord) -> list[ContainerSpec]:
        specs = []
        for tag, fn in self.functions_of(app.app_id).items():
            endpoints = [tag] if fn.webhook_config.type == api_pb2.WEBHOOK_TYPE_WEB_SERVER else []
            endpoints += [name for name, m in fn.method_definitions.items()
                          if m.webhook_config.type == api_pb2.WEBHOOK_TYPE_WEB_SERVER]
            if not endpoints:
                continue
            env = self.control.image_env(fn.image_id)
            with self.control.lock:
                for sid in fn.secret_ids:
                    env |= self.control.secrets[sid].env_dict
            files = self.control.source_files(list(fn.mount_ids))
            source = files.get(f"/root/{fn.module_name}.py", "")
            snapshot = fn.checkpointing_enabled and fn.experimental_options.get("enable_gpu_snapshot") == "True"
            with self.control.lock:
                key = app.definition_keys[tag]
            scaling = fn.autoscaler_settings
            window = float(scaling.scaledown_window or fn.task_idle_timeout_secs or 60)
            warm = scaling.min_containers or fn.warm_pool_size
            for endpoint in endpoints:
                specs.append(ContainerSpec(app.app_id, endpoint, source, env, snapshot, key, files=files,
                                           scaledown_window_s=window, min_containers=warm))
        return specs

    def _stop_app(self, app: AppRecord) -> None:
        with self._lock:
            mine = [k for k in self.containers if k[0] == app.app_id]
            stopping = [self.containers.pop(k) for k in mine]
            self.retired += stopping
            for (aid, _), proxy in self.proxies.items():
                if aid == app.app_id:
                    proxy.stopped = True
        for container in stopping:
            container.stop()

    def _logs(self, app_id: str) -> list[tuple[float, str]]:
        """(timestamp, line) of every container the app has had, oldest first."""
        with self._lock:
            containers = [c for (aid, _), c in self.containers.items() if aid == app_id]
            containers += [c for c in self.retired if c.spec.app_id == app_id]
        entries = [entry for container in containers for entry in container.log_entries()]
        return sorted(entries, key=lambda e: e[0])

    def queued(self, app_id: str) -> list[Container]:
        with self._lock:
            return [c for (aid, _), c in self.containers.items() if aid == app_id and c.state == "pending"]
