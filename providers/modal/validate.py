"""What Modal accepts without complaint at import time but fails or misbehaves on later:
GPU names and counts, snapshot with several GPUs, timeouts, scale-down window.

Every check raises InputError (exit code 2) naming the spec key and what to do.
"""

from __future__ import annotations

from typing import Literal

from deployer.errors import InputError
from deployer.gpus import GPUS
from deployer.spec import Spec

from . import sizing

# Canonical GPU name -> Modal's GPU string, with the most GPUs Modal attaches to one container
# (modal.com/docs/guide/gpu: A10 up to 4, the others up to 8).
MODAL_GPUS: dict[str, tuple[str, int]] = {
    "T4": ("T4", 8),
    "L4": ("L4", 8),
    "A10": ("A10", 4),
    "L40S": ("L40S", 8),
    "A100-40GB": ("A100-40GB", 8),
    "A100-80GB": ("A100-80GB", 8),
    "H100": ("H100", 8),
    "H200": ("H200", 8),
    "B200": ("B200", 8),
}
MIN_SCALEDOWN_WINDOW, MAX_SCALEDOWN_WINDOW = 2, 3600  # Modal's bounds, seconds

Mode = Literal["snapshot", "plain"]


def gpu_string(spec: Spec) -> str:
    """Modal's `gpu=` value for the spec ("L40S", "H100:2"). Raises InputError when Modal does
    not offer that GPU or that many on one container."""
    name, count = spec.resources.gpu, spec.resources.count
    if name is None:
        raise InputError(
            "Modal serves vLLM on a GPU, and resources.gpu is not set",
            hint=f"set resources.gpu to one of: {', '.join(MODAL_GPUS)}",
        )
    if name not in MODAL_GPUS:
        offered = ", ".join(MODAL_GPUS)
        raise InputError(
            f"Modal does not offer the {name} (resources.gpu)",
            hint=f"pick one Modal has: {offered}; e.g. {_closest(name)} has similar memory",
        )
    modal_name, most = MODAL_GPUS[name]
    if count > most:
        raise InputError(
            f"Modal attaches at most {most} x {name} to one container; resources.count is {count}",
            hint=f"lower resources.count to {most} or pick a GPU with more memory",
        )
    return modal_name if count == 1 else f"{modal_name}:{count}"


def _closest(name: str) -> str:
    memory = GPUS[name].memory_gb
    return min(MODAL_GPUS, key=lambda g: (abs(GPUS[g].memory_gb - memory), GPUS[g].memory_gb))


def serving_mode(spec: Spec) -> Mode:
    """snapshot or plain, from providers.modal.mode and the spec. Raises InputError for an
    explicit snapshot request on more than one GPU."""
    opts = spec.options("modal")
    count = spec.resources.count
    if opts.mode == "snapshot" and count > 1:
        raise InputError(
            f"providers.modal.mode is snapshot, but resources.count is {count}: GPU memory snapshots "
            "are generally incompatible with multi-GPU (tensor-parallel) code, so Modal's snapshots "
            "are limited to one GPU here",
            hint="use resources.count: 1, or providers.modal.mode: plain",
        )
    if opts.mode == "auto":
        return "snapshot" if spec.startup.fast_boot and count == 1 else "plain"
    return opts.mode


def check_scaling(spec: Spec) -> None:
    """Modal's bounds on scale-down and the function timeout vs. the startup timeout."""
    idle = spec.scaling.idle_timeout
    if not MIN_SCALEDOWN_WINDOW <= idle <= MAX_SCALEDOWN_WINDOW:
        raise InputError(
            f"scaling.idle_timeout is {idle}s; Modal's scale-down window is "
            f"{MIN_SCALEDOWN_WINDOW}..{MAX_SCALEDOWN_WINDOW} seconds",
            hint=f"set scaling.idle_timeout to at least {MIN_SCALEDOWN_WINDOW}",
        )


def startup_timeout(spec: Spec) -> int:
    """The container startup timeout: providers.modal.startup_timeout, else sized for the model.
    Raises InputError when an explicit value is shorter than merely loading the weights."""
    explicit = spec.options("modal").startup_timeout
    if explicit is None:
        return sizing.startup_timeout_s(spec)
    floor = int(sizing.weights_gb(spec) * sizing.LOAD_S_PER_GB) + 30
    if explicit < floor:
        raise InputError(
            f"providers.modal.startup_timeout is {explicit}s, less than loading about "
            f"{sizing.weights_gb(spec):.0f} GB of weights takes (about {floor}s)",
            hint=f"raise it, or leave it unset for the sized default ({sizing.startup_timeout_s(spec)}s)",
        )
    return explicit
