"""The Lambda Cloud API calls deployer makes, typed, paced and phrased in Lambda's terms.

Every call of a process goes through one shared rate limiter (Lambda: about 1 request per
second overall, launches at most 1 per 12 s), so a deploy never provokes a 429. Errors become
`ProviderError` carrying Lambda's `error.code` and its suggestion as the hint.

Instance bodies carry live credentials (`jupyter_token`, `jupyter_url`): `Instance.from_api`
drops them at once, so nothing downstream can log or store them. `user_data` is sent, never
logged, and Lambda never returns it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from deployer.errors import MissingCredentialsError, ProviderError
from deployer.http import ApiClient, RateLimiter
from deployer.settings import blank_variables

from .settings import LambdaSettings

PROVIDER = "lambda"
INSUFFICIENT_CAPACITY = "instance-operations/launch/insufficient-capacity"
NOT_FOUND_CODES = ("global/object-does-not-exist", "global/not-found")
RULESET_IN_USE = "firewall-rulesets/firewall-ruleset-in-use"

_limiters: dict[tuple[float, float], RateLimiter] = {}
_limiters_lock = threading.Lock()


def shared_limiter(rate_interval: float, launch_interval: float) -> RateLimiter:
    """The process-wide limiter for these intervals (one per distinct setting, normally one)."""
    with _limiters_lock:
        key = (rate_interval, launch_interval)
        if key not in _limiters:
            _limiters[key] = RateLimiter(default=rate_interval, launch=launch_interval)
        return _limiters[key]


def describe(response: httpx.Response) -> ProviderError:
    """A Lambda error response as a ProviderError: `code: message`, suggestion as the hint."""
    status = response.status_code
    code = message = suggestion = None
    try:
        error = response.json().get("error") or {}
        code, message, suggestion = error.get("code"), error.get("message"), error.get("suggestion")
    except (ValueError, AttributeError):
        pass
    if status == 429:
        return ProviderError(PROVIDER, f"rate limited (HTTP 429{', ' + code if code else ''})", status=429, code=code,
                             hint="Lambda allows about 1 request per second and 1 launch per 12 s; wait and retry")
    if status == 401 and not code:
        code = "global/invalid-api-key"
    text = f"{code}: {message}" if code and message else (code or f"HTTP {status}: {response.text[:160]}")
    hint = suggestion
    if code == "global/invalid-api-key":
        hint = (suggestion + " " if suggestion else "") + "(deployer reads LAMBDA_API_KEY or ~/.lambda_cloud/lambda_keys)"
    return ProviderError(PROVIDER, text, status=status, code=code, hint=hint)


@dataclass(frozen=True)
class Instance:
    """What deployer keeps of an instance body (never the jupyter credentials)."""

    id: str
    name: str
    status: str
    ip: str | None
    region: str
    type: str
    price_cents_per_hour: int | None
    tags: dict[str, str] = field(default_factory=dict)
    ruleset_ids: tuple[str, ...] = ()
    file_systems: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Instance:
        itype = body.get("instance_type") or {}
        return cls(
            id=body["id"],
            name=body.get("name") or "",
            status=body.get("status") or "unknown",
            ip=body.get("ip") or None,
            region=(body.get("region") or {}).get("name", ""),
            type=itype.get("name", ""),
            price_cents_per_hour=itype.get("price_cents_per_hour"),
            tags={t["key"]: t["value"] for t in body.get("tags") or []},
            ruleset_ids=tuple(r["id"] for r in body.get("firewall_rulesets") or []),
            file_systems=tuple(body.get("file_system_names") or []),
        )


@dataclass(frozen=True)
class TypeOffer:
    """One entry of GET /instance-types."""

    name: str
    description: str
    gpu_description: str
    price_cents_per_hour: int
    gpus: int
    regions: tuple[str, ...]  # regions_with_capacity_available, in Lambda's order


@dataclass(frozen=True)
class Ruleset:
    id: str
    name: str
    region: str
    rules: tuple[dict[str, Any], ...]
    instance_ids: tuple[str, ...]


@dataclass(frozen=True)
class SshKey:
    id: str
    name: str
    public_key: str


@dataclass(frozen=True)
class Filesystem:
    id: str
    name: str
    region: str
    mount_point: str
    in_use: bool


class LambdaApi:
    """Blocking calls to one Lambda account. Raises ProviderError (Lambda's code and suggestion);
    `MissingCredentialsError` at construction when no API key is configured."""

    def __init__(self, settings: LambdaSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        if settings.api_key is None:
            raise MissingCredentialsError(
                PROVIDER, "Lambda Cloud API key", blank=blank_variables("LAMBDA_API_KEY", "DEPLOYER_LAMBDA_API_KEY"),
                hint="export LAMBDA_API_KEY=... or put `api_key = ...` in ~/.lambda_cloud/lambda_keys "
                "(keys: https://cloud.lambda.ai/api-keys)",
            )
        self.settings = settings
        limiter = shared_limiter(settings.rate_interval, settings.launch_interval)
        common = dict(
            headers={
                "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
                "Accept": "application/json",
                "User-Agent": "deployer",
            },
            describe=describe,
            limiter=limiter,
            timeout=settings.request_timeout,
            backoff=settings.retry_backoff,
            transport=transport,
        )
        self._http = ApiClient(PROVIDER, settings.api_url, **common)  # type: ignore[arg-type]
        # Creating calls are never retried blindly: a lost answer may hide what was created, so
        # the caller looks it up by name first (see adapter.Provider._create_once).
        self._once = ApiClient(PROVIDER, settings.api_url, retries=0, **common)  # type: ignore[arg-type]

    def close(self) -> None:
        self._http.close()
        self._once.close()

    def url(self, path: str) -> str:
        return self._http.url(path)

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._http.request(method, path, **kwargs).json()["data"]

    # -- catalog --------------------------------------------------------------------------

    def instance_types(self) -> dict[str, TypeOffer]:
        """GET /instance-types: every type with its live price and the regions with capacity now."""
        out = {}
        for name, item in self._data("GET", "/instance-types").items():
            itype = item["instance_type"]
            out[name] = TypeOffer(
                name=itype["name"],
                description=itype.get("description", ""),
                gpu_description=itype.get("gpu_description", ""),
                price_cents_per_hour=itype["price_cents_per_hour"],
                gpus=itype["specs"]["gpus"],
                regions=tuple(r["name"] for r in item["regions_with_capacity_available"]),
            )
        return out

    def images(self) -> list[dict[str, Any]]:
        return self._data("GET", "/images")

    # -- instances ------------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        return [Instance.from_api(body) for body in self._data("GET", "/instances")]

    def instance(self, instance_id: str) -> Instance | None:
        """The instance, or None when Lambda no longer knows it (404)."""
        try:
            return Instance.from_api(self._data("GET", f"/instances/{instance_id}"))
        except ProviderError as exc:
            if exc.status == 404:
                return None
            raise

    def launch(self, body: dict[str, Any]) -> str:
        """POST /instance-operations/launch once (paced by the launch bucket); the new id.

        Not retried here (nor are the other creating calls): on a network error, 429 or 5xx the
        caller must look the instance up by name before trying again. Raises ProviderError (e.g. code INSUFFICIENT_CAPACITY)."""
        response = self._once.request("POST", "/instance-operations/launch", json=body, bucket="launch")
        ids = response.json()["data"]["instance_ids"]
        if len(ids) != 1:
            raise ProviderError(PROVIDER, f"launch returned {len(ids)} instance ids, expected one: {ids}")
        return ids[0]

    def terminate(self, instance_id: str) -> bool:
        """Ask Lambda to terminate one instance. False when it is already gone (404)."""
        try:
            self._http.request("POST", "/instance-operations/terminate", json={"instance_ids": [instance_id]},
                               idempotent=True)
            return True
        except ProviderError as exc:
            if exc.status == 404:
                return False
            raise

    # -- ssh keys -------------------------------------------------------------------------

    def ssh_keys(self) -> list[SshKey]:
        return [SshKey(k["id"], k["name"], k["public_key"]) for k in self._data("GET", "/ssh-keys")]

    def add_ssh_key(self, name: str, public_key: str) -> SshKey:
        k = self._once.request("POST", "/ssh-keys", json={"name": name, "public_key": public_key}).json()["data"]
        return SshKey(k["id"], k["name"], k["public_key"])

    # -- firewall rulesets ----------------------------------------------------------------

    def rulesets(self) -> list[Ruleset]:
        return [_ruleset(r) for r in self._data("GET", "/firewall-rulesets")]

    def create_ruleset(self, body: dict[str, Any]) -> Ruleset:
        return _ruleset(self._once.request("POST", "/firewall-rulesets", json=body).json()["data"])

    def update_ruleset_rules(self, ruleset_id: str, rules: list[dict[str, Any]]) -> Ruleset:
        return _ruleset(self._data("PATCH", f"/firewall-rulesets/{ruleset_id}", json={"rules": rules},
                                   idempotent=True))

    def delete_ruleset(self, ruleset_id: str) -> bool:
        """Delete a ruleset; False when it is already gone (404). Raises ProviderError with code
        RULESET_IN_USE while an instance that is not yet terminated still uses it."""
        try:
            self._http.request("DELETE", f"/firewall-rulesets/{ruleset_id}")
            return True
        except ProviderError as exc:
            if exc.status == 404:
                return False
            raise

    # -- filesystems ----------------------------------------------------------------------

    def filesystems(self) -> list[Filesystem]:
        return [_filesystem(f) for f in self._data("GET", "/file-systems")]

    def create_filesystem(self, name: str, region: str) -> Filesystem:
        body = {"name": name, "region": region}
        return _filesystem(self._once.request("POST", "/filesystems", json=body).json()["data"])


def _ruleset(body: dict[str, Any]) -> Ruleset:
    return Ruleset(
        id=body["id"], name=body["name"], region=body["region"]["name"],
        rules=tuple(body.get("rules") or ()), instance_ids=tuple(body.get("instance_ids") or ()),
    )


def _filesystem(body: dict[str, Any]) -> Filesystem:
    return Filesystem(
        id=body["id"], name=body["name"], region=body["region"]["name"],
        mount_point=body["mount_point"], in_use=bool(body.get("is_in_use")),
    )
