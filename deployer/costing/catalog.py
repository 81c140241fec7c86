"""The price catalog: shipped figures (deployer/data/prices.yaml), replaced by live figures from
the providers' APIs where a key is present, replaced by the user's override file.

Every price is a `Figure` that says where it came from: origin "shipped" (with the source and
date printed in the catalog), "live" (the API call and when), or "override" (the file, or the
source the file names). Which providers can host which GPU is catalog data too: each provider's
entries are keyed by canonical GPU name and carry the provider's SKU.

Override files have the shape of prices.yaml, any subset of it:

    source: "our negotiated rates"        # optional, for every figure in the file
    as_of: "2026-11-01"                   # optional; default: the file's modification date
    providers:
      runpod:
        gpus:
          H100: {usd_per_gpu_second: {active: 0.0009}}
      lambda:
        gpus:
          H100: {instance_types: [{name: gpu_1x_h100_sxm5, count: 1, usd_per_hour: 4.29}]}
      modal:
        extras: [{name: memory, units: 64}]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import InputError
from deployer.gpus import GPUS

SHIPPED = "shipped"
LIVE = "live"
OVERRIDE = "override"


@dataclass(frozen=True)
class Figure:
    """One price with its provenance. `value` is in the unit of the field that holds it."""

    value: float
    origin: str
    source: str
    as_of: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "origin": self.origin, "source": self.source, "as_of": self.as_of}


@dataclass(frozen=True)
class Extra:
    """Something billed on top of the GPU, per unit-second, for `units` units."""

    name: str
    unit: str
    units: float
    price: Figure  # $ per unit per second

    @property
    def usd_per_hour(self) -> float:
        return self.units * self.price.value * 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "units": self.units,
                "usd_per_unit_second": self.price.to_dict(), "usd_per_hour": self.usd_per_hour}


@dataclass
class InstanceType:
    name: str
    count: int
    price: Figure | None  # $ per hour for the whole instance
    note: str | None = None


@dataclass
class GpuEntry:
    sku: dict[str, Any] = field(default_factory=dict)
    prices: dict[str, Figure] = field(default_factory=dict)  # serverless: mode -> $/GPU/s
    instance_types: dict[str, InstanceType] = field(default_factory=dict)  # vm: name -> type
    max_count: int | None = None  # serverless: most GPUs of this kind per replica
    source: str = ""
    as_of: str = ""


@dataclass
class ProviderPrices:
    name: str
    label: str
    kind: str  # "serverless" | "vm"
    increment_s: float
    billing: str
    billing_source: str
    modes: dict[str, str]
    extras: dict[str, Extra]
    cold_start: dict[str, Any]
    gpus: dict[str, GpuEntry]


@dataclass(frozen=True)
class Offer:
    """One way a provider hosts `count` x `gpu`: its SKU, prices per mode and extras."""

    provider: str
    label: str
    kind: str
    gpu: str
    count: int
    sku: dict[str, Any]
    increment_s: float
    prices: dict[str, Figure]  # mode -> figure, in `unit`
    unit: str  # "usd_per_gpu_second" | "usd_per_hour"
    extras: tuple[Extra, ...] = ()
    note: str | None = None

    def gpu_rate(self, mode: str) -> float:
        """$ per hour for the GPUs of one replica in `mode` (an entry priced for one mode only,
        e.g. by an override, bills that price in every mode)."""
        figure = self.prices.get(mode) or next(iter(self.prices.values()))
        return figure.value * 3600.0 * self.count if self.unit == "usd_per_gpu_second" else figure.value

    @property
    def extras_per_hour(self) -> float:
        return sum(extra.usd_per_hour for extra in self.extras)

    def rate(self, mode: str) -> float:
        """$ per hour for one replica in `mode`: GPUs plus what is billed on top."""
        return self.gpu_rate(mode) + self.extras_per_hour

    @property
    def sku_label(self) -> str:
        if "instance_type" in self.sku:
            return str(self.sku["instance_type"])
        if "pool" in self.sku:
            return f"{self.sku['pool']} x{self.count}"
        if "gpu" in self.sku:
            return f"{self.sku['gpu']}" + (f":{self.count}" if self.count > 1 else "")
        return f"{self.gpu} x{self.count}"

    def price_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "modes": {mode: figure.to_dict() for mode, figure in self.prices.items()},
            "extras": [extra.to_dict() for extra in self.extras],
        }


@dataclass
class Catalog:
    providers: dict[str, ProviderPrices]
    notes: list[str] = field(default_factory=list)
    override_file: str | None = None
    live: dict[str, str] = field(default_factory=dict)  # provider -> what was read live

    def offers(self, gpu: str, count: int, providers: Iterable[str] | None = None) -> list[Offer]:
        """Every priced way to get `count` x `gpu` (one per Lambda instance type), in catalog order."""
        wanted = set(providers) if providers is not None else None
        out: list[Offer] = []
        for info in self.providers.values():
            if wanted is not None and info.name not in wanted:
                continue
            entry = info.gpus.get(gpu)
            if entry is None:
                continue
            extras = tuple(info.extras.values())
            if info.kind == "vm":
                for itype in entry.instance_types.values():
                    if itype.count == count and itype.price is not None:
                        out.append(Offer(
                            provider=info.name, label=info.label, kind=info.kind, gpu=gpu, count=count,
                            sku={**entry.sku, "instance_type": itype.name}, increment_s=info.increment_s,
                            prices={mode: itype.price for mode in info.modes}, unit="usd_per_hour",
                            extras=extras, note=itype.note,
                        ))
            elif entry.prices and (entry.max_count is None or count <= entry.max_count):
                out.append(Offer(
                    provider=info.name, label=info.label, kind=info.kind, gpu=gpu, count=count,
                    sku=dict(entry.sku), increment_s=info.increment_s, prices=dict(entry.prices),
                    unit="usd_per_gpu_second", extras=extras,
                ))
        return out

    def why_not(self, provider: str, gpu: str, count: int) -> str | None:
        """Why `provider` has no priced offer for `count` x `gpu`, or None when it has one."""
        info = self.providers.get(provider)
        if info is None:
            return f"no prices for {provider} in the catalog"
        entry = info.gpus.get(gpu)
        if entry is None:
            hosts = ", ".join(info.gpus) or "none"
            return f"{info.label} has no {gpu} (catalog GPUs: {hosts})"
        if info.kind == "vm":
            counts = sorted({t.count for t in entry.instance_types.values()})
            if count not in counts:
                return f"{info.label} has no {count}x {gpu} instance type (counts: {', '.join(map(str, counts)) or 'none'})"
            if all(t.price is None for t in entry.instance_types.values() if t.count == count):
                return f"no sourced price for {info.label} {count}x {gpu}: add one with --pricing FILE"
            return None
        if entry.max_count is not None and count > entry.max_count:
            return f"{info.label} attaches at most {entry.max_count}x {gpu} to one replica"
        if not entry.prices:
            return f"no sourced price for {info.label} {gpu}: add one with --pricing FILE (or a key for live prices)"
        return None

    def cold_start(self, provider: str) -> dict[str, Any]:
        info = self.providers.get(provider)
        return dict(info.cold_start) if info else {}


# -- loading ------------------------------------------------------------------------------


def shipped_raw() -> dict[str, Any]:
    """deployer/data/prices.yaml as plain data."""
    return yaml.safe_load(resources.files("deployer").joinpath("data", "prices.yaml").read_text())


def _figure(value: Any, where: str, origin: str, source: str, as_of: str) -> Figure:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InputError(f"{where}: a price must be a number >= 0, not {value!r}")
    return Figure(float(value), origin, source, as_of)


def _merge_provider(
    info: ProviderPrices | None, name: str, raw: Mapping[str, Any], *, origin: str, source: str | None,
    as_of: str | None, where: str,
) -> ProviderPrices:
    """Apply one provider block (shipped or override) onto `info` (None: a new provider)."""
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping")
    if info is None:
        kind = raw.get("kind")
        if kind not in ("serverless", "vm"):
            raise InputError(f"{where}.kind: a new provider needs kind: serverless or vm")
        info = ProviderPrices(
            name=name, label=str(raw.get("label") or name), kind=kind,
            increment_s=1.0, billing="", billing_source="", modes={}, extras={}, cold_start={}, gpus={},
        )
    if "label" in raw:
        info.label = str(raw["label"])
    billing = raw.get("billing")
    if billing is not None:
        if not isinstance(billing, Mapping):
            raise InputError(f"{where}.billing: expected a mapping")
        if "increment_s" in billing:
            increment = billing["increment_s"]
            if isinstance(increment, bool) or not isinstance(increment, (int, float)) or increment <= 0:
                raise InputError(f"{where}.billing.increment_s: seconds > 0 (1 = per second, 60 = per minute)")
            info.increment_s = float(increment)
        info.billing = str(billing.get("billed", info.billing))
        info.billing_source = str(billing.get("source") or source or info.billing_source)
    if "modes" in raw:
        if not isinstance(raw["modes"], Mapping):
            raise InputError(f"{where}.modes: expected {{mode: description}}")
        info.modes = {**info.modes, **{str(k): str(v) for k, v in raw["modes"].items()}}
    if not info.modes:
        info.modes = {"on_demand": "always on"} if info.kind == "vm" else {"flex": "scale from zero", "active": "always on"}
    for item in _items(raw.get("extras"), f"{where}.extras"):
        if "name" not in item:
            raise InputError(f"{where}.extras: each extra needs a name")
        old = info.extras.get(item["name"])
        item_source = str(item.get("source") or source or "")
        item_as_of = str(item.get("as_of") or as_of or "")
        price = old.price if old else None
        if "usd_per_unit_second" in item:
            price = _figure(item["usd_per_unit_second"], f"{where}.extras.{item['name']}", origin, item_source, item_as_of)
        if price is None:
            raise InputError(f"{where}.extras.{item['name']}: needs usd_per_unit_second")
        units = item.get("units", old.units if old else 1)
        if isinstance(units, bool) or not isinstance(units, (int, float)) or units < 0:
            raise InputError(f"{where}.extras.{item['name']}.units: a number >= 0, not {units!r}")
        info.extras[item["name"]] = Extra(str(item["name"]), str(item.get("unit", old.unit if old else "unit")),
                                          float(units), price)
    if "cold_start" in raw:
        if not isinstance(raw["cold_start"], Mapping):
            raise InputError(f"{where}.cold_start: expected a mapping")
        info.cold_start = {**info.cold_start, **dict(raw["cold_start"])}
    gpus = raw.get("gpus") or {}
    if not isinstance(gpus, Mapping):
        raise InputError(f"{where}.gpus: expected a mapping of canonical GPU names")
    for gpu, body in gpus.items():
        _merge_gpu(info, gpu, body, origin=origin, source=source, as_of=as_of, where=f"{where}.gpus.{gpu}")
    return info


def _merge_gpu(
    info: ProviderPrices, gpu: str, body: Any, *, origin: str, source: str | None, as_of: str | None, where: str,
) -> None:
    if gpu not in GPUS:
        from difflib import get_close_matches

        close = get_close_matches(str(gpu).upper(), GPUS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"canonical names: {', '.join(GPUS)}"
        raise InputError(f"{where}: unknown GPU {gpu!r}", hint=hint)
    if not isinstance(body, Mapping):
        raise InputError(f"{where}: expected a mapping")
    entry = info.gpus.setdefault(gpu, GpuEntry())
    entry_source = str(body.get("source") or source or entry.source)
    entry_as_of = str(body.get("as_of") or as_of or entry.as_of)
    entry.source, entry.as_of = entry_source, entry_as_of
    if "sku" in body:
        if not isinstance(body["sku"], Mapping):
            raise InputError(f"{where}.sku: expected a mapping")
        entry.sku = {**entry.sku, **dict(body["sku"])}
    if "max_count" in body:
        if body["max_count"] not in (1, 2, 4, 8):
            raise InputError(f"{where}.max_count: one of 1, 2, 4, 8")
        entry.max_count = int(body["max_count"])
    prices = body.get("usd_per_gpu_second")
    if prices is not None:
        if info.kind != "serverless":
            raise InputError(f"{where}.usd_per_gpu_second: {info.name} bills VMs; give instance_types with usd_per_hour")
        if not isinstance(prices, Mapping):
            raise InputError(f"{where}.usd_per_gpu_second: expected {{mode: $/s}}, modes: {', '.join(info.modes)}")
        for mode, value in prices.items():
            if mode not in info.modes:
                raise InputError(f"{where}.usd_per_gpu_second.{mode}: unknown mode; one of {', '.join(info.modes)}")
            entry.prices[mode] = _figure(value, f"{where}.usd_per_gpu_second.{mode}", origin, entry_source, entry_as_of)
    for item in _items(body.get("instance_types"), f"{where}.instance_types"):
        if info.kind != "vm":
            raise InputError(f"{where}.instance_types: {info.name} is serverless; give usd_per_gpu_second")
        if "name" not in item:
            raise InputError(f"{where}.instance_types: each needs a name")
        old = entry.instance_types.get(item["name"])
        count = item.get("count", old.count if old else None)
        if count not in (1, 2, 4, 8):
            raise InputError(f"{where}.instance_types.{item['name']}.count: one of 1, 2, 4, 8")
        price = old.price if old else None
        if "usd_per_hour" in item:
            price = _figure(item["usd_per_hour"], f"{where}.instance_types.{item['name']}", origin,
                            str(item.get("source") or entry_source), str(item.get("as_of") or entry_as_of))
        # a note qualifies the figure it came with: a new figure drops the old note
        note = item.get("note") if "usd_per_hour" in item else item.get("note", old.note if old else None)
        entry.instance_types[item["name"]] = InstanceType(str(item["name"]), int(count), price, note)


def _items(value: Any, where: str) -> list[Mapping[str, Any]]:
    """A list of mappings (extras, instance types), or InputError."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise InputError(f"{where}: expected a list of mappings, each with a name")
    return value


def read_override(path: str | Path) -> dict[str, Any]:
    """An override file's data. Raises InputError naming the file when it cannot be used."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such pricing file", hint="--pricing FILE / DEPLOYER_PRICING name a YAML or JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the pricing file ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML/JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
        raise InputError(f"{path}: a pricing file holds `providers:` with the shape of the shipped catalog",
                         hint="see README, 'Cost and capacity', for an example")
    return data


def build(shipped: Mapping[str, Any]) -> Catalog:
    """A catalog from shipped catalog data (no network, no override)."""
    providers: dict[str, ProviderPrices] = {}
    for name, raw in (shipped.get("providers") or {}).items():
        providers[name] = _merge_provider(None, name, raw, origin=SHIPPED, source=None, as_of=None,
                                          where=f"prices.yaml: providers.{name}")
    return Catalog(providers=providers)


def apply_override(catalog: Catalog, data: Mapping[str, Any], *, name: str, date: str | None = None) -> None:
    """Put an override file's data (see `read_override`) on top of `catalog`, figure by figure.
    Figures get the file's `source` (default: the file's name) and `as_of` (default: `date`).
    Raises InputError naming the file for an unknown provider, GPU, mode or a bad figure."""
    from providers import BACKENDS

    source = str(data.get("source") or f"override file {name}")
    as_of = str(data.get("as_of") or date or "")
    for provider, raw in data["providers"].items():
        if provider not in BACKENDS:
            from difflib import get_close_matches

            close = get_close_matches(str(provider), list(BACKENDS), n=1)
            raise InputError(f"{name}: providers.{provider}: unknown provider",
                             hint=f"did you mean {close[0]!r}?" if close else f"one of: {', '.join(BACKENDS)}")
        catalog.providers[provider] = _merge_provider(
            catalog.providers.get(provider), provider, raw or {}, origin=OVERRIDE, source=source, as_of=as_of,
            where=f"{name}: providers.{provider}",
        )
    catalog.override_file = name


def apply_live(catalog: Catalog, provider: str, records: list[Mapping[str, Any]]) -> int:
    """Replace shipped figures of `provider` with live ones (never an override). Returns how many
    figures changed. Each record: {"match": {sku key: value}, "per": "gpu" | "instance",
    "usd_per_hour": {mode: $/h}, "source": str, "as_of": str}; a record matches an entry when
    every match value equals (or is in) the entry's SKU value."""
    info = catalog.providers.get(provider)
    if info is None:
        return 0
    changed = 0
    for record in records:
        match = dict(record.get("match") or {})
        per = record.get("per", "gpu")
        hourly = dict(record.get("usd_per_hour") or {})
        source, as_of = str(record.get("source", "provider API")), str(record.get("as_of", ""))
        for entry in info.gpus.values():
            if per == "gpu" and info.kind == "serverless" and _matches(entry.sku, match):
                for mode, value in hourly.items():
                    if mode in info.modes and not _overridden(entry.prices.get(mode)):
                        entry.prices[mode] = Figure(float(value) / 3600.0, LIVE, source, as_of)
                        changed += 1
            elif per == "instance" and info.kind == "vm":
                for itype in entry.instance_types.values():
                    if _matches({**entry.sku, "instance_type": itype.name}, match) and not _overridden(itype.price):
                        value = next(iter(hourly.values()), None)
                        if value is not None:
                            itype.price = Figure(float(value), LIVE, source, as_of)
                            itype.note = None
                            changed += 1
    return changed


def _overridden(figure: Figure | None) -> bool:
    return figure is not None and figure.origin == OVERRIDE


def _matches(sku: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    if not match:
        return False
    for key, value in match.items():
        have = sku.get(key)
        if isinstance(have, (list, tuple)):
            if value not in have:
                return False
        elif have != value:
            return False
    return True


def pricing_file(pricing: str | None, settings: Any) -> str | None:
    """The price override file: --pricing, else $DEPLOYER_PRICING, else None (shipped and live)."""
    if pricing is None and settings.pricing:
        return str(settings.pricing)
    return pricing


def load(
    pricing: str | Path | None = None,
    *,
    live: bool = True,
    providers: Iterable[str] | None = None,
    timeout: float = 10.0,
) -> Catalog:
    """The catalog to price with: shipped, then live figures for `providers` (default: all with a
    pricing module and credentials) unless `live` is false, then the override file `pricing`.

    Raises InputError for a bad override file; live failures become notes, never errors."""
    override = None
    if pricing:
        path = Path(pricing).expanduser()
        override = read_override(path)
    catalog = build(shipped_raw())
    if live:
        from .live import fetch_live

        results, notes = fetch_live(providers if providers is not None else list(catalog.providers), timeout=timeout)
        catalog.notes.extend(notes)
        for name, (records, what) in results.items():
            if apply_live(catalog, name, records):
                catalog.live[name] = what
    if override is not None:  # last: an override wins even over live figures
        apply_override(catalog, override, name=str(path),
                       date=dt.date.fromtimestamp(path.stat().st_mtime).isoformat())
    return catalog
