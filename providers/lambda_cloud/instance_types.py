"""Canonical GPUs (deployer/gpus.py) <-> Lambda instance types.

Lambda names a type `gpu_<count>x_<family>` and sells one shape per family and count, so the
mapping is a table, taken from a real `GET /instance-types` body (2025-11). Prices here are that
capture's and only a fallback: deploy reads live prices and capacity from the API.

`instance_types_for(gpu, count)` is the plain mapping other modules (pricing) call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deployer.errors import InputError
from deployer.gpus import GPUS
from deployer.spec import Spec

CATALOG_DATE = "2025-11"


@dataclass(frozen=True)
class LambdaType:
    name: str
    gpu: str  # canonical GPU name
    count: int
    memory_gb: int  # per GPU
    price_cents_per_hour: int  # from the 2025-11 capture; live figures win
    arch: str = "x86_64"


def _t(name: str, gpu: str, count: int, memory: int, cents: int, arch: str = "x86_64") -> LambdaType:
    return LambdaType(name, gpu, count, memory, cents, arch)


# Preference order within a GPU and count: SXM before PCIe (NVLink, faster interconnect).
CATALOG: tuple[LambdaType, ...] = (
    _t("gpu_1x_h100_sxm5", "H100", 1, 80, 329),
    _t("gpu_1x_h100_pcie", "H100", 1, 80, 249),
    _t("gpu_2x_h100_sxm5", "H100", 2, 80, 638),
    _t("gpu_4x_h100_sxm5", "H100", 4, 80, 1236),
    _t("gpu_8x_h100_sxm5", "H100", 8, 80, 2392),
    _t("gpu_8x_a100_80gb_sxm4", "A100-80GB", 8, 80, 1432),
    _t("gpu_1x_a100_sxm4", "A100-40GB", 1, 40, 129),
    _t("gpu_1x_a100", "A100-40GB", 1, 40, 129),
    _t("gpu_2x_a100", "A100-40GB", 2, 40, 258),
    _t("gpu_4x_a100", "A100-40GB", 4, 40, 516),
    _t("gpu_8x_a100", "A100-40GB", 8, 40, 1032),
    _t("gpu_1x_a10", "A10", 1, 24, 75),
    _t("gpu_1x_a6000", "A6000", 1, 48, 80),
    _t("gpu_2x_a6000", "A6000", 2, 48, 160),
    _t("gpu_4x_a6000", "A6000", 4, 48, 320),
    _t("gpu_1x_gh200", "GH200", 1, 96, 149, arch="arm64"),
    _t("gpu_8x_b200_sxm6", "B200", 8, 180, 3992),
)
BY_NAME: dict[str, LambdaType] = {t.name: t for t in CATALOG}


def instance_types_for(gpu: str, count: int) -> list[str]:
    """Lambda instance types carrying `count` x `gpu` (a canonical name), best first; [] if none."""
    return [t.name for t in CATALOG if t.gpu == gpu and t.count == count]


def known_type(name: str) -> LambdaType | None:
    """The built-in entry for an instance type name, or None for a type this table lacks."""
    return BY_NAME.get(name)


_DESCRIPTION = re.compile(r"^(?:Tesla\s+)?(?P<model>[A-Za-z0-9 ]+?)\s*\((?P<mem>\d+)\s*GB")


def classify(gpu_description: str) -> tuple[str | None, int | None]:
    """(canonical GPU, GB per GPU) from a live `gpu_description` like "H100 (80 GB SXM5)".

    Unknown models give (None, memory): they can be used only when named in instance_types."""
    match = _DESCRIPTION.match(gpu_description.strip())
    if not match:
        return None, None
    model, memory = match["model"].replace(" ", "").upper(), int(match["mem"])
    if model == "A100":
        return ("A100-80GB" if memory >= 80 else "A100-40GB"), memory
    for name in GPUS:
        if name.upper() == model:
            return name, memory
    return None, memory


def offered_counts(gpu: str) -> list[int]:
    return sorted({t.count for t in CATALOG if t.gpu == gpu})


def allowed_types(spec: Spec) -> list[str]:
    """The instance types a deploy may try for `spec`, in order. Pure.

    Raises InputError when the spec names no GPU, when Lambda sells no type with that GPU and
    count, or when `providers.lambda.instance_types` names a known type that does not fit."""
    opts = spec.options("lambda")
    gpu, count = spec.resources.gpu, spec.resources.count
    if gpu is None:
        raise InputError(
            "Lambda Cloud serves on GPU VMs: set resources.gpu",
            hint=f"e.g. resources: {{gpu: H100, count: 1}}; Lambda sells {', '.join(sorted({t.gpu for t in CATALOG}))}",
        )
    if opts.instance_types:
        need = GPUS[gpu].memory_gb
        for name in opts.instance_types:
            known = known_type(name)
            if known is None:
                continue  # checked against the live catalog at deploy time
            if known.count != count or known.memory_gb < need:
                raise InputError(
                    f"providers.lambda.instance_types: {name} has {known.count}x {known.gpu} "
                    f"({known.memory_gb} GB each), which does not fit resources {count}x {gpu} ({need} GB each)",
                    hint="list types with the same GPU count and at least as much memory per GPU",
                )
        return list(opts.instance_types)
    names = instance_types_for(gpu, count)
    if not names:
        counts = offered_counts(gpu)
        offered = (
            f"Lambda sells {gpu} only as {', '.join(f'{c}x' for c in counts)}"
            if counts
            else f"Lambda sells no {gpu} instances"
        )
        raise InputError(
            f"no Lambda instance type has {count}x {gpu}: {offered}",
            hint="change resources.count or resources.gpu, or name types in providers.lambda.instance_types",
        )
    return names
