"""How big a model is: parameter count, layer shapes, weight bytes, KV-cache bytes per token.

Where the figures come from, first found wins:
  parameters: config.json on disk (a local model directory, or the Hugging Face cache), with
              safetensors headers for the exact count; then `model.params_b`; then the table of
              well-known models (deployer/data/models.yaml); then config.json from the hub.
  layer shapes (for the KV cache): the same config.json, the table, or the hub.
Nothing here raises for an unknown model: the figures are None and `sources` says why.
Reading the hub is the last resort, with a short timeout, and skipped when HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GIB = 1024**3

DTYPE_BYTES = {"auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "float32": 4.0}
# vLLM's dtype "auto" serves float32 checkpoints in 16 bits too, so "auto" is 2 bytes.

# Bits per quantized weight, and the extra bits per weight that group scales/zeros add
# (group size 128: a 16-bit scale and a 4-bit zero per 128 weights).
QUANT_BITS: dict[str, float] = {"awq": 4, "gptq": 4, "bitsandbytes": 4, "fp8": 8, "gguf": 4.85, "compressed-tensors": 8}
QUANT_GROUP_OVERHEAD_BITS = {"awq": 20 / 128, "gptq": 20 / 128, "bitsandbytes": 16 / 64}
QUANT_ASSUMED = {"gguf": "assumed Q4_K_M (4.85 bits)", "compressed-tensors": "assumed 8-bit (no quantization_config at hand)"}

SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8,
}


@dataclass(frozen=True)
class Shape:
    """The config.json fields sizing needs (a decoder-only transformer, optionally MoE)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    num_experts: int = 1
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int = 0
    mlp_matrices: int = 3  # gate, up, down (SwiGLU); 2 for a plain MLP
    max_position_embeddings: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape | None:
        """The shape in a Hugging Face config.json, or None when a needed field is missing."""
        if isinstance(config.get("text_config"), dict):  # multimodal wrappers nest the LM's config
            config = {**config["text_config"], **{k: v for k, v in config.items() if k == "quantization_config"}}
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
            return cls(
                hidden_size=hidden,
                intermediate_size=int(config.get("intermediate_size") or config.get("ffn_dim") or 4 * hidden),
                num_hidden_layers=int(config["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab_size=int(config["vocab_size"]),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                num_experts=experts,
                moe_intermediate_size=config.get("moe_intermediate_size"),
                shared_expert_intermediate_size=int(config.get("shared_expert_intermediate_size") or 0),
                mlp_matrices=2 if config.get("model_type") in ("opt", "gpt2", "gpt_neox", "bloom") else 3,
                max_position_embeddings=config.get("max_position_embeddings"),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def params(self) -> int:
        """Parameter count: embeddings (and an untied LM head), attention, MLP or experts, norms."""
        h, d = self.hidden_size, self.head_dim
        attention = h * self.num_attention_heads * d * 2 + h * self.num_key_value_heads * d * 2
        if self.num_experts > 1:
            expert_size = self.moe_intermediate_size or self.intermediate_size
            mlp = self.num_experts * self.mlp_matrices * h * expert_size + h * self.num_experts
            mlp += self.mlp_matrices * h * self.shared_expert_intermediate_size
        else:
            mlp = self.mlp_matrices * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        return self.embedding_params() + self.num_hidden_layers * per_layer + h

    def kv_bytes_per_token(self, bytes_per_value: float) -> float:
        """KV cache for one token: keys and values, every layer, every KV head."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * bytes_per_value


@dataclass(frozen=True)
class ModelSize:
    """What is known about a model's size, and where each figure came from."""

    params: int | None
    params_source: str | None
    shape: Shape | None
    shape_source: str | None
    config: dict[str, Any] | None  # the config.json found, if any
    disk_bytes: int | None  # tensor bytes in local safetensors files, if any
    disk_dtype: str | None  # the dominant safetensors dtype, if any

    @property
    def quantization_config(self) -> dict[str, Any]:
        return (self.config or {}).get("quantization_config") or {}


# -- the table of well-known models ---------------------------------------------------------


@cache
def table() -> dict[str, dict[str, Any]]:
    """deployer/data/models.yaml by lower-cased hub id (aliases included)."""
    text = resources.files("deployer").joinpath("data", "models.yaml").read_text()
    out: dict[str, dict[str, Any]] = {}
    for entry in yaml.safe_load(text)["models"]:
        for model_id in [entry["id"], *entry.get("aliases", [])]:
            out[model_id.lower()] = entry
    return out


def table_entry(model_id: str) -> dict[str, Any] | None:
    return table().get(model_id.lower())


# -- config.json and safetensors on disk ----------------------------------------------------


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The local Hugging Face cache snapshot directory of `model_id`, if one holds config.json."""
    repo = _hub_cache() / ("models--" + model_id.replace("/", "--"))
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    candidate = repo / "snapshots" / commit
    if (candidate / "config.json").is_file():
        return candidate
    if revision is None and (repo / "snapshots").is_dir():
        found = sorted((repo / "snapshots").glob("*/config.json"))
        return found[0].parent if found else None
    return None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError(f"{path}: implausible safetensors header length {length}")
        return json.loads(handle.read(length))


def safetensors_totals(directory: Path) -> tuple[int, int, str | None] | None:
    """(parameter count, tensor bytes, dominant dtype) over a directory's safetensors files."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    params = nbytes = 0
    by_dtype: dict[str, int] = {}
    try:
        for path in files:
            for name, info in read_safetensors_header(path).items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in info["shape"]:
                    count *= int(dim)
                start, end = info["data_offsets"]
                params += count
                nbytes += int(end) - int(start)
                by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + count
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    dominant = max(by_dtype, key=by_dtype.__getitem__) if by_dtype else None
    return params, nbytes, dominant


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@cache
def _hub_config(model_id: str, revision: str | None, token: str | None, timeout: float) -> dict[str, Any] | None:
    """config.json from huggingface.co, or None (offline, private without a token, absent)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{model_id}/resolve/{revision or 'main'}/config.json"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def size_of(
    model_id: str,
    *,
    revision: str | None = None,
    params_b: float | None = None,
    hf_token: str | None = None,
    fetch: bool = True,
    timeout: float = 3.0,
) -> ModelSize:
    """Everything known about the size of `model_id` (see the module docstring for the order).

    Never raises; touches the network only when nothing local answers and `fetch` is true."""
    from deployer.spec import is_local_path

    config: dict[str, Any] | None = None
    config_source: str | None = None
    directory: Path | None = None
    if is_local_path(model_id):
        directory = Path(model_id).expanduser()
        config_source = f"{directory}/config.json"
    else:
        directory = cached_snapshot(model_id, revision)
        config_source = f"config.json in the Hugging Face cache ({directory})" if directory else None
    if directory is not None:
        config = _read_json(directory / "config.json")
        if config is None:
            config_source = None

    totals = safetensors_totals(directory) if directory is not None and directory.is_dir() else None
    shape = Shape.from_config(config) if config else None
    shape_source = config_source if shape else None
    params: int | None = None
    params_source: str | None = None
    quantized_checkpoint = bool((config or {}).get("quantization_config"))
    if totals and not quantized_checkpoint:  # packed quantized tensors do not count parameters
        params, params_source = totals[0], f"safetensors headers in {directory}"
    elif shape:
        params, params_source = shape.params(), config_source

    entry = None if is_local_path(model_id) else table_entry(model_id)
    if params is None and params_b is not None:
        params, params_source = int(params_b * 1e9), "model.params_b"
    if entry is not None:
        if shape is None:
            shape, shape_source = Shape.from_config(entry), f"deployer's table of well-known models ({entry['source']})"
        if params is None:
            params, params_source = int(entry["params_b"] * 1e9), f"deployer's table of well-known models ({entry['source']})"
    if (params is None or shape is None) and fetch and not is_local_path(model_id):
        hub = _hub_config(model_id, revision, hf_token, timeout)
        if hub is not None:
            config = config or hub
            hub_shape = Shape.from_config(hub)
            if shape is None and hub_shape is not None:
                shape, shape_source = hub_shape, f"config.json from the Hugging Face hub ({model_id})"
            if params is None and hub_shape is not None:
                params, params_source = hub_shape.params(), f"config.json from the Hugging Face hub ({model_id})"
    return ModelSize(
        params=params,
        params_source=params_source,
        shape=shape,
        shape_source=shape_source,
        config=config,
        disk_bytes=totals[1] if totals else None,
        disk_dtype=totals[2] if totals else None,
    )
