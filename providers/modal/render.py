"""The generated Modal app: every value resolved from the spec, then templates/modal_app.py.j2.

Pure: no I/O beyond reading the template, no clock, no secret values (the file names the
Secrets; their values are stored in Modal by the adapter).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deployer import templating
from deployer.provider import resource_name
from deployer.spec import Spec
from deployer.vllm_command import GUARD_FILE, serve_command

from . import sizing, validate

TEMPLATE = "modal_app.py.j2"
VLLM_PORT = 8000
CLASS_NAME = "Server"  # snapshot mode: the Modal Cls
WEB_FUNCTION = "serve"  # the web server function (plain) or method (snapshot)
TAG = "deployer-name"
GUARD_DIR = "/opt/deployer"  # where containers get the key guard (on vLLM's PYTHONPATH)


def app_name(spec: Spec) -> str:
    return resource_name(spec.name)


def key_secret_name(name: str) -> str:
    """The Modal Secret holding VLLM_API_KEY for deployment `name`."""
    return resource_name(name) + "-key"


def hf_secret_name(name: str) -> str:
    """The Modal Secret deployer creates for HF_TOKEN (when the spec names none)."""
    return resource_name(name) + "-hf"


def file_path(name: str) -> str:
    """Where the app file lives, relative to DEPLOYER_HOME (also its key in Artifacts.files)."""
    return f"modal/{name}/app.py"


def guard_path(name: str) -> str:
    """The key guard beside the app file (the app adds it to the image from there)."""
    return f"modal/{name}/{GUARD_FILE}"


@dataclass(frozen=True)
class AppPlan:
    """What the app file says, resolved (also what `plan` notes and the tests check)."""

    name: str
    app_name: str
    mode: validate.Mode
    gpu: str
    command: list[str]
    served: str
    startup_timeout: int
    timeout: int
    memory_mib: int | None
    key_secret: str
    hf_secret: str | None  # the Secret the app reads HF_TOKEN from, if any
    creates_hf_secret: bool  # deployer stores the local HF token in `hf_secret`
    image_env: dict[str, str] = field(default_factory=dict)

    @property
    def snapshot(self) -> bool:
        return self.mode == "snapshot"


def plan_app(spec: Spec, *, has_hf_token: bool) -> AppPlan:
    """Resolve the app from `spec`. Raises InputError for what Modal cannot serve."""
    opts = spec.options("modal")
    gpu = validate.gpu_string(spec)
    mode = validate.serving_mode(spec)
    validate.check_scaling(spec)
    startup = validate.startup_timeout(spec)
    overrides: dict[str, str | int | float | bool] = {}
    image_env = {"HF_XET_HIGH_PERFORMANCE": "1", "PYTHONPATH": GUARD_DIR}
    memory = opts.memory_mib
    if mode == "snapshot":
        overrides["enable-sleep-mode"] = True
        image_env |= {"VLLM_SERVER_DEV_MODE": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        memory = memory or sizing.snapshot_memory_mib(spec)
    command = serve_command(spec, host="0.0.0.0", port=VLLM_PORT, api_key=None, guard=True, overrides=overrides)
    if opts.hf_secret:
        hf_secret, creates = opts.hf_secret, False
    elif has_hf_token:
        hf_secret, creates = hf_secret_name(spec.name), True
    else:
        hf_secret, creates = None, False
    return AppPlan(
        name=spec.name, app_name=app_name(spec), mode=mode, gpu=gpu, command=command,
        served=spec.model.served, startup_timeout=startup, timeout=opts.timeout, memory_mib=memory,
        key_secret=key_secret_name(spec.name), hf_secret=hf_secret, creates_hf_secret=creates,
        image_env=image_env,
    )


def render_app(spec: Spec, plan: AppPlan) -> str:
    """The app file's text."""
    opts = spec.options("modal")
    scaling = spec.scaling
    return templating.render(
        TEMPLATE,
        name=spec.name,
        mode=plan.mode,
        snapshot=plan.snapshot,
        app_name=_lit(plan.app_name),
        served=_lit(plan.served),
        port=VLLM_PORT,
        startup_timeout=plan.startup_timeout,
        weights_gb=f"{sizing.weights_gb(spec):.1f}",
        command=_command_literal(plan.command),
        base_image=_lit(opts.base_image),
        python_version=_lit(opts.python_version),
        vllm_requirement=_lit(f"vllm=={opts.vllm_version}"),
        image_env=_lit(plan.image_env),
        hf_cache_volume=_lit(opts.hf_cache_volume),
        vllm_cache_volume=_lit(opts.vllm_cache_volume),
        key_secret=_lit(plan.key_secret),
        guard_file=_lit(GUARD_FILE),
        guard_remote=_lit(f"{GUARD_DIR}/{GUARD_FILE}"),
        hf_secret=_lit(plan.hf_secret) if plan.hf_secret else None,
        tags=_lit({TAG: spec.name}),
        gpu=_lit(plan.gpu),
        memory_mib=plan.memory_mib,
        timeout=plan.timeout,
        scaledown_window=scaling.idle_timeout,
        min_containers=scaling.min_replicas,
        max_containers=scaling.max_replicas,
        buffer_containers=opts.buffer_containers,
        concurrency=scaling.concurrency,
    )


def _lit(value: Any) -> str:
    """A Python literal for a str, int, or list/dict of them (JSON's syntax is Python's here)."""
    return json.dumps(value)


def _command_literal(argv: list[str]) -> str:
    """The command as a Python list, one flag (with its value) per line."""
    lines: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            lines.append(f"{_lit(item)}, {_lit(argv[i + 1])},")
            i += 2
        else:
            lines.append(f"{_lit(item)},")
            i += 1
    return "[\n" + "".join(f"    {line}\n" for line in lines) + "]"
