"""Per-backend traffic totals, kept in memory and flushed to the state for `deployer cost`.

`add` is called on the event loop for every attempt; `flush` runs in a worker thread (SQLite
blocks). The two meet only under a lock held for a dict swap, so neither waits on the other's I/O.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

Key = tuple[str, str, int]  # deployment, provider, minute


class UsageLedger:
    def __init__(self, gateway: str, home: Path) -> None:
        self.gateway = gateway
        self.home = home
        self._lock = threading.Lock()
        self._pending: dict[Key, list[float]] = {}  # key -> [requests, errors, seconds]

    def add(self, deployment: str, provider: str, seconds: float, *, error: bool, now: float | None = None) -> None:
        """Count one attempt on `deployment`. Never blocks on I/O."""
        minute = int((now if now is not None else time.time()) // 60 * 60)
        with self._lock:
            totals = self._pending.setdefault((deployment, provider, minute), [0, 0, 0.0])
            totals[0] += 1
            totals[1] += 1 if error else 0
            totals[2] += seconds

    def flush(self) -> int:
        """Write what accumulated since the last flush to the state; return the rows written.
        Blocks on SQLite. On failure the totals are put back for the next flush, then it raises."""
        from ..state import StateStore

        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        rows = [(d, p, m, int(t[0]), int(t[1]), float(t[2])) for (d, p, m), t in pending.items()]
        try:
            store = StateStore(self.home)
            try:
                store.add_gateway_traffic(self.gateway, rows)
            finally:
                store.close()
        except BaseException:
            with self._lock:
                for key, totals in pending.items():
                    mine = self._pending.setdefault(key, [0, 0, 0.0])
                    for i in range(3):
                        mine[i] += totals[i]
            raise
        return len(rows)
