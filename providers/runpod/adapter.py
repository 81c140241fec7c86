"""The runpod backend: a serverless endpoint running RunPod's vLLM worker, through REST v2.

- render: the exact v2 calls (GET /serverless to find the endpoint by name, GET /catalog/gpus,
  POST /serverless), with pools from the shipped GPU table. Pure.
- apply: resolves pools from the live catalog, then PATCHes the endpoint named `dplr-<name>` in
  place with only what differs, or creates it; records the id the moment RunPod returns it.
- readiness is the core's: the OpenAI route `/v2/{id}/openai/v1` must list the model and
  complete one token. `probe` reports a crash loop (unhealthy workers) early; `not_ready` says
  what the workers were doing (throttled = no capacity, unhealthy = crash loop).
- destroy: workers to 0/0, wait until no worker holds a GPU, DELETE, then list until the
  endpoint is gone (a 404 is success); leftover templates carrying the name are removed too.

Clients use the RunPod API key: RunPod authenticates every data-plane call at the platform.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from functools import cached_property
from typing import Any

from deployer.errors import InputError, ProviderError
from deployer.provider import (
    NAME_PREFIX,
    Artifacts,
    Deployment,
    Endpoint,
    Owned,
    Recorder,
    Request,
    Secrets,
    StatusReport,
    resource_name,
)
from deployer.settings import Settings
from deployer.spec import Spec

from . import gpus
from .api import PROVIDER, RunPodApi, missing_key_error
from .mapping import create_body, hf_secret_name, secret_ref, update_body
from .options import Options
from .settings import RunPodSettings, env_settings, load_settings

OWNED_NAME = re.compile(r"^" + re.escape(NAME_PREFIX) + r"(?P<name>[a-z0-9-]+)(?:$|[^a-z0-9-])")
WORKER_COUNTS = ("running", "idle", "initializing", "throttled", "unhealthy")


def owner_of(name: str) -> str | None:
    """The deployment a RunPod resource name belongs to (`dplr-<name>` or `dplr-<name>__...`)."""
    match = OWNED_NAME.match(name or "")
    return match["name"] if match else None


class Provider:
    name = PROVIDER

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._unhealthy_seen: dict[str, int] = {}
        self._probed: dict[str, tuple[float, str | None]] = {}

    @cached_property
    def runpod(self) -> RunPodSettings:
        return load_settings()

    def _api(self) -> RunPodApi:
        return RunPodApi(self.runpod)

    # -- render -----------------------------------------------------------------------------

    def render(self, spec: Spec, secrets: Secrets) -> Artifacts:
        """The v2 calls a first deploy makes, pools from the shipped table. Pure; raises InputError."""
        options: Options = spec.options(PROVIDER)
        selection = self._selection(spec, options, gpus.shipped_catalog())
        body = create_body(spec, secrets, options, selection)
        api = env_settings().api_url.rstrip("/")  # env only: plan reads no key file
        requests = [
            Request("GET", f"{api}/serverless"),
            Request("GET", f"{api}/catalog/gpus"),
            Request("POST", f"{api}/serverless", body),
        ]
        return Artifacts(requests=requests, notes=self._notes(spec, secrets, options, selection, body))

    def _selection(self, spec: Spec, options: Options, catalog: list[dict[str, Any]]) -> gpus.Selection:
        if options.pools:
            return gpus.select([], catalog, pools=options.pools)
        if spec.resources.gpu is None:
            raise InputError(
                "RunPod serverless runs on GPUs: set resources.gpu",
                hint="e.g. resources: {gpu: L4} for a small model, or providers.runpod.pools: [AMPERE_24]",
            )
        wanted = [spec.resources.gpu, *[g for g in options.fallback_gpus if g != spec.resources.gpu]]
        return gpus.select(wanted, catalog, exact=options.exact_gpu)

    def _notes(self, spec: Spec, secrets: Secrets, options: Options, selection: gpus.Selection,
               body: dict[str, Any]) -> list[str]:
        name = body["name"]
        notes = [
            f"endpoint {name}: deploy looks it up by name first; when it exists, deploy sends "
            "PATCH /serverless/{id} with only the fields that differ instead of the POST",
            "gpu.pools here come from the shipped GPU table; deploy resolves them from the live catalog "
            "(GET /catalog/gpus), so the body it sends may differ in gpu.pools/gpu.excludedTypes only",
            "clients authenticate with your RunPod API key (RunPod checks it at the platform; the worker "
            "runs vLLM on loopback without a key of its own)",
            "readiness: GET /v2/{id}/openai/v1/models lists the model, then a one-token completion",
        ]
        prices = [(p, gpus.shipped_price(p)) for p in selection.pools]
        priced = ", ".join(f"{p} ${v:.3f}/GPU-h" for p, v in prices if v is not None)
        if priced:
            notes.append(f"documented serverless prices: {priced} (x{spec.resources.count} GPU per worker; "
                         f"{spec.scaling.min_replicas} always-on worker(s) bill all the time)")
        secret = hf_secret_name(options, secrets)
        if secret:
            notes.append(f"HF_TOKEN is {secret_ref(secret)}: create the RunPod secret {secret!r} once "
                         "(console > Settings > Secrets); deployer never sends the token itself")
        if options.network_volume_id:
            notes.append(f"weights cache on network volume {options.network_volume_id} (/runpod-volume); "
                         "workers are placed in its data center")
        return notes

    # -- apply ------------------------------------------------------------------------------

    def apply(self, spec: Spec, secrets: Secrets, current: Deployment | None, record: Recorder) -> Endpoint:
        """Create the endpoint, or PATCH the existing one with what differs. Returns once RunPod
        has accepted it (not once it answers). Raises ProviderError."""
        options: Options = spec.options(PROVIDER)
        with self._api() as api:  # the calls in the order `plan` lists them
            existing = self._existing(api, resource_name(spec.name), current)
            selection = self._selection(spec, options, api.gpu_types())
            body = create_body(spec, secrets, options, selection)
            for endpoint in existing:
                record("endpoint", endpoint["id"], endpoint_name=endpoint["name"])
            endpoint = existing[0] if existing else None
            if endpoint is not None:
                if endpoint.get("type", "QUEUE") != "QUEUE" or not endpoint.get("gpu"):
                    raise ProviderError(
                        PROVIDER, f"endpoint {endpoint['id']} ({body['name']}) is not a queue-based GPU endpoint",
                        hint=f"`deployer destroy {spec.name}` removes it; then deploy again")
                patch = update_body(endpoint, body)
                if patch and api.update_endpoint(endpoint["id"], patch) is None:
                    endpoint = None  # deleted meanwhile: create it afresh
            if endpoint is None:
                endpoint = api.create_endpoint(body)
                record("endpoint", endpoint["id"], endpoint_name=endpoint["name"])
        return self._endpoint(spec, endpoint["id"])

    def _existing(self, api: RunPodApi, name: str, current: Deployment | None) -> list[dict[str, Any]]:
        """Our endpoints: the recorded ones still there, then any other carrying our name."""
        found: dict[str, dict[str, Any]] = {}
        for resource in current.resources if current else []:
            if resource.kind == "endpoint":
                endpoint = api.get_endpoint(resource.id)
                if endpoint is not None and endpoint.get("name") == name:
                    found[endpoint["id"]] = endpoint
        for endpoint in api.find_endpoints(name):
            found.setdefault(endpoint["id"], endpoint)
        return list(found.values())

    def _endpoint(self, spec: Spec, endpoint_id: str) -> Endpoint:
        key = self.runpod.api_key
        if key is None:
            raise missing_key_error()
        return Endpoint(
            url=f"{self.runpod.endpoint_url.rstrip('/')}/{endpoint_id}/openai/v1",
            api_key=key.get_secret_value(),
            model=spec.model.served,
            key_source=f"your RunPod API key (from {self.runpod.key_origin or 'the environment'})",
        )

    # -- readiness --------------------------------------------------------------------------

    def readiness_timeout(self, spec: Spec) -> float:
        """A first boot pulls a 10+ GB image and the weights: 15 minutes plus 20 s per billion parameters."""
        return min(3600.0, 900.0 + 20.0 * (spec.model.params_b or 8.0))

    def probe_timeout(self) -> float:
        return self.runpod.probe_timeout

    def client_key(self, deployment: Deployment) -> str | None:
        """Clients send your RunPod API key: RunPod checks it before a request reaches a worker."""
        key = self.runpod.api_key
        return key.get_secret_value() if key is not None else None

    def probe(self, deployment: Deployment) -> str | None:
        """A reason when every worker is unhealthy on two looks in a row (a crash loop), else None.
        Polls RunPod at most once per poll_interval; throttled workers may still get a GPU."""
        resource = deployment.resource("endpoint")
        if resource is None:
            return None
        now = time.monotonic()
        last = self._probed.get(resource.id)
        if last and now - last[0] < self.runpod.poll_interval:
            return last[1]
        with self._api() as api:
            workers = api.workers(resource.id)
            reason: str | None = None
            if workers is None:
                reason = f"endpoint {resource.id} no longer exists on RunPod"
            else:
                summary = workers["summary"]
                if summary["unhealthy"] and not (summary["idle"] or summary["running"]):
                    seen = self._unhealthy_seen.get(resource.id, 0) + 1
                    self._unhealthy_seen[resource.id] = seen
                    if seen >= 2:
                        reason = (f"RunPod workers are crash-looping ({summary['unhealthy']} unhealthy)"
                                  + self._log_tail(api, deployment, resource.id, workers, "UNHEALTHY"))
                else:
                    self._unhealthy_seen.pop(resource.id, None)
        self._probed[resource.id] = (now, reason)
        return reason

    def not_ready(self, deployment: Deployment, reason: str) -> str:
        """What the workers were doing, in words; queued readiness requests are purged so that
        min-0 workers stop starting. The endpoint stays recorded for `destroy`."""
        resource = deployment.resource("endpoint")
        if resource is None:
            return "no RunPod endpoint was recorded"
        lines: list[str] = []
        with self._api() as api:
            endpoint = api.get_endpoint(resource.id)
            workers = api.workers(resource.id) if endpoint else None
            if endpoint is None or workers is None:
                return f"endpoint {resource.id} no longer exists on RunPod"
            summary = workers["summary"]
            pools = ", ".join((endpoint.get("gpu") or {}).get("pools") or [])
            if summary["throttled"]:
                lines.append(f"no capacity: {summary['throttled']} worker(s) throttled, waiting for a free GPU in "
                             f"pools {pools}; add pools (providers.runpod.fallback_gpus), drop "
                             "providers.runpod.data_centers, or try again later")
            if summary["unhealthy"]:
                tail = "" if "last log lines" in reason else self._log_tail(
                    api, deployment, resource.id, workers, "UNHEALTHY")
                lines.append(f"crash loop: {summary['unhealthy']} worker(s) unhealthy; the worker keeps exiting{tail}")
            if summary["initializing"]:
                lines.append(f"{summary['initializing']} worker(s) still initializing (a first boot pulls the "
                             "image and the weights); raise startup.readiness_timeout")
            if summary["idle"] or summary["running"]:
                lines.append(f"{summary['idle'] + summary['running']} worker(s) up, yet the OpenAI route did not "
                             "answer for the model")
            if not any(summary[k] for k in WORKER_COUNTS):
                lines.append("no worker was running or starting")
            purged = api.purge_queue(resource.id)
            if purged:
                lines.append(f"purged {purged} queued request(s) so that no new worker starts for them")
        lines.append(f"endpoint {resource.id} stays recorded: `deployer destroy {deployment.name}` removes it")
        return "\n".join(lines)

    def _log_tail(self, api: RunPodApi, deployment: Deployment, endpoint_id: str, workers: dict[str, Any],
                  status: str, lines: int = 12) -> str:
        worker = next((w for w in workers["workers"] if w["status"] == status), None)
        if worker is None:
            return ""
        events = list(api.worker_log(endpoint_id, worker["id"], tail=lines, idle=self.runpod.log_idle))
        if not events:
            return ""
        text = "\n".join(f"    {e.get('line', '')}" for e in events[-lines:])
        return f"; last log lines of worker {worker['id']}:\n" + self._scrub(deployment, text)

    # -- status -----------------------------------------------------------------------------

    def status(self, deployment: Deployment) -> StatusReport:
        """ready (workers up, or scaled to zero and able to start), starting, throttled, failed, or gone.
        With no endpoint recorded (a deploy killed before RunPod answered its create), the endpoint
        is looked up by name."""
        resource = deployment.resource("endpoint")
        with self._api() as api:
            if resource is None:
                found = api.find_endpoints(resource_name(deployment.name))
                if not found:
                    return StatusReport("gone", {})
                endpoint_id = found[0]["id"]
            else:
                endpoint_id = resource.id
            endpoint = api.get_endpoint(endpoint_id)
            workers = api.workers(endpoint_id) if endpoint else None
            if endpoint is None or workers is None:
                return StatusReport("gone", {"endpoint": endpoint_id})
            try:
                health = api.health(endpoint_id)
            except ProviderError:
                health = None
        summary = workers["summary"]
        scaling = endpoint.get("workers") or {}
        details: dict[str, Any] = {
            "endpoint": endpoint_id,
            "workers": " ".join(f"{k}={summary[k]}" for k in WORKER_COUNTS),
            "min/max": f"{scaling.get('min')}/{scaling.get('max')}",
            "pools": ",".join((endpoint.get("gpu") or {}).get("pools") or []),
            "flashboot": endpoint.get("flashboot"),
        }
        if health:
            jobs = health.get("jobs") or {}
            details["jobs"] = " ".join(f"{k}={jobs.get(k, 0)}" for k in ("inQueue", "inProgress", "completed", "failed"))
        if summary["idle"] or summary["running"]:
            state = "ready"
        elif summary["unhealthy"]:
            state = "failed"
        elif summary["initializing"]:
            state = "starting"
        elif summary["throttled"]:
            state = "throttled"
        else:
            state = "ready"  # scaled to zero: the next request starts a worker
            details["workers"] = "none running (scaled to zero; the next request starts one)"
        return StatusReport(state, details)

    # -- cold starts (deployer bench --cold) ------------------------------------------------

    def make_cold(self, deployment: Deployment, record: Recorder, timeout: float) -> str:
        """Wait, changing nothing, until RunPod's `GET /v2/{id}/health` reports no worker in any
        state and no job queued or running: the endpoint has scaled to zero (its idle timeout
        passed without requests), so the next request starts a worker. Polls every poll_interval
        for up to `timeout` s. Idempotent. Raises InputError when `scaling.min_replicas` keeps
        active workers, ProviderError when the endpoint is gone or still has workers at the end."""
        spec = deployment.spec
        if spec is not None and spec.scaling.min_replicas:
            raise InputError(
                f"{deployment.name} keeps {spec.scaling.min_replicas} active RunPod worker(s) (scaling.min_replicas), "
                "so it never scales to zero: no request pays a cold start",
                hint=f"run `deployer bench {deployment.name}` without --cold, or deploy with scaling.min_replicas: 0")
        resource = deployment.resource("endpoint")
        if resource is None:
            raise ProviderError(PROVIDER, f"no RunPod endpoint is recorded for {deployment.name}",
                                hint=f"`deployer deploy` it first; `deployer status {deployment.name}` shows where it is")
        began = time.monotonic()
        with self._api() as api:
            while True:
                health = api.health(resource.id)
                if health is None:
                    raise ProviderError(PROVIDER, f"endpoint {resource.id} no longer exists on RunPod",
                                        hint=f"`deployer deploy` {deployment.name} again")
                workers = {k: v for k, v in (health.get("workers") or {}).items() if k in WORKER_COUNTS and v}
                jobs = health.get("jobs") or {}
                busy = (jobs.get("inQueue") or 0) + (jobs.get("inProgress") or 0)
                waited = time.monotonic() - began
                if not workers and not busy:
                    return f"RunPod's /health reported no worker on endpoint {resource.id} after {waited:.1f} s"
                if waited >= timeout:
                    left = ", ".join(f"{k}={v}" for k, v in workers.items()) or "none"
                    raise ProviderError(
                        PROVIDER, f"endpoint {resource.id} still has workers ({left}) and {busy} job(s) after "
                        f"{timeout:.0f} s", hint="its idle timeout (scaling.idle_timeout) must pass without requests "
                        "before RunPod scales it to zero: stop other traffic to it and retry")
                time.sleep(self.runpod.poll_interval)

    # -- destroy ----------------------------------------------------------------------------

    def destroy(self, deployment: Deployment) -> None:
        """Scale to 0/0, wait for workers to stop, DELETE, verify by listing. Idempotent (gone = done).
        Blocks up to drain_timeout + delete_timeout; raises ProviderError when RunPod still lists it."""
        name = resource_name(deployment.name)
        recorded = [r.id for r in deployment.resources if r.kind == "endpoint"]
        if self.runpod.api_key is None:
            if recorded:
                raise missing_key_error()
            return
        with self._api() as api:
            ids = list(dict.fromkeys(recorded + [e["id"] for e in api.find_endpoints(name)]))
            live = [i for i in ids if api.update_endpoint(i, {"workers": {"min": 0, "max": 0}}) is not None]
            self._drain(api, live)
            for endpoint_id in live:
                api.delete_endpoint(endpoint_id)
            self._verify_gone(api, name, ids)
            for template in api.templates():
                if owner_of(template.get("name", "")) == deployment.name:
                    api.delete_template(template["id"])
            for template_id in [r.id for r in deployment.resources if r.kind == "template"]:
                api.delete_template(template_id)  # a leftover `gc` names by id (404 = gone)

    def _drain(self, api: RunPodApi, ids: list[str]) -> None:
        """Wait until no worker is left on a GPU (running, initializing, idle or crash-looping; a
        throttled one holds none). DELETE would cut running requests short."""
        deadline = time.monotonic() + self.runpod.drain_timeout
        pending = list(ids)
        while pending and time.monotonic() < deadline:
            still = []
            for endpoint_id in pending:
                workers = api.workers(endpoint_id)
                if workers and workers["summary"]["total"] - workers["summary"]["throttled"] > 0:
                    still.append(endpoint_id)
            pending = still
            if pending:
                time.sleep(self.runpod.poll_interval)
        # past the deadline DELETE goes ahead anyway: it terminates the workers itself

    def _verify_gone(self, api: RunPodApi, name: str, ids: list[str]) -> None:
        deadline = time.monotonic() + self.runpod.delete_timeout
        polls = 0
        while True:
            left = [e["id"] for e in api.list_endpoints() if e["id"] in ids or e.get("name") == name]
            if not left:
                return
            if time.monotonic() >= deadline:
                raise ProviderError(
                    PROVIDER, f"RunPod still lists endpoint(s) {', '.join(left)} after DELETE",
                    hint="run the same destroy again in a few minutes; if it stays, delete it in the RunPod console")
            polls += 1
            if polls % 5 == 0:  # a delete that did not take: ask again
                for endpoint_id in left:
                    api.delete_endpoint(endpoint_id)
            time.sleep(self.runpod.poll_interval)

    # -- scan and logs ----------------------------------------------------------------------

    def list_owned(self) -> list[Owned]:
        """Endpoints whose name carries our prefix, and templates left behind by endpoints that are
        gone. (A live endpoint's bound template is part of it: DELETE removes both.) Needs the API key."""
        owned: list[Owned] = []
        with self._api() as api:
            for endpoint in api.list_endpoints():
                owner = owner_of(endpoint.get("name", ""))
                if owner:
                    scaling = endpoint.get("workers") or {}
                    owned.append(Owned(PROVIDER, "endpoint", endpoint["id"], owner,
                                       {"name": endpoint["name"], "workers": f"{scaling.get('min')}/{scaling.get('max')}"}))
            with_endpoint = {o.deployment for o in owned}
            for template in api.templates():
                owner = owner_of(template.get("name", ""))
                if owner and owner not in with_endpoint:
                    owned.append(Owned(PROVIDER, "template", template["id"], owner, {"name": template["name"]}))
        return owned

    def logs(self, deployment: Deployment, follow: bool = False) -> Iterator[str]:
        """The workers' log lines, `[worker] line`. RunPod keeps logs per live worker: an endpoint
        scaled to zero has none. With `follow`, new workers are picked up as they start."""
        resource = deployment.resource("endpoint")
        if resource is None:
            return
        api = self._api()
        try:
            workers = api.workers(resource.id)
            if workers is None:
                yield f"# endpoint {resource.id} no longer exists on RunPod"
                return
            if not follow:
                if not workers["workers"]:
                    yield f"# no worker is up on endpoint {resource.id} (scaled to zero); logs live with workers"
                for worker in workers["workers"]:
                    for event in api.worker_log(resource.id, worker["id"], idle=self.runpod.log_idle):
                        yield self._scrub(deployment, f"[{worker['id']}] {event.get('line', '')}")
                return
            yield from self._follow(api, deployment, resource.id)
        finally:
            api.close()

    def _follow(self, api: RunPodApi, deployment: Deployment, endpoint_id: str) -> Iterator[str]:
        lines: queue.Queue[str] = queue.Queue()
        stop = threading.Event()
        started: set[str] = set()

        def pump(worker_id: str) -> None:
            try:
                for event in api.worker_log(endpoint_id, worker_id, follow=True):
                    if stop.is_set():
                        return
                    lines.put(f"[{worker_id}] {event.get('line', '')}")
            except ProviderError as exc:
                lines.put(f"# {exc.message}")

        next_scan = 0.0
        try:
            while True:
                if time.monotonic() >= next_scan:
                    workers = api.workers(endpoint_id)
                    if workers is None:
                        yield f"# endpoint {endpoint_id} no longer exists on RunPod"
                        return
                    for worker in workers["workers"]:
                        if worker["id"] not in started:
                            started.add(worker["id"])
                            threading.Thread(target=pump, args=(worker["id"],), daemon=True).start()
                    next_scan = time.monotonic() + self.runpod.poll_interval
                try:
                    yield self._scrub(deployment, lines.get(timeout=0.2))
                except queue.Empty:
                    continue
        finally:
            stop.set()

    def _scrub(self, deployment: Deployment, text: str) -> str:
        """`text` without the RunPod key, the local HF token, or whatever token follows --hf-token (the
        worker logs its vLLM command line, which carries the value RunPod resolved from the secret)."""
        values = []
        if self.runpod.api_key is not None:
            values.append(self.runpod.api_key.get_secret_value())
        if deployment.spec is not None:
            values.append(os.environ.get(deployment.spec.secrets.hf_token_env) or "")
        return _hide(text, values)

    def has_credentials(self) -> bool:
        try:
            return load_settings().api_key is not None
        except InputError:
            return False


# The token RunPod resolved from the account secret, which deployer may never have seen.
_HF_TOKEN_IN_LOG = re.compile(r"(--hf-token[ =]|HF_TOKEN=)(\S+)")


def _hide(text: str, values: list[str]) -> str:
    for value in values:
        if value and len(value) >= 6:
            text = text.replace(value, "<redacted>")
    return _HF_TOKEN_IN_LOG.sub(lambda m: m[1] + "<redacted>", text)
