"""`bench --cold`: one cold start, measured, beside the capacity model's prediction.

The provider's optional `make_cold` (deployer/provider.py) brings the deployment to where its
next request pays a full cold start: RunPod and Modal wait until they report no worker or
container, local restarts its server, Lambda refuses (a VM never scales to zero). The moment it
returns, the clock starts; the first request goes out at once and is sent again while nothing
listens yet (connection refused, 502/503), and the cold start is that moment -> first token.
The deployment's lock is held while `make_cold` runs, so no deploy or destroy of the same name
changes it meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from deployer.errors import DeployerError, InputError
from deployer.orchestrator import Orchestrator, Target
from deployer.state import lock

from .load import LoadSpec, first_token

COLD_GRACE_S = 180.0
"""Seconds `make_cold` may wait beyond the scale-down window (scaling.idle_timeout): providers
scale down on their own schedule, a little after the window."""


def check_supported(orch: Orchestrator, target: Target) -> Callable[..., str]:
    """The provider's `make_cold`; raises InputError when the backend has none."""
    provider = orch.provider(target.deployment.provider)
    make_cold = getattr(provider, "make_cold", None)
    if make_cold is None:
        raise InputError(f"{target.deployment.provider} cannot have a cold start measured",
                         hint=f"run `deployer bench {target.deployment.name}` without --cold")
    return make_cold


def measure(orch: Orchestrator, target: Target, spec: LoadSpec, progress: Callable[[str], None]) -> dict[str, Any]:
    """Make the deployment cold, then time its first request to the first token. Blocks (up to
    the scale-down window plus COLD_GRACE_S, then the readiness timeout). Raises InputError when
    the deployment cannot be cold, ProviderError when the provider fails; a first request that
    fails is reported (`error`), not raised."""
    deployment, endpoint = target.deployment, target.endpoint
    make_cold = check_supported(orch, target)
    provider = orch.provider(deployment.provider)
    assert deployment.spec is not None  # target() refuses a deployment without a readable spec
    wait = float(deployment.spec.scaling.idle_timeout) + COLD_GRACE_S

    def record(kind: str, id: str, /, **extra: Any) -> None:
        orch.state.record_resource(deployment.name, deployment.provider, kind, id, **extra)

    progress(f"making {deployment.name} cold on {deployment.provider} (up to {wait:.0f} s)")
    began = time.monotonic()
    with lock(orch.settings.ensure_home(), deployment.name):
        how = make_cold(deployment, record, wait)
    since = time.monotonic()
    progress(f"cold: {how}; timing the first request to its first token")
    limit = deployment.spec.startup.readiness_timeout or provider.readiness_timeout(deployment.spec)
    result, attempts = asyncio.run(first_token(endpoint, spec, since=since, timeout_s=limit))
    predicted, note = prediction(deployment.spec, deployment.provider)
    return {
        "measured_s": result.sent_at + result.ttft_s - since if result.ok and result.ttft_s is not None else None,
        "ttft_s": result.ttft_s,
        "e2e_s": result.e2e_s,
        "attempts": attempts,
        "error": result.error,
        "error_detail": result.detail,
        "how": how,
        "waited_s": since - began,
        "predicted": predicted,
        "predicted_note": note,
    }


def prediction(spec: Any, provider: str) -> tuple[dict[str, Any] | None, str]:
    """The capacity model's cold start of `spec` on `provider` (range, floor, levers), or None and why."""
    if spec.resources.gpu is None:
        return None, "no resources.gpu: the capacity model predicts cold starts on cloud GPUs only"
    from deployer.costing import capacity, catalog

    try:
        report = capacity.estimate(spec, catalog=catalog.load(live=False))
    except DeployerError as exc:
        return None, f"no prediction: {exc.message}"
    found = next((c for c in report.cold_start if c.provider == provider), None)
    if found is None:
        why = "model size unknown (set model.params_b)" if report.weights_gib is None else \
            f"the capacity model has no cold-start figures for {provider}"
        return None, why
    what = "cold start" if found.scales_to_zero else "start (once per deploy)"
    return found.to_dict(), (f"{found.label}: {what} {found.low_s:.0f}-{found.high_s:.0f} s for "
                             f"{report.weights_gib:.2f} GiB of weights on {spec.resources.count}x {spec.resources.gpu}")
