"""`providers.runpod` in a spec: the RunPod serverless settings that have no neutral equivalent.

Light imports only (the spec loader imports every backend's options).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployer.gpus import GPUS
from deployer.validators import pinned_image

WORKER_IMAGE = "runpod/worker-v1-vllm:v2.25.2"
"""RunPod's vLLM worker, pinned (v2.25.2 runs vLLM 0.27.1 and needs CUDA 13.0 hosts)."""

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(WORKER_IMAGE, description="The worker image: RunPod's vLLM worker, pinned.")
    fallback_gpus: list[str] = Field(
        default_factory=list,
        description="More canonical GPUs whose serverless pools workers may also use when "
        "resources.gpu's pool has no capacity, e.g. [H100] beside A100-80GB.",
    )
    pools: list[str] | None = Field(
        None, description="Serverless pool ids to use as given (e.g. [AMPERE_80]); overrides the GPU mapping."
    )
    exact_gpu: bool = Field(
        False, description="Exclude the other cards of the chosen pools (gpu.excludedTypes): only the named GPUs."
    )
    allowed_cuda_versions: list[str] = Field(
        default_factory=lambda: ["13.0"], description="CUDA versions a host may run; the worker image needs 13.0."
    )
    flashboot: Literal["FLASHBOOT", "PRIORITY_FLASHBOOT"] = Field(
        "FLASHBOOT", description="FlashBoot mode used when startup.fast_boot is true (else OFF)."
    )
    queue_delay: float = Field(4.0, ge=0.5, description="Seconds a request may wait in the queue before a worker is added.")
    execution_timeout: int = Field(600, ge=5, le=7 * 24 * 3600, description="Seconds one request may run.")
    container_disk_gb: int = Field(150, ge=10, le=1000, description="Container disk per worker (the image alone is 10+ GB).")
    network_volume_id: str | None = Field(None, description="A RunPod network volume to cache weights on (/runpod-volume).")
    data_centers: list[str] = Field(default_factory=list, description="Data center ids to place workers in; empty: any.")
    hf_secret_name: str | None = Field(
        None,
        description="Name of the RunPod secret holding your Hugging Face token; HF_TOKEN is sent as "
        "{{ RUNPOD_SECRET_<name> }}. Unset: `hf_token`, referenced only when secrets.hf_token_env is set locally.",
    )

    @field_validator("fallback_gpus")
    @classmethod
    def _known_gpus(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in GPUS:
                raise ValueError(f"unknown GPU {name!r}; one of: {', '.join(GPUS)}")
        return value

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return pinned_image(value, "the worker image")

    @field_validator("pools")
    @classmethod
    def _pool_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one pool, or remove `pools` to map resources.gpu")
            for pool in value:
                if not re.fullmatch(r"[A-Z][A-Z0-9_]*", pool):
                    raise ValueError(f"{pool!r} is not a RunPod pool id (e.g. AMPERE_80, ADA_80_PRO)")
        return value

    @field_validator("allowed_cuda_versions")
    @classmethod
    def _cuda(cls, value: list[str]) -> list[str]:
        for version in value:
            if not re.fullmatch(r"\d+\.\d+", version):
                raise ValueError(f"{version!r} is not a CUDA version as major.minor (e.g. 13.0)")
        return value

    @field_validator("hf_secret_name")
    @classmethod
    def _secret_name(cls, value: str | None) -> str | None:
        if value is not None and not SECRET_NAME_RE.fullmatch(value):
            raise ValueError("a RunPod secret name is 1-64 letters, digits, '_' or '-'")
        return value
