"""The one place where a spec becomes vLLM engine flags.

Every backend starts vLLM from here: as argv (`vllm serve MODEL --flag value ...`: local, Modal,
Lambda) or as the same flags in another form (RunPod's worker reads them as env vars). A flag
is therefore right everywhere or wrong everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from .spec import Spec

FlagValue = str | int | float | bool

# deployer's key check in front of every route (vLLM's own covers /v1 only): templates/ ships the
# module; each backend puts it in a directory on vLLM's PYTHONPATH and the key in VLLM_API_KEY.
GUARD_MODULE = "deployer_vllm_guard"
GUARD_FILE = f"{GUARD_MODULE}.py"
GUARD_MIDDLEWARE = f"{GUARD_MODULE}.RequireKey"


def guard_source() -> str:
    """The text of the guard module, to be written where vLLM imports it from."""
    from .templating import templates_dir

    return (templates_dir() / GUARD_FILE).read_text()


def engine_flags(spec: Spec, *, overrides: Mapping[str, FlagValue] | None = None) -> dict[str, FlagValue]:
    """The `vllm serve` flags for `spec` (names without --), in a stable order.

    Serving-side flags (host, port, api-key, the key guard) are not included: `serve_argv` adds
    them, since each backend places and protects the server its own way. `overrides` are backend settings
    (e.g. the local CPU's memory fraction) that the user's engine_args still win over.
    """
    m = spec.model
    flags: dict[str, FlagValue] = {"served-model-name": m.served}
    if m.revision:
        flags["revision"] = m.revision
    if m.max_model_len:
        flags["max-model-len"] = m.max_model_len
    if m.dtype != "auto":
        flags["dtype"] = m.dtype
    if m.quantization:
        flags["quantization"] = m.quantization
    if spec.resources.count > 1:
        flags["tensor-parallel-size"] = spec.resources.count
    for key, value in (overrides or {}).items():
        flags.setdefault(key, value)
    flags.update(m.engine_args)
    return flags


def flags_to_argv(flags: Mapping[str, FlagValue]) -> list[str]:
    """`{"enforce-eager": True, "no-x": ..., "max-model-len": 256}` -> ["--enforce-eager", "--max-model-len", "256"].

    True is a bare flag, False its `--no-` form (vLLM's boolean flags accept both).
    """
    argv: list[str] = []
    for key, value in flags.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is False:
            argv.append(f"--no-{key}")
        else:
            argv += [f"--{key}", _text(value)]
    return argv


def serve_argv(
    spec: Spec,
    *,
    host: str = "0.0.0.0",
    port: int | None = 8000,
    api_key: str | None,
    guard: bool = False,
    overrides: Mapping[str, FlagValue] | None = None,
) -> list[str]:
    """The arguments after `vllm serve`: the model, its flags, where to listen, and the key.

    `port=None` leaves --port to the caller (a script that picks it at start). `api_key=None`
    means the key reaches vLLM another way (its VLLM_API_KEY environment variable) or the caller
    protects the endpoint otherwise, and must say which. `guard=True` adds
    `--middleware deployer_vllm_guard.RequireKey`, which every backend that exposes vLLM itself
    must ask for (vLLM's own check covers /v1 only): the caller ships GUARD_FILE onto vLLM's
    PYTHONPATH and the key as VLLM_API_KEY (the guard reads nothing else, so `api_key` must be
    None; ValueError otherwise).
    """
    if guard and api_key is not None:
        raise ValueError("the guard reads the key from VLLM_API_KEY: pass it there, not as --api-key")
    argv = [spec.model.id, *flags_to_argv(engine_flags(spec, overrides=overrides)), "--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    if api_key is not None:
        argv += ["--api-key", api_key]
    if guard:
        argv += ["--middleware", GUARD_MIDDLEWARE]
    return argv


def serve_command(spec: Spec, **kwargs: object) -> list[str]:
    """`["vllm", "serve", *serve_argv(...)]`."""
    return ["vllm", "serve", *serve_argv(spec, **kwargs)]  # type: ignore[arg-type]


def _text(value: FlagValue) -> str:
    return str(value)
