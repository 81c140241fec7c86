"""`providers.modal` in a spec: how the generated Modal app runs vLLM.

Light imports only: the spec loader imports every backend's options. Checks that need the whole
spec (GPU name and count, snapshot vs. GPU count, timeouts vs. model size) live in validate.py.
"""

from __future__ import annotations

import re
from typing import Literal

from deployer.validators import pinned_image
from pydantic import BaseModel, ConfigDict, Field, field_validator

# vLLM release installed in the image: the one whose flags the tests check against.
DEFAULT_VLLM_VERSION = "0.32.0"
DEFAULT_BASE_IMAGE = "nvidia/cuda:12.9.0-devel-ubuntu22.04"
DEFAULT_HF_CACHE_VOLUME = "dplr-hf-cache"
DEFAULT_VLLM_CACHE_VOLUME = "dplr-vllm-cache"

# Modal's object names: letters, digits, dashes, periods and underscores, at most 64 characters.
_MODAL_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([.-]?(post|rc|a|b)\d+)?$")


class Options(BaseModel):
    """Everything defaults sensibly; `resources.gpu`/`count` pick the GPU string."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "snapshot", "plain"] = Field(
        "auto",
        description="snapshot: GPU memory snapshots (vLLM started, warmed and put to sleep before the "
        "snapshot; one GPU only). plain: vLLM starts on every cold start. auto: snapshot when "
        "startup.fast_boot is true and resources.count is 1, else plain.",
    )
    environment: str | None = Field(
        None, description="Modal environment to deploy into; default: MODAL_ENVIRONMENT, else the workspace default."
    )
    vllm_version: str = Field(DEFAULT_VLLM_VERSION, description="vLLM release installed in the image (pinned).")
    base_image: str = Field(DEFAULT_BASE_IMAGE, description="CUDA base image, pinned by tag or digest.")
    python_version: Literal["3.10", "3.11", "3.12", "3.13"] = Field("3.12", description="Python added to the image.")
    hf_cache_volume: str = Field(
        DEFAULT_HF_CACHE_VOLUME,
        description="Modal Volume holding the Hugging Face cache (weights download once). Shared by "
        "deployments; created if missing, never deleted by deployer.",
    )
    vllm_cache_volume: str = Field(
        DEFAULT_VLLM_CACHE_VOLUME, description="Modal Volume holding vLLM's compile cache; shared like hf_cache_volume."
    )
    hf_secret: str | None = Field(
        None,
        description="An existing Modal Secret that holds HF_TOKEN. Default: deployer stores your local "
        "token (secrets.hf_token_env) in a Secret named dplr-<name>-hf, when you have one.",
    )
    timeout: int = Field(600, ge=10, le=86400, description="Seconds one request may run (Modal's function timeout).")
    startup_timeout: int | None = Field(
        None, ge=30, le=86400,
        description="Seconds a new container may take to start serving; default sized for the model "
        "(download, load, compile, and in snapshot mode the warm-up).",
    )
    memory_mib: int | None = Field(
        None, ge=1024, le=1_048_576,
        description="Host memory requested per container, MiB. Default in snapshot mode: room for "
        "the weights vLLM keeps in host RAM while asleep; in plain mode Modal's default.",
    )
    buffer_containers: int = Field(0, ge=0, le=100, description="Idle containers kept ready above current load.")

    @field_validator("hf_cache_volume", "vllm_cache_volume", "hf_secret", "environment")
    @classmethod
    def _modal_name(cls, value: str | None) -> str | None:
        if value is not None and not _MODAL_NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Modal name (letters, digits, '-', '.', '_'; at most 64)")
        return value

    @field_validator("vllm_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION_RE.fullmatch(value):
            raise ValueError(f"pin an exact vLLM release like {DEFAULT_VLLM_VERSION!r}, not {value!r}")
        return value

    @field_validator("base_image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return pinned_image(value, "the base image")
