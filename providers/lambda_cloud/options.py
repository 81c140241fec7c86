"""`providers.lambda` in a spec: where and how a Lambda Cloud VM serves the model.

Light imports only: the spec loader imports every backend's options.
"""

from __future__ import annotations

import ipaddress
import re

from deployer.validators import pinned_image
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The vLLM OpenAI server image, pinned to the vLLM release whose flags the tests check.
DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"
DEFAULT_PORT = 8000

_TYPE_RE = re.compile(r"^(gpu|cpu)_\d+x_[a-z0-9_]+$")
_REGION_RE = re.compile(r"^[a-z]+(-[a-z]+)*-\d+$")
_FILESYSTEM_RE = re.compile(r"^[a-zA-Z]+[0-9a-zA-Z-]*$")  # Lambda's FilesystemCreateRequest pattern


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 network in CIDR notation (e.g. 203.0.113.0/24)") from None


class Options(BaseModel):
    """Everything defaults sensibly: `resources.gpu`/`count` pick the instance type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_types: list[str] = Field(
        default_factory=list,
        description="Allowed Lambda instance types, in order of preference (e.g. gpu_8x_a100_80gb_sxm4, "
        "gpu_8x_h100_sxm5). Each must carry resources.count GPUs with at least the memory of "
        "resources.gpu. Default: every type with resources.count x resources.gpu.",
    )
    regions: list[str] = Field(
        default_factory=list,
        description="Allowed regions, in order of preference. Default: any region Lambda lists with capacity.",
    )
    ssh_key_name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="An SSH key already in your Lambda account. Default: deployer creates one from a key "
        "pair it keeps under DEPLOYER_HOME/lambda/ (once) and reuses it.",
    )
    port: int = Field(DEFAULT_PORT, ge=1024, le=65535, description="Port the server listens on, on the VM's public IP.")
    allowed_cidrs: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0"],
        min_length=1,
        description="Source networks that may reach the port (the firewall ruleset). The API key is "
        "required either way.",
    )
    ssh_cidrs: list[str] = Field(
        default_factory=lambda: ["0.0.0.0/0"], min_length=1, description="Source networks that may reach SSH (22)."
    )
    filesystem: str | None = Field(
        None,
        max_length=60,
        description="A Lambda filesystem that holds the Hugging Face cache, so weights download once. "
        "Created in the instance's region if missing; never deleted by deployer. Pins the region.",
    )
    image: str = Field(DEFAULT_IMAGE, description="The vLLM OpenAI server image, pinned by tag or digest.")
    os_image_family: str | None = Field(
        None, description="Lambda machine image family (e.g. lambda-stack-22-04). Default: Lambda's latest Lambda Stack."
    )

    @field_validator("instance_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _TYPE_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a Lambda instance type name (like gpu_1x_h100_sxm5)")
        return value

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _REGION_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a Lambda region name (like us-east-1)")
        return value

    @field_validator("allowed_cidrs", "ssh_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [_cidr(v) for v in value]

    @field_validator("filesystem")
    @classmethod
    def _filesystem(cls, value: str | None) -> str | None:
        if value is not None and not _FILESYSTEM_RE.fullmatch(value):
            raise ValueError("a Lambda filesystem name starts with letters, then letters, digits and dashes")
        return value

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return pinned_image(value, "the image")
