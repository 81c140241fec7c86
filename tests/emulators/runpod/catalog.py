"""The emulator's GPU catalog (`GET /v2/catalog/gpus`), in the GpuType shape of openapi-v2.json.

Pools follow RunPod's serverless pool list (NOTES.md); `price.serverless` is $/GPU/hour, from the
documented per-second flex rates (pricing.md) times 3600. Pod prices are rough 2026 figures. A
type with `pool: None` exists for pods only. Tests pass their own catalog to change membership.
"""

from __future__ import annotations

import copy
from typing import Any

# (id, display name, pool, memory GB, serverless $/h or None, secure pod $/h, community pod $/h, max count)
_ROWS: list[tuple[str, str, str | None, int, float | None, float, float, int]] = [
    ("NVIDIA RTX A4000", "RTX A4000", "AMPERE_16", 16, 0.576, 0.25, 0.17, 8),
    ("NVIDIA RTX A4500", "RTX A4500", "AMPERE_16", 20, 0.576, 0.25, 0.19, 8),
    ("NVIDIA RTX 4000 Ada Generation", "RTX 4000 Ada", "AMPERE_16", 20, 0.576, 0.26, 0.20, 8),
    ("NVIDIA L4", "L4", "AMPERE_24", 24, 0.684, 0.43, 0.39, 8),
    ("NVIDIA RTX A5000", "RTX A5000", "AMPERE_24", 24, 0.684, 0.29, 0.22, 8),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", "AMPERE_24", 24, 0.684, 0.46, 0.22, 8),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", "ADA_24", 24, 1.116, 0.69, 0.34, 8),
    ("NVIDIA GeForce RTX 5090", "RTX 5090", "ADA_32_PRO", 32, 1.58, 0.94, 0.69, 8),
    ("NVIDIA RTX A6000", "RTX A6000", "AMPERE_48", 48, 1.224, 0.49, 0.33, 8),
    ("NVIDIA A40", "A40", "AMPERE_48", 48, 1.224, 0.40, 0.35, 8),
    ("NVIDIA L40", "L40", "ADA_48_PRO", 48, 1.908, 0.99, 0.69, 8),
    ("NVIDIA L40S", "L40S", "ADA_48_PRO", 48, 1.908, 0.86, 0.79, 8),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", "ADA_48_PRO", 48, 1.908, 0.77, 0.74, 8),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", "AMPERE_80", 80, 2.736, 1.64, 1.19, 8),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", "AMPERE_80", 80, 2.736, 1.74, 1.39, 8),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", "ADA_80_PRO", 80, 4.176, 2.69, 2.39, 8),
    ("NVIDIA H100 PCIe", "H100 PCIe", "ADA_80_PRO", 80, 4.176, 2.39, 1.99, 8),
    ("NVIDIA H100 NVL", "H100 NVL", "ADA_80_PRO", 94, 4.176, 2.79, 2.59, 8),
    ("NVIDIA H200", "H200 SXM", "HOPPER_141", 141, 5.58, 3.59, 3.59, 8),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX PRO 6000", "BLACKWELL_96", 96, 2.79, 1.69, 1.59, 8),
    ("NVIDIA B200", "B200", "BLACKWELL_180", 180, 8.64, 5.99, 5.99, 8),
    ("Tesla V100-SXM2-16GB", "V100 SXM2", None, 16, None, 0.39, 0.24, 8),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB", None, 40, None, 1.19, 0.99, 8),
]

DATA_CENTERS = [("US-TX-3", "US Texas 3"), ("EU-RO-1", "EU Romania 1"), ("US-KS-2", "US Kansas 2")]
CUDA_VERSIONS = ["12.8", "13.0"]


def default_catalog() -> list[dict[str, Any]]:
    """A fresh copy of the default catalog (GpuType objects)."""
    out = []
    for gid, name, pool, memory, serverless, secure, community, max_count in _ROWS:
        price: dict[str, Any] = {"secure": secure, "community": community}
        if serverless is not None:
            price["serverless"] = serverless
        out.append({
            "id": gid, "name": name, "pool": pool, "manufacturer": "NVIDIA", "memory": memory,
            "secure": True, "community": True, "price": price,
            "maxCount": {"secure": max_count, "community": max_count // 2 or 1},
        })
    return copy.deepcopy(out)


def with_availability(gpu: dict[str, Any], *, available: bool) -> dict[str, Any]:
    """`gpu` as include=AVAILABILITY returns it for one product context."""
    level = "HIGH" if available else "NONE"
    out = dict(gpu)
    out["availability"] = level
    if available:
        out["dataCenters"] = [{"id": i, "name": n, "availability": level} for i, n in DATA_CENTERS]
    out["cudaVersions"] = [{"version": v, "available": available} for v in CUDA_VERSIONS]
    return out
