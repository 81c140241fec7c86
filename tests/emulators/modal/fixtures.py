"""pytest fixtures for the Modal emulator. Import them into a test module:

    from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401

and ask for `modal_emulator` in a test's arguments.

`modal_emulator` starts a fresh control plane on 127.0.0.1, points the Modal SDK at it through
MODAL_SERVER_URL and fake MODAL_TOKEN_ID/SECRET (in os.environ, so subprocesses inherit them
when given `emulator.env()`), and on teardown stops every container, web proxy and the server,
then checks that no engine process or emulator thread is left.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .emulator import ModalEmulator


@pytest.fixture(name="modal_emulator")
def modal_emulator_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModalEmulator]:
    emulator = ModalEmulator(tmp_path / "modal-emulator").start()
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MODAL_ENVIRONMENT", raising=False)
    monkeypatch.delenv("MODAL_PROFILE", raising=False)
    monkeypatch.setenv("DEPLOYER_MODAL_POLL_INTERVAL", "0.05")
    monkeypatch.setenv("DEPLOYER_MODAL_STOP_TIMEOUT", "10")
    try:
        yield emulator
    finally:
        containers = list(emulator.containers.values()) + emulator.retired
        emulator.stop()
        leftovers = [c.spec.tag for c in containers if c.engine is not None and c.engine.alive()]
        assert not leftovers, f"engine processes left running: {leftovers}"
        threads = [t.name for t in threading.enumerate() if t.name.startswith("modal-") and t.is_alive()]
        assert not threads, f"emulator threads left running: {threads}"
