"""A faithful local RunPod (REST v2 control plane + serverless data plane) for tests."""

from .emulator import DEFAULT_KEY, Faults, RunPodEmulator

__all__ = ["DEFAULT_KEY", "Faults", "RunPodEmulator"]
