"""The emulated control plane: the REST v2 paths deployer uses, as openapi-v2.json defines them.

Serverless CRUD (201/200/204), workers and their SSE logs, the GPU catalog and templates. Errors
are RFC 9457 problem+json. Rules the schema cannot express are enforced as the document's prose
states them (400s): exactly one of gpu/cpu, known pools, `excludedTypes` within the chosen
pools, no CUDA set beside a floor, min <= max. Each endpoint gets a bound serverless template,
deleted with it. Paths the document has but deployer never calls answer 501.
"""

from __future__ import annotations

import copy
import http
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .catalog import with_availability
from .cluster import IDLE, INITIALIZING, RUNNING, THROTTLED, UNHEALTHY, EndpointState, new_id, now_iso
from .http import Call, Reply, route

if TYPE_CHECKING:
    from .emulator import RunPodEmulator

CONTAINER_KEYS = ("image", "args", "disk", "ports", "env", "registry")
AVAILABILITY_ONLY = ("product", "count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion")


def problem(status: int, detail: str, *, errors: list[str] | None = None, headers: dict[str, str] | None = None) -> Reply:
    body: dict[str, Any] = {"title": http.HTTPStatus(status).phrase, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return Reply(status, body, headers=dict(headers or {}), content_type="application/problem+json")


class ControlPlane:
    def __init__(self, emulator: RunPodEmulator) -> None:
        self.emu = emulator
        self.cluster = emulator.cluster
        self.templates: dict[str, dict[str, Any]] = {}

    def routes(self) -> list:
        return [
            route("GET", "/v2/serverless", self.list_endpoints),
            route("POST", "/v2/serverless", self.create_endpoint),
            route("GET", "/v2/serverless/{id}", self.get_endpoint),
            route("PATCH", "/v2/serverless/{id}", self.update_endpoint),
            route("DELETE", "/v2/serverless/{id}", self.delete_endpoint),
            route("GET", "/v2/serverless/{id}/workers", self.list_workers),
            route("GET", "/v2/serverless/{id}/workers/{worker}/logs", self.worker_logs),
            route("GET", "/v2/catalog/gpus", self.list_gpus),
            route("GET", "/v2/catalog/gpus/{gpu}", self.get_gpu),
            route("GET", "/v2/templates", self.list_templates),
            route("POST", "/v2/templates", self.create_template),
            route("GET", "/v2/templates/{id}", self.get_template),
            route("PATCH", "/v2/templates/{id}", self.update_template),
            route("DELETE", "/v2/templates/{id}", self.delete_template),
        ]

    # -- views ------------------------------------------------------------------------------

    def view(self, endpoint: EndpointState) -> dict[str, Any]:
        base = f"{self.emu.data_url}/{endpoint.id}"
        urls = {"run": f"{base}/run", "runSync": f"{base}/runsync", "status": f"{base}/status/{{job_id}}",
                "stream": f"{base}/stream/{{job_id}}", "cancel": f"{base}/cancel/{{job_id}}",
                "retry": f"{base}/retry/{{job_id}}", "purgeQueue": f"{base}/purge-queue", "health": f"{base}/health"}
        out = copy.deepcopy(endpoint.body)
        out["requestUrls"] = urls
        return out

    def _find(self, endpoint_id: str, *, lingering: bool = True) -> EndpointState | None:
        endpoint = self.cluster.endpoints.get(endpoint_id)
        if endpoint is None or (endpoint.deleted_at is not None and not lingering):
            return None
        return endpoint

    # -- serverless -------------------------------------------------------------------------

    def list_endpoints(self, call: Call) -> Reply:
        with self.cluster.lock:
            return Reply(200, {"endpoints": [self.view(e) for e in self.cluster.endpoints.values()]})

    def get_endpoint(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint = self._find(call.params["id"])
            if endpoint is None:
                return problem(404, "endpoint not found")
            return Reply(200, self.view(endpoint))

    def create_endpoint(self, call: Call) -> Reply:
        body = call.json()
        if ("gpu" in body) == ("cpu" in body):
            return problem(400, "specify exactly one of gpu or cpu")
        if "cpu" in body:
            return problem(501, "the emulator models GPU endpoints only")
        with self.cluster.lock:
            container: dict[str, Any] = {"args": "", "disk": 20, "ports": [], "env": {}, "registry": None}
            cuda_seed: list[str] = []
            if "templateId" in body:
                template = self.templates.get(body["templateId"])
                if template is None:
                    return problem(404, f"template {body['templateId']} not found")
                if not template["serverless"]:
                    return problem(422, "templateId must name a serverless template")
                container.update({k: copy.deepcopy(template[k]) for k in CONTAINER_KEYS})
                cuda_seed = list(template["allowedCudaVersions"])
            for key in CONTAINER_KEYS:
                if key == "env" and key in body:
                    container["env"] = {**container["env"], **body["env"]}
                elif key in body:
                    container[key] = copy.deepcopy(body[key])
            gpu = body["gpu"]
            workers = {"min": 0, "max": 3, "idleTimeout": 10, **body.get("workers", {})}
            view: dict[str, Any] = {
                "id": new_id(14), "name": body["name"], "type": body["type"], **container,
                "gpu": {"pools": list(gpu["pools"]), "count": gpu.get("count", 1),
                        "allowedCudaVersions": list(gpu.get("allowedCudaVersions",
                                                            [] if "minCudaVersion" in gpu else cuda_seed)),
                        "minCudaVersion": gpu.get("minCudaVersion")},
                "workers": workers, "scaling": body["scaling"],
                "dataCenterIds": list(body.get("dataCenterIds", [])),
                "networkVolumes": list(body.get("networkVolumes", [])),
                "timeout": body.get("timeout", 300000), "flashboot": body.get("flashboot", "OFF"),
                "createdAt": now_iso().split(".")[0] + "Z",
            }
            if gpu.get("excludedTypes"):
                view["gpu"]["excludedTypes"] = [t.strip() for t in gpu["excludedTypes"]]
            if body["scaling"]["type"] == "REQUEST_COUNT" and body["type"] == "QUEUE":
                if "idleTimeout" in body.get("workers", {}):
                    return problem(400, "idleTimeout does not apply to a queue endpoint scaling on requestCount")
                workers.pop("idleTimeout")
            refused = self._refuse(view)
            if refused:
                return refused
            template_id = new_id(10)
            self.templates[template_id] = self._bound_template(template_id, view)
            endpoint = EndpointState(view["id"], view, template_id)
            self.cluster.endpoints[endpoint.id] = endpoint
            return Reply(201, self.view(endpoint))

    def update_endpoint(self, call: Call) -> Reply:
        patch = call.json()
        with self.cluster.lock:
            endpoint = self._find(call.params["id"])
            if endpoint is None:
                return problem(404, "endpoint not found")
            if endpoint.deleted_at is not None:
                return Reply(200, self.view(endpoint))  # deleted but still listed: writes do nothing
            if "cpu" in patch:
                return problem(400, "cpu on a GPU endpoint: the compute family is immutable")
            new = copy.deepcopy(endpoint.body)
            if "templateId" in patch:
                template = self.templates.get(patch["templateId"])
                if template is None:
                    return problem(404, f"template {patch['templateId']} not found")
                new.update({k: copy.deepcopy(template[k]) for k in CONTAINER_KEYS})
            for key in ("name", "image", "args", "disk", "ports", "registry", "dataCenterIds", "networkVolumes",
                        "timeout", "flashboot", "scaling"):
                if key in patch:
                    new[key] = copy.deepcopy(patch[key])
            if "env" in patch:
                new["env"] = {**(new["env"] if "templateId" in patch else {}), **patch["env"]}
            if "workers" in patch:
                new["workers"] = {**new["workers"], **patch["workers"]}
            if "gpu" in patch:
                gpu, cur = patch["gpu"], new["gpu"]
                if "pools" in gpu:
                    cur["pools"] = list(gpu["pools"])
                    cur.pop("excludedTypes", None)
                    if gpu.get("excludedTypes"):
                        cur["excludedTypes"] = [t.strip() for t in gpu["excludedTypes"]]
                for key in ("count", "allowedCudaVersions"):
                    if key in gpu:
                        cur[key] = gpu[key]
                if "minCudaVersion" in gpu:
                    cur["minCudaVersion"] = gpu["minCudaVersion"] or None
            if new["scaling"]["type"] == "REQUEST_COUNT" and new["type"] == "QUEUE":
                if "idleTimeout" in (patch.get("workers") or {}):
                    return problem(400, "idleTimeout does not apply to a queue endpoint scaling on requestCount")
                new["workers"].pop("idleTimeout", None)
            refused = self._refuse(new)
            if refused:
                return refused
            release = any(new.get(k) != endpoint.body.get(k) for k in CONTAINER_KEYS) or new["gpu"] != endpoint.body["gpu"]
            endpoint.body = new
            if release:
                endpoint.version += 1
                template = self.templates.get(endpoint.template_id)
                if template is not None:
                    template.update({k: copy.deepcopy(new[k]) for k in CONTAINER_KEYS})
            self.cluster.cond.notify_all()
            return Reply(200, self.view(endpoint))

    def delete_endpoint(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint = self._find(call.params["id"])
            if endpoint is None:
                return problem(404, "endpoint not found")
            if endpoint.deleted_at is None:
                now = time.monotonic()
                endpoint.deleted_at = now
                endpoint.linger_until = now + self.emu.faults.linger_delete_s
                for worker in endpoint.workers:
                    worker.terminate(hard=True)
                self.cluster.cancel_jobs(endpoint)
                if not self.emu.faults.keep_bound_template:
                    self.templates.pop(endpoint.template_id, None)
                if self.emu.faults.linger_delete_s <= 0:
                    self.cluster.endpoints.pop(endpoint.id, None)
            return Reply(204)

    def _refuse(self, view: dict[str, Any]) -> Reply | None:
        """The 400s the document states in prose."""
        gpu = view["gpu"]
        pools = {e["pool"] for e in self.cluster.catalog if e.get("pool")}
        unknown = [p for p in gpu["pools"] if p not in pools]
        if unknown:
            return problem(400, f"unknown serverless GPU pool(s): {', '.join(unknown)}")
        in_pools = {e["id"] for e in self.cluster.catalog if e.get("pool") in gpu["pools"]}
        stray = [t for t in gpu.get("excludedTypes", []) if t not in in_pools]
        if stray:
            return problem(400, f"excludedTypes not in the selected pools: {', '.join(stray)}")
        if gpu.get("excludedTypes") and in_pools <= set(gpu["excludedTypes"]):
            return problem(400, "excludedTypes leaves no GPU type in the selected pools")
        if gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
            return problem(400, "allowedCudaVersions and minCudaVersion are mutually exclusive")
        workers = view["workers"]
        if workers["min"] > workers["max"]:
            return problem(400, f"workers.min ({workers['min']}) is above workers.max ({workers['max']})")
        missing = [v for v in view["networkVolumes"] if v not in self.emu.network_volumes]
        if missing:
            return problem(400, f"network volume(s) not found: {', '.join(missing)}")
        return None

    def _bound_template(self, template_id: str, view: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": template_id, "name": f"{view['name']}__template__{template_id}",
            **{k: copy.deepcopy(view[k]) for k in CONTAINER_KEYS},
            "mounts": {}, "serverless": True, "public": False, "category": "NVIDIA",
            "startSsh": False, "startJupyter": False,
            "allowedCudaVersions": list(view["gpu"]["allowedCudaVersions"]),
        }

    # -- workers ----------------------------------------------------------------------------

    def list_workers(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint = self._find(call.params["id"], lingering=False)
            if endpoint is None:
                return problem(404, "endpoint not found")
            workers = [w for w in endpoint.workers if not w.gone.is_set()]
            summary = {k.lower(): 0 for k in (RUNNING, IDLE, INITIALIZING, THROTTLED, UNHEALTHY)}
            for worker in workers:
                summary[worker.status.lower()] += 1
            summary["total"] = len(workers)
            return Reply(200, {"workers": [w.view() for w in workers], "summary": summary,
                               "endpointVersion": endpoint.version})

    def worker_logs(self, call: Call) -> Reply:
        with self.cluster.lock:
            endpoint = self._find(call.params["id"], lingering=False)
            worker = next((w for w in endpoint.workers if w.id == call.params["worker"]), None) if endpoint else None
            if worker is None:
                return problem(404, "worker not found")
        tail = int(call.query.get("tail", "100"))
        source = call.query.get("source")
        headers = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        return Reply(200, self._log_events(worker.log, tail, source), headers=headers, content_type="text/event-stream")

    def _log_events(self, book: Any, tail: int, source: str | None) -> Iterator[str]:
        with book.cond:
            index = max(0, len(book.entries) - tail)
        while not self.emu.closing.is_set():
            with book.cond:
                while index >= len(book.entries) and not book.closed and not self.emu.closing.is_set():
                    book.cond.wait(0.2)
                batch, index, closed = book.entries[index:], len(book.entries), book.closed
            for ts, src, line in batch:
                if source is None or src == source:
                    yield f"id: {ts}\ndata: {json.dumps({'ts': ts, 'source': src, 'line': line})}\n\n"
            if closed and not batch:
                return

    # -- catalog ----------------------------------------------------------------------------

    def list_gpus(self, call: Call) -> Reply:
        refused = self._catalog_params(call)
        if refused:
            return refused
        return Reply(200, {"gpus": [self._gpu(e, call) for e in self.cluster.catalog]})

    def get_gpu(self, call: Call) -> Reply:
        refused = self._catalog_params(call)
        if refused:
            return refused
        entry = next((e for e in self.cluster.catalog if e["id"] == call.params["gpu"]), None)
        return problem(404, "GPU type not found") if entry is None else Reply(200, self._gpu(entry, call))

    def _catalog_params(self, call: Call) -> Reply | None:
        with_availability_ = call.query.get("include") == "AVAILABILITY"
        stray = [p for p in AVAILABILITY_ONLY if p in call.query]
        if stray and not with_availability_:
            return problem(400, f"{', '.join(stray)} is valid only with include=AVAILABILITY")
        if with_availability_ and "product" not in call.query:
            return problem(400, "include=AVAILABILITY requires product")
        if "cudaVersions" in call.query and "minCudaVersion" in call.query:
            return problem(400, "cudaVersions and minCudaVersion are mutually exclusive")
        return None

    def _gpu(self, entry: dict[str, Any], call: Call) -> dict[str, Any]:
        if call.query.get("include") != "AVAILABILITY":
            return copy.deepcopy(entry)
        serverless = "SERVERLESS" in call.query.get("product", "").split(",")
        available = not (serverless and (self.emu.faults.no_capacity or not entry.get("pool")))
        return with_availability(copy.deepcopy(entry), available=available)

    # -- templates --------------------------------------------------------------------------

    def list_templates(self, call: Call) -> Reply:
        with self.cluster.lock:
            return Reply(200, {"templates": [copy.deepcopy(t) for t in self.templates.values()]})

    def get_template(self, call: Call) -> Reply:
        with self.cluster.lock:
            template = self.templates.get(call.params["id"])
            return problem(404, "template not found") if template is None else Reply(200, copy.deepcopy(template))

    def create_template(self, call: Call) -> Reply:
        body = call.json()
        with self.cluster.lock:
            template_id = new_id(10)
            template = {
                "id": template_id, "name": body["name"], "image": body["image"], "args": body.get("args", ""),
                "disk": body.get("disk", 20), "mounts": body.get("mounts", {}), "ports": body.get("ports", []),
                "env": body.get("env", {}), "registry": body.get("registry"),
                "serverless": body.get("serverless", False), "public": body.get("public", False),
                "category": body.get("category", "NVIDIA"), "startSsh": body.get("startSsh", True),
                "startJupyter": body.get("startJupyter", True),
                "allowedCudaVersions": body.get("allowedCudaVersions", []),
            }
            self.templates[template_id] = template
            return Reply(201, copy.deepcopy(template))

    def update_template(self, call: Call) -> Reply:
        body = call.json()
        with self.cluster.lock:
            template = self.templates.get(call.params["id"])
            if template is None:
                return problem(404, "template not found")
            template.update({k: v for k, v in body.items() if k != "mounts" or v})
            return Reply(200, copy.deepcopy(template))

    def delete_template(self, call: Call) -> Reply:
        with self.cluster.lock:
            template_id = call.params["id"]
            if template_id not in self.templates:
                return problem(404, "template not found")
            user = next((e for e in self.cluster.endpoints.values()
                         if e.template_id == template_id and e.deleted_at is None), None)
            if user is not None:
                return problem(400, f"template {template_id} is in use by endpoint {user.id}")
            del self.templates[template_id]
            return Reply(204)


def job_counts(endpoint: EndpointState) -> dict[str, int]:
    in_progress = sum(1 for j in endpoint.jobs.values() if j.status == "IN_PROGRESS")
    return {"completed": endpoint.counts["completed"], "failed": endpoint.counts["failed"],
            "inProgress": in_progress, "inQueue": len(endpoint.queue), "retried": endpoint.counts["retried"]}


__all__ = ["ControlPlane", "problem", "job_counts"]
