"""A local Lambda Cloud: the API of openapi-1.10.0.json over HTTP, with VMs that boot their
user_data into a local vLLM engine. See server.py (HTTP, limits, faults), cloud.py (account
state and lifecycle), vm.py (the guest) and fixture.py (pytest wiring)."""

from .cloud import ApiError, LambdaCloud
from .server import LambdaEmulator

__all__ = ["ApiError", "LambdaCloud", "LambdaEmulator"]
