"""Will the model fit, and how long will it take to start?

Memory, in GiB (GPU memory as sold, deployer/gpus.py, taken as GiB):
    available = GPU memory x count x gpu-memory-utilization (vLLM's default 0.9, or engine_args)
    required  = weights + KV cache for one sequence of max_model_len + overhead per GPU
    weights   = parameters x bytes per parameter (dtype), or for quantization: quantized linear
                layers at their bits (plus group scales) and embeddings at 16 bits; a local
                pre-quantized checkpoint counts its tensor bytes on disk
    KV cache  = 2 (K and V) x layers x KV heads x head dim x bytes per value, per token
vLLM itself refuses to start when one max_model_len sequence does not fit beside the weights;
the room left over says how many such sequences run at once.

Cold start, from the weights size: the reported serverless ranges by
size, never below the measured floor (import torch + CUDA context + weights at the rate of
where they come from), moved by the levers the spec turns on, per provider (the levers and
their effects are catalog data: deployer/data/prices.yaml, `cold_start`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from deployer.errors import InputError
from deployer.gpus import GPUS

from . import modelsize
from .modelsize import GIB, ModelSize

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default for --gpu-memory-utilization
OVERHEAD_GIB_PER_GPU = 1.5  # CUDA context, activations, CUDA graphs: an estimate (vLLM profiles it)
COUNTS = (1, 2, 4, 8)

# Reported serverless cold starts by weights size (GB, bf16), one 2026
# industry comparison. Anchors at the middle of each size band: (weights GB, low s, high s).
REPORTED_COLD_START = ((4.0, 5.0, 15.0), (20.0, 15.0, 45.0), (100.0, 45.0, 120.0))
# Measured floor on one H200 host (PyTorch, safetensors, 4.3 GB file; 2026-11-27).
FLOOR_FIXED_S = 3.6 + 0.3  # import torch + CUDA context
FLOOR_RATE_GBPS = {"disk": 1.6, "ram": 5.7, "pinned": 55.0}


@dataclass(frozen=True)
class ColdStart:
    """The expected cold start on one provider: a range in seconds and what moves it."""

    provider: str
    label: str
    low_s: float
    high_s: float
    floor_s: float
    scales_to_zero: bool
    levers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def mid_s(self) -> float:
        return (self.low_s + self.high_s) / 2

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mid_s": self.mid_s}


@dataclass(frozen=True)
class CapacityReport:
    model: str
    gpu: str
    count: int
    params_b: float | None
    params_source: str | None
    precision: str
    bytes_per_param: float | None
    weights_gib: float | None
    weights_source: str | None
    max_model_len: int | None
    max_model_len_source: str | None
    kv_bytes_per_token: float | None
    kv_gib_per_sequence: float | None
    kv_source: str | None
    overhead_gib: float
    gpu_memory_gib: float
    memory_utilization: float
    available_gib: float
    required_gib: float | None
    headroom_gib: float | None  # left for the KV cache after weights and overhead
    sequences_at_max_len: int | None
    fits: bool | None  # None: the model's size is unknown
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cold_start: list[ColdStart] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cold_start"] = [c.to_dict() for c in self.cold_start]
        return data

    @property
    def weights_gb(self) -> float | None:
        """Weights in decimal GB (the unit of the measured transfer rates)."""
        return None if self.weights_gib is None else self.weights_gib * GIB / 1e9

    def summary(self) -> str:
        if self.fits is None:
            return f"{self.model}: size unknown ({'; '.join(self.notes)})"
        kv = f" + KV cache {gib(self.kv_gib_per_sequence)} for one {self.max_model_len}-token sequence" if self.kv_gib_per_sequence is not None else ""
        return (
            f"{self.model} needs {gib(self.required_gib)} (weights {gib(self.weights_gib)} in {self.precision}{kv}"
            f" + {gib(self.overhead_gib)} overhead); {self.count}x {self.gpu} gives {gib(self.available_gib)}"
            f" ({self.gpu_memory_gib:g} GiB x {self.count} x {self.memory_utilization:g} gpu-memory-utilization)"
        )


def gib(value: float | None) -> str:
    """A memory figure for people: GiB, or MiB below a tenth of a GiB."""
    if value is None:
        return "unknown"
    return f"{value * 1024:.1f} MiB" if value < 0.1 else f"{value:.1f} GiB"


# -- weights and KV ------------------------------------------------------------------------


def _quantization(spec_quant: str | None, size: ModelSize) -> tuple[str | None, float | None, str | None]:
    """(method, bits per weight, what was assumed) from the spec, else the checkpoint's config."""
    qc = size.quantization_config
    method = spec_quant or (str(qc.get("quant_method")).lower() if qc.get("quant_method") else None)
    if method is None:
        return None, None, None
    method = {"awq_marlin": "awq", "gptq_marlin": "gptq", "bitsandbytes_4bit": "bitsandbytes"}.get(method, method)
    bits = qc.get("bits") or qc.get("w_bit")
    if bits is None:
        for group in (qc.get("config_groups") or {}).values():
            bits = ((group or {}).get("weights") or {}).get("num_bits") or bits
    if qc.get("load_in_8bit"):
        bits = 8
    assumed = None
    if bits is None:
        bits = modelsize.QUANT_BITS.get(method)
        assumed = modelsize.QUANT_ASSUMED.get(method)
    if bits is None:
        bits, assumed = 8, f"assumed 8-bit for {method}"
    return method, float(bits), assumed


def weights(size: ModelSize, dtype: str, quantization: str | None) -> tuple[float | None, float | None, str, str | None]:
    """(weights bytes, bytes per parameter, precision label, source) for serving in `dtype`."""
    method, bits, assumed = _quantization(quantization, size)
    if method is None:
        per = modelsize.DTYPE_BYTES[dtype]
        label = dtype if dtype != "auto" else "auto (16-bit)"
        if size.params is None:
            return None, per, label, None
        return size.params * per, per, label, f"{size.params / 1e9:.3g}B parameters x {per:g} bytes"
    label = f"{method} {bits:g}-bit" + (f" ({assumed})" if assumed else "")
    if size.quantization_config and size.disk_bytes:
        per = size.disk_bytes / size.params if size.params else None
        return float(size.disk_bytes), per, label, "tensor bytes of the quantized checkpoint on disk"
    if size.params is None:
        return None, None, label, None
    extra = modelsize.QUANT_GROUP_OVERHEAD_BITS.get(method, 0.0)
    embed = size.shape.embedding_params() if size.shape else 0
    linear = max(0, size.params - embed)
    nbytes = linear * (bits + extra) / 8 + embed * 2.0
    source = f"{size.params / 1e9:.3g}B parameters: linear layers at {bits + extra:.3g} bits" + (
        ", embeddings at 16 bits" if embed else "")
    return nbytes, nbytes / size.params, label, source


def kv_bytes_per_value(dtype: str, engine_args: dict[str, Any]) -> float:
    kv_dtype = str(engine_args.get("kv-cache-dtype", "auto"))
    if kv_dtype.startswith("fp8"):
        return 1.0
    return 4.0 if dtype == "float32" else 2.0


def memory_utilization(engine_args: dict[str, Any]) -> float:
    value = engine_args.get("gpu-memory-utilization")
    try:
        return float(value) if value is not None else DEFAULT_GPU_MEMORY_UTILIZATION
    except (TypeError, ValueError):
        return DEFAULT_GPU_MEMORY_UTILIZATION


# -- cold start -----------------------------------------------------------------------------


def reported_range(weights_gb: float) -> tuple[float, float]:
    """The reported serverless cold-start range (s) for weights of `weights_gb` GB, interpolated
    between the reported size bands, and proportional above the largest."""
    anchors = REPORTED_COLD_START
    if weights_gb <= anchors[0][0]:
        return anchors[0][1], anchors[0][2]
    for (g0, lo0, hi0), (g1, lo1, hi1) in zip(anchors, anchors[1:]):
        if weights_gb <= g1:
            t = (weights_gb - g0) / (g1 - g0)
            return lo0 + t * (lo1 - lo0), hi0 + t * (hi1 - hi0)
    g, lo, hi = anchors[-1]
    return lo * weights_gb / g, hi * weights_gb / g


def floor_s(weights_gb: float, source: str = "disk") -> float:
    """The measured floor: import torch + CUDA context + weights from `source` to the GPU."""
    return FLOOR_FIXED_S + weights_gb / FLOOR_RATE_GBPS[source]


def cold_starts(spec: Any, weights_gb: float, catalog: Any) -> list[ColdStart]:
    """The expected cold start on every provider of the catalog, with the spec's levers."""
    out = []
    for name, info in catalog.providers.items():
        data = catalog.cold_start(name)
        if data:
            out.append(provider_cold_start(spec, weights_gb, name, info.label, data))
    return out


def provider_cold_start(spec: Any, weights_gb: float, provider: str, label: str, data: dict[str, Any]) -> ColdStart:
    count = spec.resources.count
    levers: list[str] = []
    notes: list[str] = []
    disk_floor = floor_s(weights_gb, "disk")
    engine_args = spec.model.engine_args
    if engine_args.get("enforce-eager") is True:
        levers.append("enforce-eager: no CUDA-graph capture at start (faster start, slower decoding)")
    if spec.model.quantization:
        levers.append(f"quantization {spec.model.quantization}: fewer bytes to load")
    if not data.get("scales_to_zero", True):
        boots = {int(k): v for k, v in (data.get("boot_s") or {}).items()}
        key = max((k for k in boots if k <= count), default=min(boots) if boots else None)
        boot_lo, boot_hi = boots.get(key, (0, 0)) if key is not None else (0, 0)
        _, reported_hi = reported_range(weights_gb)
        low, high = boot_lo + disk_floor, boot_hi + reported_hi
        if data.get("note"):
            notes.append(str(data["note"]))
        return ColdStart(provider, label, low, high, disk_floor, False, levers, notes)
    low, high = reported_range(weights_gb)
    low = max(low, floor_s(weights_gb, "ram"))
    floor = floor_s(weights_gb, "ram")
    fast = data.get("fast_boot") or {}
    if fast:
        name = fast.get("name", "fast boot")
        if not spec.startup.fast_boot:
            notes.append(f"startup.fast_boot is off: no {name}")
        elif fast.get("max_count") is not None and count > int(fast["max_count"]):
            notes.append(f"{name} needs {fast['max_count']} GPU per replica; off for {count} GPUs")
        elif fast.get("effect") == "ram_floor":
            low = floor = floor_s(weights_gb, "ram")
            levers.append(f"{name} (startup.fast_boot): {fast.get('note', '')}".rstrip(": "))
        elif fast.get("effect") == "speedup":
            slow, quick = (float(x) for x in fast.get("speedup", (1, 1)))
            floor = floor_s(weights_gb, "pinned")
            low, high = max(floor, low / quick), max(floor, high / slow)
            levers.append(f"{name} (startup.fast_boot): {fast.get('note', '')}".rstrip(": "))
    if spec.scaling.min_replicas:
        levers.append(f"min_replicas {spec.scaling.min_replicas}: no cold start while the traffic fits in the warm replicas")
    if data.get("first_deploy"):
        notes.append(str(data["first_deploy"]))
    return ColdStart(provider, label, low, max(high, low), floor, True, levers, notes)


# -- the check ------------------------------------------------------------------------------


def _hf_token(spec: Any) -> str | None:
    return os.environ.get(spec.secrets.hf_token_env) or None


def estimate(spec: Any, *, gpu: str | None = None, count: int | None = None, quantization: str | None = "spec",
             max_model_len: int | None = None, size: ModelSize | None = None, catalog: Any = None,
             fetch: bool = True) -> CapacityReport:
    """The capacity figures of `spec` (or of it on another `gpu`/`count`/`quantization`/
    `max_model_len`). Never raises for a model that does not fit: see `fits` and `problems`."""
    gpu = gpu or spec.resources.gpu
    count = count or spec.resources.count
    model = spec.model
    quant = model.quantization if quantization == "spec" else quantization
    if size is None:
        size = modelsize.size_of(model.id, revision=model.revision, params_b=model.params_b,
                                 hf_token=_hf_token(spec), fetch=fetch)
    nbytes, per_param, precision, weights_source = weights(size, model.dtype, quant)
    notes: list[str] = []
    problems: list[str] = []
    length = max_model_len or model.max_model_len
    length_source = "model.max_model_len" if length else None
    if length is None and size.shape and size.shape.max_position_embeddings:
        length, length_source = int(size.shape.max_position_embeddings), "the model's max_position_embeddings (vLLM's default)"
    kv_token = size.shape.kv_bytes_per_token(kv_bytes_per_value(model.dtype, model.engine_args)) if size.shape else None
    kv_seq = kv_token * length / GIB if kv_token is not None and length else None
    if kv_token is None:
        notes.append("layer shapes unknown: KV cache not counted (give a well-known model id or a local model)")
    if size.params is None:
        notes.append("parameter count unknown: set model.params_b")
    gpu_gib = float(GPUS[gpu].memory_gb)
    util = memory_utilization(model.engine_args)
    available = gpu_gib * count * util
    overhead = OVERHEAD_GIB_PER_GPU * count
    weights_gib = nbytes / GIB if nbytes is not None else None
    required = headroom = sequences = None
    fits: bool | None = None
    if weights_gib is not None:
        required = weights_gib + overhead + (kv_seq or 0.0)
        headroom = available - weights_gib - overhead
        sequences = int(headroom // kv_seq) if kv_seq and headroom > 0 else None
        fits = required <= available
        if not fits:
            problems.append("memory")
    if size.shape and size.shape.num_attention_heads % count:
        problems.append("tensor-parallel")
        fits = False
    return CapacityReport(
        model=model.id,
        gpu=gpu, count=count,
        params_b=size.params / 1e9 if size.params is not None else None,
        params_source=size.params_source,
        precision=precision, bytes_per_param=per_param,
        weights_gib=weights_gib, weights_source=weights_source,
        max_model_len=length, max_model_len_source=length_source,
        kv_bytes_per_token=kv_token, kv_gib_per_sequence=kv_seq, kv_source=size.shape_source,
        overhead_gib=overhead, gpu_memory_gib=gpu_gib, memory_utilization=util,
        available_gib=available, required_gib=required, headroom_gib=headroom,
        sequences_at_max_len=sequences, fits=fits, problems=problems, notes=notes,
        cold_start=cold_starts(spec, weights_gib * GIB / 1e9, catalog) if weights_gib is not None and catalog else [],
    )


def check(spec: Any, *, catalog: Any = None, fetch: bool = True) -> CapacityReport | None:
    """The capacity check `plan` and `deploy` run. None for a spec without a GPU (this machine).

    Raises InputError with the figures and ways out when the model cannot fit on the spec's
    GPUs (memory, or attention heads not divisible by the GPU count). A model of unknown size
    passes with a note."""
    if spec.resources.gpu is None:
        return None
    if catalog is None:
        from .catalog import load

        catalog = load(live=False)
    size = modelsize.size_of(spec.model.id, revision=spec.model.revision, params_b=spec.model.params_b,
                             hf_token=_hf_token(spec), fetch=fetch)
    report = estimate(spec, size=size, catalog=catalog)
    if report.fits is False:
        raise InputError(_refusal(report, size), hint="; or ".join(ways_out(spec, report, size)) or None)
    return report


def _refusal(report: CapacityReport, size: ModelSize) -> str:
    if "tensor-parallel" in report.problems and size.shape:
        return (f"{report.model} has {size.shape.num_attention_heads} attention heads, which vLLM cannot split "
                f"over {report.count} GPUs (tensor parallelism needs the head count divisible by the GPU count)")
    return f"{report.summary()}: it does not fit"


def ways_out(spec: Any, report: CapacityReport, size: ModelSize) -> list[str]:
    """Concrete changes that make the model fit, each with its figures."""
    out: list[str] = []
    gpu, count = report.gpu, report.count
    for more in (c for c in COUNTS if c > count):
        alt = estimate(spec, count=more, size=size)
        if alt.fits:
            out.append(f"resources.count: {more} ({more}x {gpu} gives {alt.available_gib:.0f} GiB)")
            break
    bigger = sorted((g for g in GPUS.values() if g.memory_gb > GPUS[gpu].memory_gb), key=lambda g: g.memory_gb)
    for candidate in bigger:
        alt = estimate(spec, gpu=candidate.name, size=size)
        if alt.fits:
            out.append(f"resources.gpu: {candidate.name} ({count}x {candidate.memory_gb} GiB gives {alt.available_gib:.0f} GiB)")
            break
    if spec.model.quantization is None and not size.quantization_config and "memory" in report.problems:
        for method, how in (("fp8", "vLLM quantizes the weights on load"), ("awq", "needs an AWQ checkpoint of the model")):
            alt = estimate(spec, quantization=method, size=size)
            if alt.fits:
                out.append(f"model.quantization: {method} (weights about {alt.weights_gib:.0f} GiB; {how})")
                break
    if "memory" in report.problems and report.kv_bytes_per_token and report.weights_gib is not None:
        room = report.available_gib - report.weights_gib - report.overhead_gib
        longest = int(room * GIB // report.kv_bytes_per_token) // 256 * 256 if room > 0 else 0
        if longest >= 256:
            out.append(f"model.max_model_len: {longest} (the KV cache of one longer sequence does not fit)")
    if "tensor-parallel" in report.problems and size.shape:
        good = [c for c in COUNTS if size.shape.num_attention_heads % c == 0]
        out.append(f"resources.count: one of {', '.join(map(str, good))} (divides the {size.shape.num_attention_heads} heads)")
    return out
