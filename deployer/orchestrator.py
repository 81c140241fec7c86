"""Plan, deploy, destroy: the flows, independent of any provider.

`deploy` is idempotent by name: the same spec again is a no-op; a changed spec is applied in
place (the provider decides how); a changed provider brings the new deployment up, waits until
it answers, and only then tears the old one down. If the new one never answers, it is torn down
and the old one stays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import keys, registry
from .errors import DeployerError, NotReadyError
from .provider import Artifacts, Deployment, Endpoint, Provider, Resource, StatusReport
from .settings import Settings
from .spec import Spec
from .state import StateStore, lock

Progress = Callable[[str], None]
GONE = frozenset({"gone", "dead", "stopped"})
"""Status words meaning nothing of the deployment exists at the provider any more (`stopped`:
Modal's final state of an app; a stopped app never serves again)."""
READY = frozenset({"ready", "idle"})
"""Status words of a healthy deployment (`idle`: serverless, scaled to zero, answers on demand)."""


def _quiet(_: str) -> None:
    pass


@dataclass
class Plan:
    spec: Spec
    artifacts: Artifacts
    current: list[dict[str, Any]]
    action: str  # create | update | unchanged | move

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "provider": self.spec.provider,
            "action": self.action,
            "spec": self.spec.model_dump(mode="json"),
            "artifacts": self.artifacts.to_dict(),
            "notes": list(self.artifacts.notes),
        }


@dataclass(frozen=True)
class Target:
    """A recorded deployment and how a client reaches it now (see `Orchestrator.target`)."""

    deployment: Deployment
    endpoint: Endpoint


@dataclass
class DeployResult:
    name: str
    provider: str
    action: str  # created | updated | unchanged | moved
    url: str
    status: str
    key_source: str
    model: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Orchestrator:
    """Runs the flows against one DEPLOYER_HOME. Each public method takes the deployment's lock."""

    def __init__(self, settings: Settings, *, progress: Progress = _quiet) -> None:
        self.settings = settings
        self.progress = progress
        self._state: StateStore | None = None

    @property
    def state(self) -> StateStore:
        if self._state is None:
            self._state = StateStore(self.settings.ensure_home())
        return self._state

    def provider(self, name: str) -> Provider:
        return registry.load(name, self.settings)

    # -- plan -----------------------------------------------------------------------------

    def plan(self, spec: Spec) -> Plan:
        """What `deploy` would do. No provider call, no file written, no secret in the result."""
        provider = self.provider(spec.provider)
        artifacts = provider.render(spec, keys.plan_secrets(spec))
        rows = self.state.rows(spec.name) if self.state_exists() else []
        return Plan(spec=spec, artifacts=artifacts, current=rows, action=_action(spec, rows, deploy_hash(spec, artifacts)))

    def state_exists(self) -> bool:
        return (self.settings.home / "state.db").exists()

    # -- deploy ---------------------------------------------------------------------------

    def deploy(self, spec: Spec) -> DeployResult:
        """Bring `spec` up and return once its endpoint answers. Blocks; raises DeployerError."""
        with lock(self.settings.ensure_home(), spec.name):
            provider = self.provider(spec.provider)
            shape = deploy_hash(spec, provider.render(spec, keys.plan_secrets(spec)))  # refuses bad specs
            secrets = keys.deploy_secrets(spec, self.settings)
            rows = self.state.rows(spec.name)
            same = next((r for r in rows if r["provider"] == spec.provider), None)
            others = [r for r in rows if r["provider"] != spec.provider]

            digest = keys.secrets_digest(secrets, self.settings)
            if (same and same["spec_hash"] == shape and same["secrets_digest"] == digest
                    and same["status"] == "ready"):
                current = self.state.deployment(same)
                report = provider.status(current)
                if report.state in READY and not others:
                    self.progress("unchanged: the deployment already matches the spec")
                    return self._result(spec, "unchanged", current, same["key_source"])

            current = self.state.deployment(same) if same else None
            action = "moved" if others else ("updated" if same else "created")
            self.state.begin(spec.name, spec.provider, shape, spec.model_dump(mode="json"),
                             "updating" if same else "creating", secrets_digest=digest)
            endpoint = self._apply(provider, spec, secrets, current)
            try:
                self._wait(provider, spec, endpoint)
            except NotReadyError:
                if others:
                    self.progress(f"the new deployment on {spec.provider} never answered; tearing it down, "
                                  f"the one on {others[0]['provider']} stays up")
                    self._destroy_row(self._row(spec.name, spec.provider))
                raise
            self.state.set_status(spec.name, spec.provider, "ready", url=endpoint.url)
            for old in others:
                self.progress(f"the new deployment answers; removing the old one on {old['provider']}")
                self._destroy_row(old)
            done = self.state.deployment(self._row(spec.name, spec.provider))
            result = self._result(spec, action, done, endpoint.key_source)
            result.replaced = [o["provider"] for o in others]
            return result

    def _apply(self, provider: Provider, spec: Spec, secrets: Any, current: Deployment | None) -> Endpoint:
        def record(kind: str, id: str, /, **extra: Any) -> None:
            self.state.record_resource(spec.name, spec.provider, kind, id, **extra)

        self.progress(f"applying on {spec.provider}")
        try:
            endpoint = provider.apply(spec, secrets, current, record)
        except BaseException:
            self.state.set_status(spec.name, spec.provider, "failed")
            raise
        self.state.set_status(spec.name, spec.provider, "starting", url=endpoint.url, key_source=endpoint.key_source)
        return endpoint

    def _wait(self, provider: Provider, spec: Spec, endpoint: Endpoint) -> None:
        from .client import wait_ready  # httpx: only deploy needs it, plan stays fast

        timeout = spec.startup.readiness_timeout or provider.readiness_timeout(spec)
        self.progress(f"waiting for {endpoint.url} to answer (up to {timeout:.0f}s)")
        deployment = lambda: self.state.deployment(self._row(spec.name, spec.provider))  # noqa: E731
        try:
            wait_ready(endpoint, timeout=timeout, probe=lambda: provider.probe(deployment()),
                       on_wait=lambda problem: self.progress(f"waiting for {endpoint.url}: {problem}"),
                       request_timeout=provider.probe_timeout())
        except NotReadyError as exc:
            self.state.set_status(spec.name, spec.provider, "failed")
            diagnosis = provider.not_ready(deployment(), exc.message)
            raise NotReadyError(f"{spec.provider}: {exc.message}" + (f"\n{diagnosis}" if diagnosis else ""),
                                hint=f"`deployer logs {spec.name}` shows the server's log; "
                                     f"`deployer destroy {spec.name}` removes what is left") from None

    def _row(self, name: str, provider: str) -> dict[str, Any]:
        for row in self.state.rows(name):
            if row["provider"] == provider:
                return row
        raise DeployerError(f"{name!r} on {provider} vanished from state while in use")

    def _result(self, spec: Spec, action: str, deployment: Deployment, key_source: str | None) -> DeployResult:
        return DeployResult(
            name=spec.name, provider=spec.provider, action=action, url=deployment.url or "", status="ready",
            key_source=key_source or "the deployment's API key", model=spec.model.served,
            resources=[{"kind": r.kind, "id": r.id} for r in deployment.resources],
        )

    # -- destroy --------------------------------------------------------------------------

    def destroy(self, name: str) -> list[str]:
        """Remove every deployment recorded under `name`, verified. Idempotent: returns the
        providers it removed from (empty when nothing was recorded)."""
        with lock(self.settings.ensure_home(), name):
            rows = self.state.rows(name) if self.state_exists() else []
            for row in rows:
                self._destroy_row(row)
            keys.forget_generated_key(self.settings, name)
            return [r["provider"] for r in rows]

    def _destroy_row(self, row: dict[str, Any]) -> None:
        provider = self.provider(row["provider"])
        self.state.set_status(row["name"], row["provider"], "destroying")
        self.progress(f"destroying {row['name']} on {row['provider']}")
        provider.destroy(self.state.deployment(row))
        self.state.forget(row["name"], row["provider"])

    # -- read-only ------------------------------------------------------------------------

    def list(self) -> list[dict[str, Any]]:
        """What the state holds, without calling any provider."""
        if not self.state_exists():
            return []
        return [
            {"name": r["name"], "provider": r["provider"], "status": r["status"], "url": r["url"],
             "updated_at": r["updated_at"], "resources": [{"kind": x.kind, "id": x.id} for x in r["resources"]]}
            for r in self.state.rows()
        ]

    def target(self, name: str) -> Target:
        """How a client reaches deployment `name` now: its recorded URL and served model, and the
        key clients send, from local credentials (no provider call, no lock). During a provider
        switch the deployment recorded ready wins. Raises DeployerError when nothing is recorded,
        it has no URL yet, or the key is not at hand."""
        row = self.state.current(name) if self.state_exists() else None
        if row is None:
            raise DeployerError(f"no deployment named {name!r}", hint="`deployer list` shows what exists")
        deployment = self.state.deployment(row)
        if not row["url"] or deployment.spec is None:
            raise DeployerError(f"{name!r} on {row['provider']} has no endpoint yet (recorded {row['status']})",
                                hint=f"`deployer deploy` it first; `deployer status {name}` shows where it is")
        key = self.provider(row["provider"]).client_key(deployment)
        if not key:
            raise DeployerError(f"the key clients send to {name!r} is not at hand",
                                hint=f"it is {row['key_source'] or 'the deployment key'}: set it up on this machine")
        endpoint = Endpoint(url=row["url"], api_key=key, model=deployment.spec.model.served,
                            key_source=row["key_source"] or "the deployment's API key")
        return Target(deployment, endpoint)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Recorded deployments (all, or `name`'s) with the provider's current view of each."""
        rows = self.state.rows(name) if self.state_exists() else []
        out = []
        for row in rows:
            deployment = self.state.deployment(row)
            try:
                report = self.provider(row["provider"]).status(deployment)
            except DeployerError as exc:
                report = StatusReport(state="unknown", details={"error": exc.message})
            out.append({
                "name": row["name"], "provider": row["provider"], "recorded": row["status"],
                "state": report.state, "ghost": report.state in GONE,
                "url": row["url"], "details": report.details,
                "resources": [{"kind": r.kind, "id": r.id} for r in deployment.resources],
            })
        return out

    def gc(self, only: str | None = None, *, apply: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Compare what each provider holds under our prefix/tags with the state.

        Returns {"orphans": in the provider but not in state, "ghosts": in state but gone from
        the provider (each with what it `left` behind, e.g. a firewall ruleset), "healthy": both,
        "shared": ours but belonging to no deployment (caches; never destroyed), "skipped":
        providers without credentials}. With `apply`, orphans are destroyed (verified) and ghosts
        destroyed (what is left) and forgotten, each under its deployment's lock. Providers are
        asked only when they have credentials.
        """
        rows = self.state.rows() if self.state_exists() else []
        report: dict[str, list[dict[str, Any]]] = {
            "orphans": [], "ghosts": [], "healthy": [], "shared": [], "skipped": []}
        for name in [only] if only else registry.names():
            provider = self.provider(name)
            if not provider.has_credentials():
                report["skipped"].append({"provider": name, "reason": "no credentials"})
                continue
            mine = [r for r in rows if r["provider"] == name]
            try:  # one provider failing (unreachable, bad key) must not hide the others
                ghosts = {row["name"]: {"provider": name, "deployment": row["name"], "left": []} for row in mine
                          if provider.status(self.state.deployment(row)).state in GONE}
                owned_now = provider.list_owned()
            except DeployerError as exc:
                report["skipped"].append({"provider": name, "reason": exc.message})
                continue
            owner = {(res.kind, res.id): row["name"] for row in mine for res in row["resources"]}
            for owned in owned_now:
                entry = {"provider": name, "kind": owned.kind, "id": owned.id, "deployment": owned.deployment,
                         "details": owned.details}
                recorded_by = owner.get((owned.kind, owned.id))
                if owned.deployment is None and recorded_by is None:
                    report["shared"].append(entry)
                elif recorded_by is None:
                    report["orphans"].append(entry)
                elif recorded_by in ghosts:
                    ghosts[recorded_by]["left"].append(entry)
                else:
                    report["healthy"].append(entry)
            report["ghosts"] += ghosts.values()
        if apply:
            for entry in report["orphans"]:
                self._destroy_orphan(entry)
            for entry in report["ghosts"]:
                self._forget_ghost(entry)
        return report

    def _destroy_orphan(self, entry: dict[str, Any]) -> None:
        """Destroy one orphan, unless a deploy recorded it meanwhile. Adapters also look their
        resources up by deployment name; when that name is recorded on this provider (a second
        resource beside a healthy one), the name is withheld so that only this resource goes."""
        provider = self.provider(entry["provider"])
        name = entry["deployment"] or ""
        with lock(self.settings.ensure_home(), name or "-"):
            rows = [r for r in self.state.rows(name) if r["provider"] == entry["provider"]] if name else []
            if any((res.kind, res.id) == (entry["kind"], entry["id"]) for r in rows for res in r["resources"]):
                return  # a deploy recorded it after the scan: not an orphan any more
            self.progress(f"destroying orphan {entry['kind']} {entry['id']} on {entry['provider']}")
            provider.destroy(Deployment(
                name="" if rows else name, provider=entry["provider"], spec=None,
                resources=[Resource(kind=entry["kind"], id=entry["id"])],
            ))

    def _forget_ghost(self, entry: dict[str, Any]) -> None:
        """Destroy what a ghost left behind (idempotent, verified) and forget it, unless a deploy
        brought it back meanwhile."""
        with lock(self.settings.ensure_home(), entry["deployment"]):
            row = next((r for r in self.state.rows(entry["deployment"]) if r["provider"] == entry["provider"]), None)
            if row is None:
                return
            if self.provider(row["provider"]).status(self.state.deployment(row)).state not in GONE:
                return
            self.progress(f"forgetting the ghost {row['name']} on {row['provider']}")
            self._destroy_row(row)
            if not self.state.rows(row["name"]):
                keys.forget_generated_key(self.settings, row["name"])

    def logs(self, name: str, follow: bool) -> Iterator[str]:
        rows = self.state.rows(name) if self.state_exists() else []
        if not rows:
            raise DeployerError(f"no deployment named {name!r}", hint="`deployer list` shows what exists")
        row = rows[-1]
        yield from self.provider(row["provider"]).logs(self.state.deployment(row), follow)


def deploy_hash(spec: Spec, artifacts: Artifacts) -> str:
    """What makes two deploys the same: the spec and what it renders to (with secrets redacted).

    Hashing the rendered artifacts as well means a deployer upgrade that changes what gets
    deployed (a new guard, a new flag) is applied by the next deploy instead of reported as
    unchanged."""
    rendered = json.dumps(artifacts.to_dict(), sort_keys=True, default=str).encode()
    return f"{spec.fingerprint()}-{hashlib.sha256(rendered).hexdigest()[:12]}"


def _action(spec: Spec, rows: list[dict[str, Any]], shape: str) -> str:
    same = next((r for r in rows if r["provider"] == spec.provider), None)
    if any(r["provider"] != spec.provider for r in rows):
        return "move"
    if same is None:
        return "create"
    return "unchanged" if same["spec_hash"] == shape and same["status"] == "ready" else "update"

