"""Timeouts and memory sized for the model: pure arithmetic on the spec.

Weights are estimated from `model.params_b`, else from a size in the model's name ("...-8B-...");
unknown sizes fall back to a generous default. Rates are deliberately pessimistic: a timeout that
is too short kills a container that would have come up.
"""

from __future__ import annotations

import math
import re

from deployer.spec import Spec

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")
_BYTES_PER_PARAM = {"awq": 0.5, "gptq": 0.5, "bitsandbytes": 0.5, "gguf": 0.5, "fp8": 1.0, "compressed-tensors": 1.0}

UNKNOWN_WEIGHTS_GB = 16.0  # an 8B model in bf16
DOWNLOAD_S_PER_GB = 12.0  # Hugging Face -> volume, first start only
LOAD_S_PER_GB = 4.0  # volume -> GPU
ENGINE_START_S = 180.0  # imports, CUDA context, compile/graph capture, warm-up
IMAGE_BUILD_S = 1200.0  # first deploy: pulling CUDA and installing vLLM


def params_billions(spec: Spec) -> float | None:
    """Parameter count in billions: `model.params_b`, else the size in the model id, else None."""
    if spec.model.params_b:
        return float(spec.model.params_b)
    found = _SIZE_IN_NAME.findall(spec.model.id.rsplit("/", 1)[-1])
    return float(found[-1]) if found else None


def weights_gb(spec: Spec) -> float:
    """Approximate size of the weights in GB (params x bytes per param by dtype/quantization)."""
    params = params_billions(spec)
    if params is None:
        return UNKNOWN_WEIGHTS_GB
    per_param = _BYTES_PER_PARAM.get(spec.model.quantization or "", 4.0 if spec.model.dtype == "float32" else 2.0)
    return params * per_param


def startup_timeout_s(spec: Spec) -> int:
    """Seconds a new container may take before it serves: download + load + engine start, x1.5."""
    gb = weights_gb(spec)
    return int(math.ceil(1.5 * (ENGINE_START_S + gb * (DOWNLOAD_S_PER_GB + LOAD_S_PER_GB)) / 60.0) * 60)


def snapshot_memory_mib(spec: Spec) -> int:
    """Host RAM for snapshot mode: sleep level 1 moves the weights to host memory, so the
    container needs them plus the server's own footprint (8 GiB), rounded up to whole GiB."""
    gib = weights_gb(spec) * 1e9 / 2**30
    return int(math.ceil(gib * 1.25 + 8)) * 1024


def readiness_timeout_s(spec: Spec, startup_timeout: int) -> float:
    """Seconds deploy waits for the first answer: a first deploy builds the image (vLLM and
    CUDA layers), then starts a container; in snapshot mode that start also takes the snapshot."""
    return IMAGE_BUILD_S + startup_timeout
