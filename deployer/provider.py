"""The contract between the core and a backend.

A backend is small: it renders what it would send (pure), applies it, reports status,
destroys idempotently, and lists what it owns. The core does everything else: state, locking,
readiness (through `deployer.client`), provider switches and output.

Lifecycle of `deploy` as the core drives it:
    artifacts = provider.render(spec, secrets)              # pure, also what `plan` prints
    endpoint  = provider.apply(spec, secrets, current, record)
    wait until `endpoint` answers, polling provider.probe(deployment) to fail fast
    on failure: provider.not_ready(deployment, reason)

Every resource id must go through `record` the moment the provider returns it, before any other
call: a crash after that point leaves state from which `destroy` can find and remove it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .spec import Spec

REDACTED = "<redacted>"
NAME_PREFIX = "dplr-"
"""Every cloud resource's name starts with this prefix and the deployment name, so a scan
finds what the state lost. Tags/labels carry `deployer-name=<name>` where the provider has them."""


def resource_name(deployment: str) -> str:
    """The provider-side name of a deployment's resources: prefix + deployment name."""
    return NAME_PREFIX + deployment


def deployment_of(resource_name_: str) -> str | None:
    """The deployment name inside a provider-side name, or None when it is not ours."""
    return resource_name_[len(NAME_PREFIX):] if resource_name_.startswith(NAME_PREFIX) else None


@dataclass(frozen=True)
class Secrets:
    """Secret values handed to `render`/`apply`. `redacted()` is what `plan` renders with.

    `api_key` is the endpoint key vLLM must require (the provider may use its own platform key
    instead, as RunPod does). `hf_token` is None when the user has none.
    """

    api_key: str
    hf_token: str | None = None

    @classmethod
    def redacted(cls, *, has_hf_token: bool = True) -> Secrets:
        return cls(api_key=REDACTED, hf_token=REDACTED if has_hf_token else None)

    def __repr__(self) -> str:  # never print a secret by accident
        return "Secrets(<hidden>)"

    def scrub(self, text: str) -> str:
        """`text` with every secret value replaced by REDACTED."""
        for value in (self.api_key, self.hf_token):
            if value and value != REDACTED:
                text = text.replace(value, REDACTED)
        return text


@dataclass(frozen=True)
class Request:
    """One control-plane call, as `plan --json` shows it (secrets redacted)."""

    method: str
    url: str
    json: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, "json": self.json}


@dataclass
class Artifacts:
    """What a deploy will send: rendered files (path -> text) and control-plane calls, in order.

    `notes` are human lines for `plan` (e.g. "GPU pool resolved from the catalog at deploy time").
    """

    files: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"files": dict(self.files), "requests": [r.to_dict() for r in self.requests]}


@dataclass(frozen=True)
class Endpoint:
    """Where clients reach a deployment: the OpenAI base URL (ends in /v1) and its key.

    `key_source` says in words which key clients send (e.g. "the RunPod API key").
    """

    url: str
    api_key: str
    model: str
    key_source: str = "the deployment's API key"
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Endpoint(url={self.url!r}, model={self.model!r})"


@dataclass
class Resource:
    """A provider-side thing that bills or guards something, as recorded in state."""

    kind: str  # e.g. "endpoint", "instance", "firewall-ruleset", "process", "app"
    id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Deployment:
    """A deployment as the state store knows it; what status/destroy/probe receive."""

    name: str
    provider: str
    spec: Spec | None
    resources: list[Resource] = field(default_factory=list)
    url: str | None = None
    status: str = "unknown"

    def resource(self, kind: str) -> Resource | None:
        """The newest recorded resource of `kind`, if any."""
        found = [r for r in self.resources if r.kind == kind]
        return found[-1] if found else None


@dataclass
class StatusReport:
    """`state` is one word (ready, starting, failed, stopped, gone, ...); `details` are shown as a table."""

    state: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Owned:
    """Something a provider holds that carries our prefix or tags (for `gc`)."""

    provider: str
    kind: str
    id: str
    deployment: str | None
    details: dict[str, Any] = field(default_factory=dict)


class Recorder(Protocol):
    def __call__(self, kind: str, id: str, /, **extra: Any) -> None:
        """Persist a resource id now (durably, before returning)."""


class Provider(Protocol):
    """One backend. Implementations take a `deployer.settings.Settings` in __init__ and must not
    touch the network there."""

    name: str

    def render(self, spec: Spec, secrets: Secrets) -> Artifacts:
        """Pure: no I/O, no clock. Same inputs, same artifacts. With `Secrets.redacted()` the result
        contains no secret. Raises InputError when the spec cannot be served by this backend."""
        ...

    def apply(self, spec: Spec, secrets: Secrets, current: Deployment | None, record: Recorder) -> Endpoint:
        """Create the deployment, or update `current` in place where the provider can.

        Blocks until the provider has accepted everything and the endpoint's URL is known (not
        until it answers). Calls `record` with each resource id as soon as it is returned.
        Raises ProviderError in the provider's terms."""
        ...

    def probe(self, deployment: Deployment) -> str | None:
        """While the core waits for readiness: None if things may still come up, else the reason
        they will not (process exited, workers crash-looping, instance unhealthy)."""
        ...

    def not_ready(self, deployment: Deployment, reason: str) -> str:
        """Called once when readiness failed. Returns a diagnosis for the user; may tear down
        (say so in the message) when leaving it up would bill for nothing."""
        ...

    def readiness_timeout(self, spec: Spec) -> float:
        """Default seconds to wait for readiness, sized for the model and the provider."""
        ...

    def probe_timeout(self) -> float:
        """Seconds one readiness request may take before it counts as a failed attempt (then
        `probe` is asked at once). Short, so a crash loop is noticed in seconds; control-plane
        calls have their own, longer timeout."""
        ...

    def client_key(self, deployment: Deployment) -> str | None:
        """The key clients send to the deployment's endpoint, from local credentials only (the
        generated key file, the variable `auth.api_key_env` names, the provider's own key). No
        network; None when it is not at hand. Never logged or stored."""
        ...

    def status(self, deployment: Deployment) -> StatusReport:
        """Current state from the provider; `gone` when it no longer exists."""
        ...

    def destroy(self, deployment: Deployment) -> None:
        """Remove everything recorded for `deployment` and verify it is gone. Idempotent: what is
        already gone counts as destroyed. Blocks until verified; raises ProviderError if not."""
        ...

    def list_owned(self) -> list[Owned]:
        """Everything the provider holds with our name prefix or tags. Needs credentials."""
        ...

    def logs(self, deployment: Deployment, follow: bool = False) -> Iterator[str]:
        """Log lines of what serves the deployment; with `follow`, keeps yielding until interrupted."""
        ...

    def has_credentials(self) -> bool:
        """Whether this backend can talk to its provider (for `gc` and live prices)."""
        ...

    # Optional: `deployer bench --cold` calls it when the backend has it (a backend without it
    # cannot have a cold start measured).

    def make_cold(self, deployment: Deployment, record: Recorder, timeout: float) -> str:
        """Bring the deployment to where its very next request pays a full cold start; return one
        line saying what was done (shown in the bench report).

        A backend that scales to zero changes nothing: it blocks, polling the provider, until the
        provider reports no worker or container for the deployment (the scale-down window has
        passed), and returns then. A backend that cannot start on demand (local) stops what serves
        the deployment and starts it again from what was recorded, records new ids through
        `record`, and returns as soon as it is started, not serving: the cold start runs from that
        moment. Either way the caller times its first request to the first token, retrying while
        the endpoint refuses connections or answers 502/503, and the URL stays the same.

        Idempotent: on a deployment already cold it returns at once (a restart-based backend
        starts it again, which leaves it just as cold). Blocks at most `timeout` seconds for
        scale-down. Raises InputError when the deployment can never be cold (a VM; warm
        `scaling.min_replicas`), ProviderError in the provider's terms when the provider fails,
        the deployment is gone, or workers are still reported after `timeout`."""
        ...
