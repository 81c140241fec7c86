"""The emulated serverless data plane at /v2/{endpoint_id}/... (shape from NOTES.md).

Queue routes (run, runsync[?wait=ms], status, stream, cancel, retry, purge-queue, health) and the
OpenAI-compatible route /openai/v1/*, which the platform turns into a job
{"openai_route": "/v1/...", "openai_input": body} and answers with the job's output (HTTP 200,
even when the output is a vLLM error: worker-vllm#57). Callers send the RunPod key as
`Authorization: Bearer <key>` (or the bare key). Per-endpoint rate limits: /run 1000 and
/runsync + /openai 2000 per 10 s. Every body is checked against the schemas below.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jsonschema

from .cluster import FINAL, IDLE, INITIALIZING, RUNNING, THROTTLED, UNHEALTHY, EndpointState, Job
from .control import job_counts
from .http import Call, Reply, route

if TYPE_CHECKING:
    from .emulator import RunPodEmulator

JOB_STATES = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
_INT = {"type": "integer", "minimum": 0}
SCHEMAS: dict[str, dict[str, Any]] = {
    "run-request": {
        "type": "object", "required": ["input"], "additionalProperties": False,
        "properties": {"input": {"type": "object"}, "webhook": {"type": "string"}, "policy": {"type": "object"},
                       "s3Config": {"type": "object"}},
    },
    "job": {
        "type": "object", "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": {"enum": JOB_STATES}, "delayTime": _INT,
                       "executionTime": _INT, "workerId": {"type": "string"}, "output": {},
                       "error": {"type": "string"}},
    },
    "stream": {
        "type": "object", "required": ["status", "stream"],
        "properties": {"status": {"enum": JOB_STATES},
                       "stream": {"type": "array", "items": {"type": "object", "required": ["output"]}}},
    },
    "health": {
        "type": "object", "required": ["jobs", "workers"],
        "properties": {
            "jobs": {"type": "object", "required": ["completed", "failed", "inProgress", "inQueue", "retried"],
                     "additionalProperties": _INT},
            "workers": {"type": "object",
                        "required": ["idle", "initializing", "ready", "running", "throttled", "unhealthy"],
                        "additionalProperties": _INT},
        },
    },
    "purge": {"type": "object", "required": ["removed", "status"],
              "properties": {"removed": _INT, "status": {"type": "string"}}},
    "openai-response": {"type": "object"},
}
LIMITS = {"run": (1000, 10.0), "sync": (2000, 10.0)}


def check(schema: str, value: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMAS[schema])
    return [f"{schema}: {e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(value)]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": message}, headers=dict(headers or {}))


class DataPlane:
    def __init__(self, emulator: RunPodEmulator) -> None:
        self.emu = emulator
        self.cluster = emulator.cluster
        self._calls: dict[tuple[str, str], deque[float]] = {}

    def routes(self) -> list:
        return [
            route("POST", "/v2/{id}/run", self.run),
            route("POST", "/v2/{id}/runsync", self.runsync),
            route("GET", "/v2/{id}/status/{job}", self.status),
            route("POST", "/v2/{id}/status/{job}", self.status),
            route("GET", "/v2/{id}/stream/{job}", self.stream),
            route("POST", "/v2/{id}/cancel/{job}", self.cancel),
            route("POST", "/v2/{id}/retry/{job}", self.retry),
            route("POST", "/v2/{id}/purge-queue", self.purge),
            route("GET", "/v2/{id}/health", self.health),
            route("GET", "/v2/{id}/openai/v1/{rest*}", self.openai),
            route("POST", "/v2/{id}/openai/v1/{rest*}", self.openai),
        ]

    # -- the wrapper: auth, endpoint, limits, checks ------------------------------------------

    def around(self, call: Call, dispatch: Any) -> Reply:
        auth = call.header("Authorization") or ""
        key = auth[7:] if auth.startswith("Bearer ") else auth
        if key not in self.emu.all_keys:
            return error(401, "Unauthorized")
        endpoint_id = call.path.split("/")[2] if call.path.count("/") >= 2 else ""
        with self.cluster.lock:
            endpoint = self.cluster.endpoints.get(endpoint_id)
            if endpoint is None or endpoint.deleted_at is not None:
                return error(404, f"endpoint {endpoint_id} not found")
        kind = "run" if call.path.endswith("/run") else "sync" if ("/runsync" in call.path or "/openai/" in call.path) else None
        if kind and not self._allow(endpoint_id, kind):
            return error(429, "rate limit exceeded", headers={"Retry-After": "1"})
        if call.path.endswith(("/run", "/runsync")):
            problems = check("run-request", call.json() if call.body else None)
            if problems:
                self.emu.violation("data-plane request", call, problems)
                return error(400, "; ".join(problems))
        return dispatch(call)

    def _allow(self, endpoint_id: str, kind: str) -> bool:
        limit, window = LIMITS[kind]
        calls = self._calls.setdefault((endpoint_id, kind), deque())
        now = time.monotonic()
        while calls and now - calls[0] > window:
            calls.popleft()
        if len(calls) >= limit:
            return False
        calls.append(now)
        return True

    def endpoint(self, call: Call) -> EndpointState:
        return self.cluster.endpoints[call.params["id"]]

    def _job(self, call: Call) -> tuple[EndpointState, Job | None]:
        endpoint = self.endpoint(call)
        return endpoint, endpoint.jobs.get(call.params["job"])

    # -- queue routes -----------------------------------------------------------------------

    def run(self, call: Call) -> Reply:
        job = self.cluster.submit(self.endpoint(call), call.json()["input"])
        return Reply(200, {"id": job.id, "status": "IN_QUEUE"})

    def runsync(self, call: Call) -> Reply:
        wait_ms = min(max(int(call.query.get("wait", "90000")), 1000), 300000)
        job = self.cluster.submit(self.endpoint(call), call.json()["input"])
        job.done.wait(wait_ms / 1000)
        with self.cluster.lock:
            return Reply(200, job.view())

    def status(self, call: Call) -> Reply:
        with self.cluster.lock:
            _, job = self._job(call)
            return error(404, "request does not exist") if job is None else Reply(200, job.view())

    def stream(self, call: Call) -> Reply:
        endpoint, job = self._job(call)
        if job is None:
            return error(404, "request does not exist")
        self.cluster.wait_for(lambda: len(job.chunks) > job.streamed or job.status in FINAL, 10.0)
        with self.cluster.lock:
            fresh, job.streamed = job.chunks[job.streamed:], len(job.chunks)
            items = [{"output": c} for c in fresh]
            if job.status in FINAL and not job.chunks and job.output:
                items = [{"output": o} for o in job.output]
            return Reply(200, {"status": job.status, "stream": items})

    def cancel(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint, job = self._job(call)
            if job is None:
                return error(404, "request does not exist")
            if job.status not in FINAL:
                if job in endpoint.queue:
                    endpoint.queue.remove(job)
                job.status, job.finished = "CANCELLED", time.monotonic()
                job.done.set()
            return Reply(200, {"id": job.id, "status": job.status})

    def retry(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint, job = self._job(call)
            if job is None:
                return error(404, "request does not exist")
            if job.status not in ("FAILED", "TIMED_OUT"):
                return error(400, f"only FAILED or TIMED_OUT requests can be retried (this one is {job.status})")
            job.status, job.started, job.finished, job.output, job.error = "IN_QUEUE", None, None, None, None
            job.done.clear()
            endpoint.queue.append(job)
            endpoint.counts["retried"] += 1
            self.cluster.cond.notify_all()
            return Reply(200, {"id": job.id, "status": job.status})

    def purge(self, call: Call) -> Reply:
        removed = self.cluster.cancel_jobs(self.endpoint(call), queued_only=True)
        return Reply(200, {"removed": removed, "status": "completed"})

    def health(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint = self.endpoint(call)
            counts = {s: 0 for s in (IDLE, INITIALIZING, RUNNING, THROTTLED, UNHEALTHY)}
            for worker in endpoint.workers:
                if not worker.gone.is_set():
                    counts[worker.status] += 1
            workers = {"idle": counts[IDLE], "initializing": counts[INITIALIZING], "ready": counts[IDLE] + counts[RUNNING],
                       "running": counts[RUNNING], "throttled": counts[THROTTLED], "unhealthy": counts[UNHEALTHY]}
            return Reply(200, {"jobs": job_counts(endpoint), "workers": workers})

    # -- OpenAI route -----------------------------------------------------------------------

    def openai(self, call: Call) -> Reply:
        route_ = "/v1/" + call.params["rest"]
        payload: dict[str, Any] = {"openai_route": route_}
        body = call.json() if call.body else None
        if call.method == "POST":
            if not isinstance(body, dict):
                return error(400, "the request body must be a JSON object")
            payload["openai_input"] = body
        job = self.cluster.submit(self.endpoint(call), payload)
        if isinstance(body, dict) and body.get("stream") is True:
            return Reply(200, self._sse(job), headers={"Cache-Control": "no-cache"}, content_type="text/event-stream")
        if not job.done.wait(self.emu.openai_wait_s):
            return error(408, f"request {job.id} is still {job.status}: no worker answered in time")
        with self.cluster.lock:
            if job.status != "COMPLETED":
                return error(500, f"request {job.id} ended {job.status}: {job.error or ''}".strip())
            return Reply(200, (job.output or [{}])[0])

    def _sse(self, job: Job) -> Iterator[str]:
        sent = 0
        while True:
            self.cluster.wait_for(lambda: len(job.chunks) > sent or job.status in FINAL, self.emu.openai_wait_s)
            with self.cluster.lock:
                fresh, sent, final = job.chunks[sent:], len(job.chunks), job.status in FINAL
            yield from fresh
            if final:
                if not job.chunks and job.output:
                    yield "data: " + json.dumps(job.output[0]) + "\n\n"
                return


RESPONSE_SCHEMA = {"run": "job", "runsync": "job", "status": "job", "cancel": "job", "retry": "job",
                   "stream": "stream", "health": "health", "purge-queue": "purge"}


def response_problems(call: Call, reply: Reply, sent: bytes) -> list[str]:
    """Data-plane response checks (JSON routes only; errors are {"error": ...})."""
    if reply.status >= 400:
        body = json.loads(sent) if sent else None
        return [] if isinstance(body, dict) and "error" in body else [f"error body without `error`: {sent[:100]!r}"]
    parts = call.path.split("/")
    kind = "openai" if "openai" in parts else (parts[3] if len(parts) > 3 else "")
    if kind == "openai":
        if reply.content_type == "text/event-stream":
            return []
        return check("openai-response", json.loads(sent))
    schema = RESPONSE_SCHEMA.get(kind)
    return check(schema, json.loads(sent)) if schema else [f"unexpected data-plane route {call.path}"]
