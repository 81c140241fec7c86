"""Canonical GPU names: the provider-neutral vocabulary of `resources.gpu`.

Each provider maps these names to its own (RunPod type ids and pools, Lambda instance types,
Modal GPU strings). Memory is per GPU, in GB as sold.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: int
    arch: str = "x86_64"  # host CPU architecture of the machines that carry it


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("T4", 16),
        Gpu("L4", 24),
        Gpu("A10", 24),
        Gpu("RTX4090", 24),
        Gpu("RTX5090", 32),
        Gpu("A100-40GB", 40),
        Gpu("A6000", 48),
        Gpu("A40", 48),
        Gpu("L40S", 48),
        Gpu("A100-80GB", 80),
        Gpu("H100", 80),
        Gpu("GH200", 96, arch="arm64"),
        Gpu("H200", 141),
        Gpu("B200", 180),
    )
}


def gpu(name: str) -> Gpu:
    """The GPU called `name`; raises KeyError for a name outside the vocabulary."""
    return GPUS[name]
