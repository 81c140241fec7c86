"""Spec -> RunPod REST v2 bodies. Pure functions: no I/O, no clock.

The endpoint runs RunPod's vLLM worker, which reads its engine settings from environment
variables: MODEL_NAME, MODEL_REVISION, OPENAI_SERVED_MODEL_NAME_OVERRIDE, and any `vllm serve`
flag in UPPER_SNAKE form (`max-model-len: 256` -> MAX_MODEL_LEN=256, `enforce-eager: true` ->
ENFORCE_EAGER=true). The flags come from `deployer.vllm_command.engine_flags`, the same builder
every other backend uses, so a flag is right everywhere or wrong everywhere.
"""

from __future__ import annotations

from typing import Any

from deployer.errors import InputError
from deployer.provider import Secrets, resource_name
from deployer.spec import Spec
from deployer.vllm_command import FlagValue, engine_flags

from .gpus import Selection
from .options import Options

DEFAULT_HF_SECRET = "hf_token"

# Names the worker reads for itself (or ignores); an engine flag must not land on one of them.
WORKER_OWNED_ENV = {
    "HOST": "the worker pins it",
    "PORT": "the worker pins it",
    "API_KEY": "RunPod authenticates callers with your RunPod key",
    "MODEL": "model.id becomes MODEL_NAME",
    "CONFIG": "the worker reads VLLM_CONFIG_FILE instead",
    "HELP": "not a serving flag",
    "HF_TOKEN": "set secrets.hf_token_env; the token goes to RunPod as a secret reference",
    "MAX_CONCURRENCY": "scaling.concurrency sets it",
    "BASE_PATH": "the worker's cache root",
    "VLLM_PORT": "the worker's internal port",
    "VLLM_STARTUP_TIMEOUT": "the worker's start-up limit",
    "REQUEST_TIMEOUT": "providers.runpod.execution_timeout bounds requests",
    "VLLM_EXTRA_ARGS": "the worker's raw passthrough",
}


def secret_ref(name: str) -> str:
    """How a RunPod account secret is referenced from an env value."""
    return "{{ RUNPOD_SECRET_%s }}" % name


def hf_secret_name(options: Options, secrets: Secrets) -> str | None:
    """The RunPod secret HF_TOKEN refers to: the configured name, else `hf_token` when the user
    has a token locally (a reference to a secret that does not exist would break public models)."""
    if options.hf_secret_name:
        return options.hf_secret_name
    return DEFAULT_HF_SECRET if secrets.hf_token else None


def env_value(value: FlagValue) -> str:
    """A flag value as the worker expects it in an env var (booleans as true/false)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def worker_env(spec: Spec, secrets: Secrets, options: Options) -> dict[str, str]:
    """The worker's environment. Raises InputError for an engine flag the worker cannot take as env."""
    env = {"MODEL_NAME": spec.model.id}
    for flag, value in engine_flags(spec).items():
        if flag == "served-model-name":
            env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = env_value(value)
        elif flag == "revision":
            env["MODEL_REVISION"] = env_value(value)
        else:
            name = flag.upper().replace("-", "_")
            if name in WORKER_OWNED_ENV:
                raise InputError(
                    f"model.engine_args.{flag} cannot be passed to RunPod's vLLM worker: {WORKER_OWNED_ENV[name]}"
                )
            env[name] = env_value(value)
    env["MAX_CONCURRENCY"] = str(spec.scaling.concurrency)
    secret = hf_secret_name(options, secrets)
    if secret:
        env["HF_TOKEN"] = secret_ref(secret)
    return env


def create_body(spec: Spec, secrets: Secrets, options: Options, selection: Selection) -> dict[str, Any]:
    """The `POST /v2/serverless` body (CreateEndpointRequest) for `spec`."""
    gpu: dict[str, Any] = {"pools": list(selection.pools), "count": spec.resources.count,
                           "allowedCudaVersions": list(options.allowed_cuda_versions)}
    if selection.excluded_types:
        gpu["excludedTypes"] = list(selection.excluded_types)
    body: dict[str, Any] = {
        "name": resource_name(spec.name),
        "type": "QUEUE",
        "image": options.image,
        "env": worker_env(spec, secrets, options),
        "disk": options.container_disk_gb,
        "gpu": gpu,
        "workers": {
            "min": spec.scaling.min_replicas,
            "max": spec.scaling.max_replicas,
            "idleTimeout": spec.scaling.idle_timeout,
        },
        "scaling": {"type": "QUEUE_DELAY", "queueDelay": options.queue_delay},
        "flashboot": options.flashboot if spec.startup.fast_boot else "OFF",
        "timeout": options.execution_timeout * 1000,
    }
    if options.network_volume_id:
        body["networkVolumes"] = [options.network_volume_id]
    if options.data_centers:
        body["dataCenterIds"] = list(options.data_centers)
    return body


def update_body(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The `PATCH /v2/serverless/{id}` body that turns `current` (an Endpoint) into `desired`
    (a create body): only what differs. Empty means nothing to change."""
    patch: dict[str, Any] = {}
    for key in ("image", "env", "disk", "flashboot", "timeout"):
        if current.get(key) != desired.get(key):
            patch[key] = desired.get(key)
    for key in ("networkVolumes", "dataCenterIds"):
        if sorted(current.get(key) or []) != sorted(desired.get(key) or []):
            patch[key] = list(desired.get(key) or [])
    workers = current.get("workers") or {}
    if any(workers.get(k) != v for k, v in desired["workers"].items()):
        patch["workers"] = dict(desired["workers"])
    if current.get("scaling") != desired["scaling"]:
        patch["scaling"] = dict(desired["scaling"])
    gpu = _gpu_patch(current.get("gpu") or {}, desired["gpu"])
    if gpu:
        patch["gpu"] = gpu
    return patch


def _gpu_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    if set(current.get("pools") or []) != set(desired["pools"]) or set(current.get("excludedTypes") or []) != set(
        desired.get("excludedTypes") or []
    ):
        # pools and excludedTypes are one selection: sending pools alone clears the exclusions.
        patch["pools"] = list(desired["pools"])
        if desired.get("excludedTypes"):
            patch["excludedTypes"] = list(desired["excludedTypes"])
    if current.get("count", 1) != desired["count"]:
        patch["count"] = desired["count"]
    if list(current.get("allowedCudaVersions") or []) != list(desired["allowedCudaVersions"]):
        patch["allowedCudaVersions"] = list(desired["allowedCudaVersions"])
        if current.get("minCudaVersion") and desired["allowedCudaVersions"]:
            patch["minCudaVersion"] = ""  # a floor beside a set is a 400; clear it
    return patch
