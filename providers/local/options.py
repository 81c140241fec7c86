"""`providers.local` in a spec."""

from pydantic import BaseModel, ConfigDict, Field


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int | None = Field(None, ge=1024, le=65535, description="Loopback port; default: a free one.")
    cpu_memory_fraction: float = Field(
        0.3, gt=0, le=0.9, description="On a CPU-only machine: the share of RAM vLLM may reserve."
    )
    cpu_kv_cache_gib: int = Field(1, ge=1, le=64, description="On a CPU-only machine: KV cache size in GiB.")
