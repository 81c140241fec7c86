"""The gateway file: one URL over several deployments, validated like the spec.

    name: hybrid                     # the gateway's name: its key file, its traffic in state
    listen: {host: 127.0.0.1, port: 8800}
    routes:
      - model: tiny                  # what clients send as `model`
        policy: primary-overflow     # primary-overflow | failover | weighted
        backends: [tiny-lambda, tiny-runpod]   # recorded deployment names, in order

`load_routes` checks the file alone (no state is read): every problem is one InputError naming
the file, the line, the key path and a hint. Whether the deployments exist is checked when the
gateway starts (`deployer.gateway.backends.resolve`).
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InputError
from ..spec import Name
from ..yaml_errors import describe_validation_error, locate, read_yaml_file

POLICIES = ("primary-overflow", "failover", "weighted")
Policy = Literal["primary-overflow", "failover", "weighted"]
ProbeMode = Literal["always", "when-out"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend(Strict):
    deployment: Name = Field(description="A deployment name as `deployer list` shows it.")
    weight: float | None = Field(None, gt=0, description="Share of requests (policy weighted only; default 1).")
    max_in_flight: int | None = Field(
        None, ge=1, le=100_000,
        description="Requests in flight before the next backend takes the overflow (policy primary-overflow "
        "only; default: the deployment's scaling.concurrency).")
    probe: ProbeMode | None = Field(
        None, description="always: probed every health.interval; when-out: probed only while out of rotation "
        "(default for deployments that scale to zero, whose probes would keep a worker billing).")



class Route(Strict):
    model: str = Field(min_length=1, max_length=200, description="The model name clients send (an alias).")
    policy: Policy = Field("failover", description="How a request picks its backend: " + ", ".join(POLICIES) + ".")
    backends: list[Backend] = Field(min_length=1, description="Deployments, in order of preference.")

    @field_validator("backends", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`- tiny-lambda` is short for `- {deployment: tiny-lambda}`."""
        if isinstance(value, list):
            return [{"deployment": item} if isinstance(item, str) else item for item in value]
        return value


class Listen(Strict):
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 exposes the gateway to the network.")
    port: int = Field(8800, ge=1, le=65535)


class Health(Strict):
    interval: float = Field(5.0, ge=0.05, le=3600, description="Seconds between probes of a backend.")
    timeout: float = Field(5.0, gt=0, le=600, description="Seconds one probe may take.")
    failures: int = Field(3, ge=1, le=100, description="Consecutive failed requests (5xx, timeouts) that take a "
                          "backend out of rotation; a refused connection or a failed probe does at once.")


class Timeouts(Strict):
    connect: float = Field(5.0, gt=0, le=600, description="Seconds to connect to a backend.")
    first_byte: float = Field(
        300.0, gt=0, le=86_400,
        description="Seconds a backend may take to send the first byte of its answer (then the next backend "
        "is tried), and between two chunks of a stream (then the stream ends with an error).")


class Auth(Strict):
    api_key_env: str | None = Field(
        None, description="Environment variable holding the gateway's client key; unset: a key is generated "
        "into DEPLOYER_HOME/keys/gateways/NAME.key (0600).")


class GatewayConfig(Strict):
    name: Name = Field(description="The gateway's name: 2-32 lowercase letters, digits and dashes.")
    listen: Listen = Field(default_factory=Listen)
    routes: list[Route] = Field(min_length=1)
    health: Health = Field(default_factory=Health)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    auth: Auth = Field(default_factory=Auth)

    def route(self, model: str) -> Route | None:
        return next((r for r in self.routes if r.model == model), None)

    def deployments(self) -> list[str]:
        """Every deployment the routes name, once each, in order of first mention."""
        return list(dict.fromkeys(b.deployment for r in self.routes for b in r.backends))

    @property
    def local_url(self) -> str:
        """The base URL (…/v1) a client on this machine uses."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.listen.host, self.listen.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.listen.port}/v1"


def load_routes(path: str | Path) -> tuple[GatewayConfig, dict[tuple[Any, ...], int]]:
    """Read and validate a gateway file; return it and its key-path -> line map (for messages
    about deployments found missing later). Reads no state. Raises InputError (exit code 2)."""
    path = Path(path)
    data, lines = read_yaml_file(path, missing_hint="pass the path of a gateway file (see README, "
                                 "`One URL over several deployments`)")
    if not isinstance(data, dict):
        raise InputError(f"{path}: a gateway file is a mapping of keys (name, listen, routes, ...)")
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, str(path), lines, GatewayConfig)) from None
    _check_consistency(config, str(path), lines)
    return config, lines


def _check_consistency(config: GatewayConfig, source: str, lines: dict[tuple[Any, ...], int]) -> None:
    """What pydantic's per-field checks cannot see: duplicates and options another policy owns."""
    problems: list[str] = []
    seen_models: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        if route.model in seen_models:
            problems.append(f"{locate(source, lines, ('routes', i, 'model'))}: model {route.model!r} is routed "
                            f"twice (also routes.{seen_models[route.model]})")
        seen_models.setdefault(route.model, i)
        seen: set[str] = set()
        for j, backend in enumerate(route.backends):
            at = ("routes", i, "backends", j)
            if backend.deployment in seen:
                problems.append(f"{locate(source, lines, (*at, 'deployment'))}: {backend.deployment!r} is listed "
                                "twice in this route")
            seen.add(backend.deployment)
            if backend.weight is not None and route.policy != "weighted":
                problems.append(f"{locate(source, lines, (*at, 'weight'))}: only policy weighted uses weights "
                                f"(this route's policy is {route.policy})")
            if backend.max_in_flight is not None and route.policy != "primary-overflow":
                problems.append(f"{locate(source, lines, (*at, 'max_in_flight'))}: only policy primary-overflow "
                                f"uses max_in_flight (this route's policy is {route.policy})")
    for option in ("max_in_flight", "probe"):  # they belong to the deployment, not to one route
        given: dict[str, Any] = {}
        for i, route in enumerate(config.routes):
            for j, backend in enumerate(route.backends):
                value = getattr(backend, option)
                if value is None:
                    continue
                if backend.deployment in given and given[backend.deployment] != value:
                    problems.append(f"{locate(source, lines, ('routes', i, 'backends', j, option))}: "
                                    f"{backend.deployment!r} has another {option} in an earlier route "
                                    f"({given[backend.deployment]!r}); give it once")
                given.setdefault(backend.deployment, value)
    if problems:
        raise InputError("\n".join(problems[:8]))


def unknown_deployment(name: str, known: list[str], source: str, lines: dict[tuple[Any, ...], int],
                       config: GatewayConfig) -> InputError:
    """The error for a deployment the routes name but the state does not record: where the
    first mention is, and the closest recorded name."""
    loc: tuple[Any, ...] = ("routes",)
    for i, route in enumerate(config.routes):
        for j, backend in enumerate(route.backends):
            if backend.deployment == name:
                loc = ("routes", i, "backends", j, "deployment")
                break
        else:
            continue
        break
    close = get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(f"{locate(source, lines, loc)}: no deployment named {name!r} is recorded{hint}",
                      hint="`deployer list` shows the recorded deployments; `deployer deploy SPEC` makes one")
