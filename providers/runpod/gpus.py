"""Canonical GPUs -> RunPod GPU type ids -> serverless pools.

RunPod places serverless workers by *pool* (`gpu.pools`, e.g. AMPERE_80) and subtracts single
cards by *type id* (`gpu.excludedTypes`, e.g. "NVIDIA A100 80GB PCIe"). Which type sits in which
pool is read from the catalog (`GET /v2/catalog/gpus`, field `pool`): live at deploy time, or the
table shipped in gpus.json for `plan` without a key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from deployer.errors import InputError

TABLE = Path(__file__).with_name("gpus.json")

CatalogEntry = Mapping[str, Any]  # a GpuType from the catalog: at least {"id", "pool"}


@cache
def table() -> dict[str, Any]:
    """The shipped table (gpus.json), parsed once."""
    return json.loads(TABLE.read_text())


def shipped_catalog() -> list[dict[str, Any]]:
    """The shipped type -> pool table in the catalog's shape ({"id", "pool"} per GPU type)."""
    return [dict(entry) for entry in table()["types"]]


def type_ids(canonical: str) -> list[str]:
    """RunPod type ids of a canonical GPU. Raises InputError when RunPod serverless lacks it."""
    known = table()["canonical"]
    if canonical not in known:
        raise InputError(
            f"RunPod serverless has no {canonical} GPUs",
            hint=f"use one of: {', '.join(known)} (resources.gpu), or name pools in providers.runpod.pools",
        )
    return list(known[canonical])


def shipped_price(pool: str) -> float | None:
    """The documented serverless price of one GPU of `pool`, $/hour (None when undocumented)."""
    return (table()["pools"].get(pool) or {}).get("usd_per_gpu_hour")


@dataclass(frozen=True)
class Selection:
    """What goes into the endpoint's `gpu` block."""

    pools: list[str]
    excluded_types: list[str]
    type_ids: list[str]  # the cards wanted (for messages)


def select(
    gpus: Sequence[str], catalog: Iterable[CatalogEntry], *, exact: bool = False, pools: Sequence[str] | None = None
) -> Selection:
    """Pools (in preference order) holding the canonical `gpus`, per `catalog`.

    With `exact`, every other card of those pools is excluded. Explicit `pools` are used as given.
    Raises InputError when a GPU has no serverless pool in the catalog (pool is null or the type
    is absent)."""
    entries = list(catalog)
    if pools:
        return Selection(pools=list(pools), excluded_types=[], type_ids=[])
    wanted: list[str] = []
    chosen: list[str] = []
    for canonical in gpus:
        ids = type_ids(canonical)
        found = [e["pool"] for e in entries if e.get("id") in ids and e.get("pool")]
        if not found:
            raise InputError(
                f"RunPod's catalog puts no {canonical} ({', '.join(ids)}) in a serverless pool",
                hint="pick another resources.gpu or add providers.runpod.fallback_gpus",
            )
        wanted += ids
        for pool in found:
            if pool not in chosen:
                chosen.append(pool)
    excluded: list[str] = []
    if exact:
        excluded = sorted({e["id"] for e in entries if e.get("pool") in chosen and e.get("id") not in wanted})
    return Selection(pools=chosen, excluded_types=excluded, type_ids=wanted)
