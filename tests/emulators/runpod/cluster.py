"""The emulated serverless platform behind both planes: endpoints, their job queues and workers.

Lifecycle of a worker (as RunPod reports it in `GET /v2/serverless/{id}/workers`):
THROTTLED (waiting for a GPU in the endpoint's pools) -> INITIALIZING (a cold start: image pull,
then the worker starts vLLM from the endpoint's env; shorter with FlashBoot once the endpoint
has booted before) -> IDLE <-> RUNNING (taking up to MAX_CONCURRENCY jobs) -> gone after
idleTimeout idle seconds while above workers.min. An engine that exits makes the worker
UNHEALTHY, and it restarts it after a back-off: a crash loop.

The autoscaler (queue-delay scaler) starts a worker when jobs wait and none is up, another when
the oldest job has waited longer than queueDelay, never above workers.max, never below
workers.min. Clock knobs (`time_scale` on idleTimeout/queueDelay, cold start seconds) keep tests fast.
"""

from __future__ import annotations

import datetime
import itertools
import json
import secrets as _secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.engine import EngineProcess, launch_vllm

from . import worker_env
from .catalog import CUDA_VERSIONS

THROTTLED, INITIALIZING, IDLE, RUNNING, UNHEALTHY = "THROTTLED", "INITIALIZING", "IDLE", "RUNNING", "UNHEALTHY"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
TICK = 0.05
HOST_CUDA = CUDA_VERSIONS  # what the emulated hosts run


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(length: int = 12) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(_secrets.choice(alphabet) for _ in range(length))


@dataclass
class Timing:
    cold_start_s: float = 0.2
    flashboot_cold_start_s: float = 0.05
    time_scale: float = 1.0  # multiplies idleTimeout and queueDelay
    crash_backoff_s: float = 0.3
    engine_startup_s: float = 0.2  # the stub engine's own start delay
    real_engine: bool | None = None


class LogBook:
    """A worker's log: (ts, source, line) entries; readers wait on `cond` for more."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str]] = []
        self.cond = threading.Condition()
        self.closed = False

    def add(self, source: str, line: str) -> None:
        with self.cond:
            self.entries.append((now_iso(), source, line))
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@dataclass(eq=False)
class Job:
    id: str
    input: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    output: list[Any] | None = None
    error: str | None = None
    worker_id: str | None = None
    chunks: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    streamed: int = 0  # chunks already handed out by /stream

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            out["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished is not None and self.started is not None:
            out["executionTime"] = int((self.finished - self.started) * 1000)
        if self.worker_id:
            out["workerId"] = self.worker_id
        if self.output is not None:
            out["output"] = self.output
        if self.error is not None:
            out["error"] = self.error
        return out


class Worker:
    """One emulated worker; its thread runs the lifecycle until `terminate`."""

    def __init__(self, cluster: Cluster, endpoint: EndpointState) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.id = new_id(14)
        self.version = endpoint.version
        self.status = INITIALIZING
        self.log = LogBook()
        self.gpu_type: str | None = None
        self.data_center: str | None = None
        self.started_at: str | None = None
        self.started_mono: float | None = None
        self.idle_since = time.monotonic()
        self.active = 0
        self.concurrency = 30  # MAX_CONCURRENCY, read at boot
        self.engine: EngineProcess | None = None
        self.stop = threading.Event()
        self.hard = False
        self.gone = threading.Event()
        self._log_offset = 0
        self.thread = threading.Thread(target=self._run, name=f"runpod-worker-{self.id}", daemon=True)

    # -- control ----------------------------------------------------------------------------

    def terminate(self, *, hard: bool = False) -> None:
        """Scale-down (after running jobs finish) or, with `hard`, at once (endpoint deleted)."""
        self.hard = self.hard or hard
        self.stop.set()

    def view(self) -> dict[str, Any]:
        uptime = int(time.monotonic() - self.started_mono) if self.started_mono else None
        return {
            "id": self.id, "status": self.status, "isStale": self.version != self.endpoint.version,
            "version": self.version, "gpuCount": self.endpoint.gpu_count, "image": self.endpoint.body.get("image"),
            "uptimeSeconds": uptime, "gpuTypeId": self.gpu_type, "dataCenterId": self.data_center,
            "startedAt": self.started_at,
        }

    def _set(self, status: str) -> None:
        with self.cluster.lock:
            if status != self.status and status in (IDLE, UNHEALTHY, THROTTLED):
                self.idle_since = time.monotonic()
            self.status = status

    # -- lifecycle --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self._place():
                    continue
                if not self._boot():
                    continue
                self._serve()
        except Exception as exc:  # noqa: BLE001 - a bug in the emulator must show in the worker log
            self.log.add("system", f"emulator error: {exc!r}")
            self._set(UNHEALTHY)
        finally:
            self._stop_engine()
            self.log.add("system", "worker stopped")
            self.log.close()
            self.cluster.worker_gone(self)
            self.gone.set()

    def _place(self) -> bool:
        gpu = self.cluster.capacity_for(self.endpoint)
        if gpu is None:
            if self.status != THROTTLED:
                self._set(THROTTLED)
            self.stop.wait(TICK * 2)
            return False
        if self.gpu_type is None:
            self.gpu_type, self.data_center = gpu
            self.started_at = now_iso()
            self.started_mono = time.monotonic()
            self.log.add("system", f"worker placed on {self.gpu_type} in {self.data_center}")
        return True

    def _boot(self) -> bool:
        timing = self.cluster.timing
        if self.status != UNHEALTHY:
            self._set(INITIALIZING)
        flash = self.endpoint.body.get("flashboot", "OFF") != "OFF" and self.endpoint.booted
        if flash:
            self.log.add("system", "FlashBoot: resuming a saved worker state")
        else:
            self.log.add("system", f"pulling image {self.endpoint.body.get('image')}")
        if self.stop.wait(timing.flashboot_cold_start_s if flash else timing.cold_start_s):
            return False
        env = self.cluster.container_env(self.endpoint)
        try:
            argv = worker_env.vllm_serve_args(env)
            self.concurrency = worker_env.max_concurrency(env)
        except worker_env.WorkerConfigError as exc:
            self.log.add("container", f"ERROR {exc}")
            return self._crashed("the worker stopped at start-up")
        self.log.add("container", "Starting vLLM: vllm serve " + " ".join(argv))
        engine_env = {k: v for k, v in env.items()}
        engine_env["STUB_ENGINE_STARTUP_S"] = str(timing.engine_startup_s)
        if self.cluster.faults.crash:
            engine_env["STUB_ENGINE_EXIT_CODE"] = "1"
        log_path = self.cluster.log_dir / f"{self.endpoint.id}-{self.id}.log"
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        self.engine = launch_vllm(argv, env=engine_env, log_path=log_path, real=timing.real_engine)
        deadline = time.monotonic() + float(env.get("VLLM_STARTUP_TIMEOUT", "1200"))
        while not self.stop.is_set():
            self._pump_log()
            if not self.engine.alive():
                return self._crashed(f"vLLM serve exited during startup with code {self.engine.proc.returncode}")
            if time.monotonic() > deadline:
                return self._crashed("vLLM did not become healthy in time")
            try:
                if httpx.get(self.engine.base_url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            self.stop.wait(0.1)
        else:
            return False
        self.log.add("container", "vLLM is healthy; worker ready for jobs")
        self.endpoint.booted = True
        self._set(IDLE)
        return True

    def _crashed(self, why: str) -> bool:
        self._pump_log()
        self.log.add("container", why)
        self._stop_engine()
        self._set(UNHEALTHY)
        self.stop.wait(self.cluster.timing.crash_backoff_s)
        return False

    def _serve(self) -> None:
        cluster = self.cluster
        while True:
            self._pump_log()
            if self.engine is None or not self.engine.alive():
                self._crashed("vLLM exited while serving")
                return
            with cluster.lock:
                if self.stop.is_set() and (self.hard or self.active == 0):
                    return
                while not self.stop.is_set() and self.active < self.concurrency and self.endpoint.queue:
                    job = self.endpoint.queue.popleft()
                    self.active += 1
                    job.status, job.started, job.worker_id = "IN_PROGRESS", time.monotonic(), self.id
                    threading.Thread(target=self._execute, args=(job,), daemon=True).start()
                self.status = RUNNING if self.active else IDLE
                cluster.cond.wait(TICK)

    def _execute(self, job: Job) -> None:
        try:
            self.cluster.run_job(self, job)
        except Exception as exc:  # noqa: BLE001 - a handler that raises fails its job, as on RunPod
            self.cluster.finish(self.endpoint, job, "FAILED", error=f"{exc.__class__.__name__}: {exc}")
        finally:
            with self.cluster.lock:
                self.active -= 1
                if self.active == 0:
                    self.idle_since = time.monotonic()
                self.cluster.cond.notify_all()

    def _stop_engine(self) -> None:
        if self.engine is not None:
            self.engine.stop(timeout=10)
            self._pump_log()
            self.engine = None

    def _pump_log(self) -> None:
        """Copy new lines of the engine's log file into the worker log (source `container`)."""
        if self.engine is None or not self.engine.log_path.exists():
            return
        with open(self.engine.log_path, "rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        cut = data.rfind(b"\n") + 1
        if cut:
            self._log_offset += cut
            for line in data[:cut].decode(errors="replace").splitlines():
                self.log.add("container", line)


class EndpointState:
    """An endpoint as the platform holds it: its settings (`body`, the Endpoint view minus URLs),
    its configuration version, queue, jobs and workers."""

    def __init__(self, endpoint_id: str, body: dict[str, Any], template_id: str) -> None:
        self.id = endpoint_id
        self.body = body
        self.template_id = template_id
        self.version = 1
        self.queue: deque[Job] = deque()
        self.jobs: dict[str, Job] = {}
        self.workers: list[Worker] = []
        self.counts = {"completed": 0, "failed": 0, "retried": 0}
        self.booted = False
        self.deleted_at: float | None = None
        self.linger_until = 0.0

    @property
    def gpu_count(self) -> int:
        return (self.body.get("gpu") or {}).get("count", 1)

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if not w.stop.is_set()]


class Cluster:
    """All endpoints; `lock` guards every field of every endpoint, worker and job."""

    def __init__(self, *, timing: Timing, log_dir: Path, catalog: list[dict[str, Any]], secrets: dict[str, str],
                 faults: Any) -> None:
        self.timing = timing
        self.log_dir = log_dir
        self.catalog = catalog
        self.secrets = secrets
        self.faults = faults
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.endpoints: dict[str, EndpointState] = {}
        self.all_workers: list[Worker] = []
        self._closing = threading.Event()
        self._scaler = threading.Thread(target=self._scale_loop, name="runpod-scaler", daemon=True)
        self._ids = itertools.count(1)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._scaler.start()

    def close(self) -> None:
        self._closing.set()
        self._scaler.join(5)
        with self.lock:
            workers = list(self.all_workers)
        for worker in workers:
            worker.terminate(hard=True)
        for worker in workers:
            worker.thread.join(20)

    # -- placement and env ------------------------------------------------------------------

    def capacity_for(self, endpoint: EndpointState) -> tuple[str, str] | None:
        """(GPU type, data center) a worker of `endpoint` gets now, or None (no capacity)."""
        if self.faults.no_capacity:
            return None
        gpu = endpoint.body.get("gpu") or {}
        allowed, floor = gpu.get("allowedCudaVersions") or [], gpu.get("minCudaVersion")
        hosts = [v for v in HOST_CUDA if (not allowed or v in allowed) and (not floor or _cuda(v) >= _cuda(floor))]
        if not hosts:
            return None  # no host runs a CUDA version the endpoint accepts
        excluded = {t.strip() for t in gpu.get("excludedTypes") or []}
        for entry in self.catalog:
            if entry.get("pool") in (gpu.get("pools") or []) and entry["id"] not in excluded:
                centers = endpoint.body.get("dataCenterIds") or ["US-TX-3"]
                return entry["id"], centers[0]
        return None

    def container_env(self, endpoint: EndpointState) -> dict[str, str]:
        """The endpoint's env as the container sees it: `{{ RUNPOD_SECRET_x }}` references resolved
        (an unknown secret is left as written; what RunPod does then is unconfirmed)."""
        env = {}
        for key, value in (endpoint.body.get("env") or {}).items():
            for name, secret in self.secrets.items():
                value = value.replace("{{ RUNPOD_SECRET_%s }}" % name, secret)
            env[key] = value
        return env

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, endpoint: EndpointState, payload: dict[str, Any]) -> Job:
        with self.lock:
            job = Job(id=f"{new_id(8)}-{next(self._ids)}-u1", input=payload)
            endpoint.jobs[job.id] = job
            endpoint.queue.append(job)
            self.cond.notify_all()
            return job

    def finish(self, endpoint: EndpointState, job: Job, status: str, *, output: list[Any] | None = None,
               error: str | None = None) -> None:
        with self.lock:
            if job.status in FINAL:
                return
            job.status, job.output, job.error = status, output, error
            job.finished = time.monotonic()
            if status == "COMPLETED":
                endpoint.counts["completed"] += 1
            elif status in ("FAILED", "TIMED_OUT"):
                endpoint.counts["failed"] += 1
            job.done.set()
            self.cond.notify_all()

    def run_job(self, worker: Worker, job: Job) -> None:
        """What worker-vllm's handler does with one job: proxy it to the local vLLM server.

        Input shapes: {"openai_route", "openai_input"} (the platform's OpenAI route; a bare route is
        a GET), {"route", "body", "method"?}, or the shorthand {"prompt"|"messages",
        "sampling_params", "stream"}. A vLLM error status becomes an output item
        {"error": {...}}; the job itself still completes, as on RunPod."""
        endpoint = worker.endpoint
        engine = worker.engine
        try:
            route, method, body = _normalize(job.input)
        except ValueError as exc:
            self.finish(endpoint, job, "COMPLETED", output=[_error(str(exc))])
            return
        if engine is None:
            self.finish(endpoint, job, "COMPLETED", output=[_error("vLLM server process is not running")])
            return
        env = self.container_env(endpoint)
        if isinstance(body, dict) and method != "GET" and "model" not in body:
            body = {**body, "model": worker_env.default_model(env)}
        timeout = min(float(env.get("REQUEST_TIMEOUT", "3600")), endpoint.body.get("timeout", 600000) / 1000)
        stream = isinstance(body, dict) and body.get("stream") is True
        try:
            with httpx.stream(method, engine.base_url + route, json=body, timeout=timeout) as response:
                if response.status_code >= 400:
                    detail = response.read().decode(errors="replace")
                    output = [_error(f"vLLM returned HTTP {response.status_code}: {detail}")]
                elif stream:
                    output = []
                    for text in response.iter_text():
                        with self.lock:
                            job.chunks.append(text)
                            self.cond.notify_all()
                        output.append(text)
                else:
                    output = [json.loads(response.read() or b"null")]
        except httpx.TimeoutException:
            self.finish(endpoint, job, "TIMED_OUT", error="job exceeded the endpoint's execution timeout")
            return
        except httpx.HTTPError as exc:
            output = [_error(f"Request to vLLM failed: {exc}")]
        self.finish(endpoint, job, "COMPLETED", output=output)

    def cancel_jobs(self, endpoint: EndpointState, *, queued_only: bool = False) -> int:
        with self.lock:
            if queued_only:
                jobs = list(endpoint.queue)
            else:
                jobs = [j for j in endpoint.jobs.values() if j.status not in FINAL]
            for job in jobs:
                if job in endpoint.queue:
                    endpoint.queue.remove(job)
                job.status, job.finished = "CANCELLED", time.monotonic()
                job.done.set()
            self.cond.notify_all()
            return len(jobs)

    # -- workers and scaling ----------------------------------------------------------------

    def worker_gone(self, worker: Worker) -> None:
        with self.lock:
            if worker in worker.endpoint.workers:
                worker.endpoint.workers.remove(worker)
            self.cond.notify_all()

    def _start_worker(self, endpoint: EndpointState) -> None:
        worker = Worker(self, endpoint)
        endpoint.workers.append(worker)
        self.all_workers.append(worker)
        worker.thread.start()

    def _scale_loop(self) -> None:
        while not self._closing.wait(TICK):
            with self.lock:
                for endpoint in list(self.endpoints.values()):
                    if endpoint.deleted_at is None:
                        self._scale(endpoint)
                    elif time.monotonic() >= endpoint.linger_until:
                        self.endpoints.pop(endpoint.id, None)

    def _scale(self, endpoint: EndpointState) -> None:
        now = time.monotonic()
        workers = endpoint.body["workers"]
        low, high = workers.get("min", 0), workers.get("max", 3)
        scale = self.timing.time_scale
        for worker in endpoint.live_workers():  # rolling release: replace stale workers when free
            if worker.version != endpoint.version and worker.active == 0:
                worker.terminate()
        live = endpoint.live_workers()
        if len(live) > high:
            order = {THROTTLED: 0, INITIALIZING: 1, UNHEALTHY: 2, IDLE: 3, RUNNING: 4}
            for worker in sorted(live, key=lambda w: order[w.status])[: len(live) - high]:
                worker.terminate(hard=worker.status != RUNNING)
            live = endpoint.live_workers()
        want = low
        if endpoint.queue:
            waited = now - endpoint.queue[0].created
            delay = (endpoint.body.get("scaling") or {}).get("queueDelay", 4) * scale
            if not live:
                want = max(want, 1)
            elif waited > delay and not any(w.status == IDLE for w in live):
                want = max(want, len(live) + 1)
        for _ in range(min(want, high) - len(live)):
            self._start_worker(endpoint)
        live = endpoint.live_workers()
        idle_limit = workers.get("idleTimeout", 5) * scale
        for worker in sorted(live, key=lambda w: w.idle_since):
            if len(endpoint.live_workers()) <= low:
                break
            quiet = worker.status == IDLE and worker.active == 0 or (
                worker.status in (UNHEALTHY, THROTTLED) and not endpoint.queue)
            if quiet and now - worker.idle_since > idle_limit:
                worker.terminate()

    def engines_alive(self) -> int:
        with self.lock:
            return sum(1 for w in self.all_workers if w.engine is not None and w.engine.alive())

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, TICK))
        return True


def _cuda(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _normalize(payload: dict[str, Any]) -> tuple[str, str, Any]:
    if payload.get("openai_input"):
        return payload.get("openai_route") or "/v1/chat/completions", "POST", payload["openai_input"]
    if payload.get("openai_route"):
        return payload["openai_route"], "GET", None
    if payload.get("route"):
        body = payload.get("body")
        return payload["route"], (payload.get("method") or ("POST" if body else "GET")).upper(), body
    if "messages" not in payload and "prompt" not in payload:
        raise ValueError("Job input must contain one of: openai_input (+openai_route), route (+body), or prompt/messages.")
    body = {**(payload.get("sampling_params") or {}), "stream": bool(payload.get("stream", False))}
    if "messages" in payload:
        return "/v1/chat/completions", "POST", {**body, "messages": payload["messages"]}
    return "/v1/completions", "POST", {**body, "prompt": payload["prompt"]}


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "worker_error", "code": None}}
