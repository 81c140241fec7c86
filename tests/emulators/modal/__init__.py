"""A local Modal control plane for tests: see emulator.py (ModalEmulator) and fixtures.py."""

from .emulator import TOKEN, ModalEmulator

__all__ = ["TOKEN", "ModalEmulator"]
