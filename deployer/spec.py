"""The deployment spec: one provider-neutral YAML file, validated by pydantic.

`load_spec` is the only way in from a file. Every problem becomes an `InputError` that names
the file, the key path and the YAML line, with a "did you mean" hint for unknown keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from . import registry
from .errors import InputError
from .gpus import GPUS
from .yaml_errors import describe_validation_error, read_yaml_file

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


def _check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a name: use 2-32 lowercase letters, digits and dashes, starting with a letter")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
"""A deployment's (or gateway's) name: it becomes part of cloud resource names (dplr-<name>)."""

# Flags the spec sets through its own fields; repeating them in engine_args would let two
# sources disagree about one setting.
RESERVED_ENGINE_ARGS = {
    "model": "model.id",
    "revision": "model.revision",
    "served-model-name": "model.served_name",
    "max-model-len": "model.max_model_len",
    "dtype": "model.dtype",
    "quantization": "model.quantization",
    "tensor-parallel-size": "resources.count",
    "api-key": "auth",
    "hf-token": "secrets.hf_token_env (a token in the spec would land in state and plan output)",
    "host": "(chosen by the provider)",
    "port": "(chosen by the provider)",
    # vLLM's key check strips the root path before it looks for /v1: `/` or `/v` lets /v1 through unkeyed
    "root-path": "(the provider; a root path would let requests past vLLM's API key check)",
    "middleware": "deployer (its key guard on every route is the only middleware vLLM loads)",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Model(Strict):
    id: str = Field(
        description="Hugging Face model id (org/name), or a local directory starting with /, ./, ../ or ~ "
        "(relative to the spec file)."
    )
    revision: str | None = Field(None, description="Branch, tag or commit of the model repo.")
    served_name: str | None = Field(None, description="Name clients send as `model`; default: id.")
    max_model_len: int | None = Field(None, gt=0, description="Context length in tokens.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors"] | None = None
    params_b: float | None = Field(
        None, gt=0, description="Parameter count in billions, for sizing when config.json is not at hand."
    )
    engine_args: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra `vllm serve` flags without the leading --, e.g. {enable-prefix-caching: true}.",
    )

    @field_validator("engine_args")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", key):
                raise ValueError(f"{key!r} is not a vLLM flag name (kebab-case, no leading --)")
            if key in RESERVED_ENGINE_ARGS:
                raise ValueError(f"{key!r} is set by {RESERVED_ENGINE_ARGS[key]}, not engine_args")
        return value

    @property
    def served(self) -> str:
        return self.served_name or self.id


class Resources(Strict):
    gpu: str | None = Field(None, description=f"Canonical GPU: {', '.join(GPUS)}. None: no GPU (local CPU).")
    count: Literal[1, 2, 4, 8] = Field(1, description="GPUs per replica; vLLM's tensor-parallel size.")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is not None and value not in GPUS:
            from difflib import get_close_matches

            close = get_close_matches(value.upper(), GPUS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; one of: {', '.join(GPUS)}"
            raise ValueError(f"unknown GPU {value!r}{hint}")
        return value


class Scaling(Strict):
    min_replicas: int = Field(0, ge=0, le=100, description="Replicas kept warm (and billed) at all times.")
    max_replicas: int = Field(1, ge=1, le=100)
    idle_timeout: int = Field(300, ge=1, le=3600, description="Seconds an idle replica stays up before scale-down.")
    concurrency: int = Field(32, ge=1, le=1024, description="Requests one replica serves at once.")

    @model_validator(mode="after")
    def _min_le_max(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class Startup(Strict):
    fast_boot: bool = Field(True, description="GPU memory snapshots (Modal) or FlashBoot (RunPod).")
    readiness_timeout: int | None = Field(
        None, gt=0, description="Seconds to wait for the endpoint to answer; default sized by provider and model."
    )


class Auth(Strict):
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the endpoint API key; unset: a key is generated "
        "and kept in a 0600 file under DEPLOYER_HOME.",
    )


class Secrets(Strict):
    hf_token_env: str = Field("HF_TOKEN", description="Environment variable holding the Hugging Face token.")


class Traffic(Strict):
    requests_per_hour: float = Field(..., ge=0)
    seconds_per_request: float = Field(2.0, gt=0)
    tokens_per_request: int | None = Field(None, ge=1)
    hours_per_day: float = Field(24.0, gt=0, le=24)


@cache
def _provider_blocks() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (registry.options_model(name), Field(default_factory=registry.options_model(name)))
        for name in registry.names()
    }
    return create_model("ProviderBlocks", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


def _spec_base() -> type[BaseModel]:
    class SpecBase(Strict):
        name: Name = Field(description="Deployment name: lowercase letters, digits and dashes, 2-32 chars.")
        provider: str = Field("local", description=f"Where to deploy: {', '.join(registry.names())}.")
        model: Model
        resources: Resources = Field(default_factory=Resources)
        scaling: Scaling = Field(default_factory=Scaling)
        startup: Startup = Field(default_factory=Startup)
        auth: Auth = Field(default_factory=Auth)
        secrets: Secrets = Field(default_factory=Secrets)
        traffic: Traffic | None = Field(None, description="Expected traffic, for cost estimates.")
        providers: _provider_blocks() = Field(default_factory=_provider_blocks())  # type: ignore[valid-type]

        @field_validator("provider")
        @classmethod
        def _provider(cls, value: str) -> str:
            if value not in registry.names():
                from difflib import get_close_matches

                close = get_close_matches(value, registry.names(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown provider {value!r}{hint}; one of: {', '.join(registry.names())}")
            return value

    return SpecBase


class _SpecMethods:
    """Behaviour shared by the spec class (which is built once the backends are known)."""

    def options(self, provider: str | None = None) -> Any:
        """The `providers.<provider>` block (default: the spec's own provider)."""
        return getattr(self.providers, provider or self.provider)  # type: ignore[attr-defined]

    def fingerprint(self) -> str:
        """Hash of everything that shapes this deployment (other providers' blocks excluded)."""
        data = self.model_dump(mode="json")  # type: ignore[attr-defined]
        data["providers"] = {self.provider: data["providers"][self.provider]}  # type: ignore[attr-defined]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_provider(self, provider: str) -> Any:
        """A copy deployed to `provider` instead; raises InputError for an unknown name."""
        return validate_spec({**self.model_dump(mode="json"), "provider": provider}, source="--provider")  # type: ignore[attr-defined]


@cache
def spec_class() -> type[BaseModel]:
    """The Spec model (built lazily: its `providers` block comes from the registry)."""
    return type("Spec", (_spec_base(), _SpecMethods), {"__module__": __name__})


Spec = Any  # the runtime class is spec_class(); annotations use this alias


def validate_spec(data: Any, *, source: str = "<spec>", lines: dict | None = None) -> Spec:
    """Validate plain data as a spec. Raises InputError naming `source`, key and line."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a spec is a mapping of keys (name, provider, model, ...)")
    try:
        return spec_class().model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc, source, lines or {}, spec_class())) from None


def load_spec(path: str | Path, *, provider: str | None = None) -> Spec:
    """Read and validate a spec file; `provider` overrides the file's `provider:`.

    Raises InputError (exit code 2) for a missing file, bad YAML or an invalid spec.
    """
    path = Path(path)
    data, lines = read_yaml_file(path, missing_hint="pass the path of a spec, e.g. configs/local-tiny.yaml")
    if provider is not None:
        if not isinstance(data, dict):
            data = {}
        data = {**data, "provider": provider}
    return validate_spec(_resolve_model_path(data, path.parent), source=str(path), lines=lines)


def is_local_path(model_id: str) -> bool:
    """A model id is a local directory when it starts with /, ./, ../ or ~ (else a hub id)."""
    return model_id.startswith(("/", "./", "../", "~"))


def _resolve_model_path(data: Any, base: Path) -> Any:
    """Make a relative local model path absolute, relative to the spec file's directory."""
    model = data.get("model") if isinstance(data, dict) else None
    model_id = model.get("id") if isinstance(model, dict) else None
    if not isinstance(model_id, str) or not is_local_path(model_id) or model_id.startswith("/"):
        return data
    resolved = (base / Path(model_id).expanduser()).resolve()
    return {**data, "model": {**model, "id": str(resolved)}}


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema, for editors."""
    schema = spec_class().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "deployer spec"
    return schema
