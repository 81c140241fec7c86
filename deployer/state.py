"""The state store: SQLite in WAL mode under DEPLOYER_HOME.

What it guarantees:
- Intent first: `begin` records (name, provider, spec hash) before any provider call, and
  `record_resource` persists each resource id in its own committed transaction, so a crash at
  any point leaves a row from which `destroy` can find what bills.
- No secrets: it stores the spec (which names env vars, never values), resource ids, URLs and
  status words. Callers must not pass secret values; `record_resource` refuses extras that look
  like credentials.
- One writer per deployment name: `lock(name)` is an exclusive file lock (released by the OS if
  the process dies). Different names proceed in parallel.
- A database written by a newer deployer, or one that is not a deployer database, is reported
  (StateError) and never overwritten.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DeployerError, LockedError
from .provider import Deployment, Resource

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    secrets_digest TEXT NOT NULL DEFAULT '',
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    url TEXT,
    key_source TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, provider)
);
CREATE TABLE IF NOT EXISTS resources (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    extra_json TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    UNIQUE (name, provider, kind, resource_id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
-- deployer bench results. Additive: an older database gains the table on open (every statement
-- here is IF NOT EXISTS), and an older deployer ignores it, so SCHEMA_VERSION stays as it is.
CREATE TABLE IF NOT EXISTS benchmarks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    at REAL NOT NULL,
    result_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS benchmarks_by_name ON benchmarks (name, provider, at);
CREATE TABLE IF NOT EXISTS gateway_traffic (
    gateway TEXT NOT NULL,
    deployment TEXT NOT NULL,
    provider TEXT NOT NULL,
    minute INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (gateway, deployment, provider, minute)
);
"""
_SUSPICIOUS_KEYS = ("key", "token", "secret", "password")


class StateError(DeployerError):
    """The state database cannot be used as it is; it is left untouched."""


class StateStore:
    """Open (creating if needed) the state database at `home/state.db`.

    Each method is one short transaction; the object is cheap and not shared across processes.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.home / "state.db"
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"the state database {self.path} is unreadable ({exc})",
                hint="it was left as it is; move it aside to start afresh (resources it recorded "
                "can then be found with `deployer gc`)",
            ) from None
        os.chmod(self.path, 0o600)

    def _migrate(self) -> None:
        with self._tx():
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise StateError(f"{self.path} is not a deployer state database", hint="set DEPLOYER_HOME elsewhere")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} was written by a newer deployer (schema {row[0]}, this one knows {SCHEMA_VERSION})",
                    hint="upgrade deployer; the database was not changed",
                )

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- writes ---------------------------------------------------------------------------

    def begin(
        self, name: str, provider: str, spec_hash: str, spec: dict[str, Any], status: str, secrets_digest: str = ""
    ) -> None:
        """Record the intent to create or change `name` on `provider` (before any provider call).

        `secrets_digest` is a keyed digest of the secrets in use (keys.secrets_digest), so a
        rotated key is noticed; it is not a secret and cannot be reversed without the key."""
        now = time.time()
        with self._tx():
            self._db.execute(
                """INSERT INTO deployments VALUES (?,?,?,?,?,?,NULL,NULL,?,?)
                   ON CONFLICT(name, provider) DO UPDATE SET
                     spec_hash=excluded.spec_hash, secrets_digest=excluded.secrets_digest,
                     spec_json=excluded.spec_json, status=excluded.status, updated_at=excluded.updated_at""",
                (name, provider, spec_hash, secrets_digest, json.dumps(spec, sort_keys=True), status, now, now),
            )
            self._event(name, provider, "begin", status)

    def record_resource(self, name: str, provider: str, kind: str, resource_id: str, /, **extra: Any) -> None:
        """Persist a resource id now. Idempotent for the same (kind, id)."""
        for key in extra:
            if any(word in key.lower() for word in _SUSPICIOUS_KEYS):
                raise ValueError(f"refusing to store {key!r} in state: it may be a secret")
        with self._tx():
            self._db.execute(
                """INSERT INTO resources (name, provider, kind, resource_id, extra_json, recorded_at)
                   VALUES (?,?,?,?,?,?)
                   ON CONFLICT(name, provider, kind, resource_id) DO UPDATE SET extra_json=excluded.extra_json""",
                (name, provider, kind, resource_id, json.dumps(extra, sort_keys=True), time.time()),
            )
            self._event(name, provider, "recorded", f"{kind} {resource_id}")

    def forget_resource(self, name: str, provider: str, kind: str, resource_id: str) -> None:
        with self._tx():
            self._db.execute(
                "DELETE FROM resources WHERE name=? AND provider=? AND kind=? AND resource_id=?",
                (name, provider, kind, resource_id),
            )

    def set_status(
        self, name: str, provider: str, status: str, *, url: str | None = None, key_source: str | None = None
    ) -> None:
        """Update the status word (and the URL / which key clients send, when given)."""
        with self._tx():
            self._db.execute(
                """UPDATE deployments SET status=?, url=COALESCE(?, url), key_source=COALESCE(?, key_source),
                   updated_at=? WHERE name=? AND provider=?""",
                (status, url, key_source, time.time(), name, provider),
            )
            self._event(name, provider, "status", status)

    def forget(self, name: str, provider: str) -> None:
        """Drop a deployment and its resources (after they were verified gone)."""
        with self._tx():
            self._db.execute("DELETE FROM resources WHERE name=? AND provider=?", (name, provider))
            self._db.execute("DELETE FROM deployments WHERE name=? AND provider=?", (name, provider))
            self._event(name, provider, "forgotten", "")

    def _event(self, name: str, provider: str, event: str, detail: str) -> None:
        self._db.execute(
            "INSERT INTO events (name, provider, event, detail, at) VALUES (?,?,?,?,?)",
            (name, provider, event, detail, time.time()),
        )

    # -- reads ----------------------------------------------------------------------------

    def rows(self, name: str | None = None) -> list[dict[str, Any]]:
        """Deployment rows (all, or those of `name`), oldest first, with their resources."""
        query = "SELECT * FROM deployments" + (" WHERE name=?" if name else "") + " ORDER BY created_at"
        out = []
        for row in self._db.execute(query, (name,) if name else ()):
            item = dict(row)
            item["spec"] = json.loads(item.pop("spec_json"))
            item["resources"] = [
                Resource(kind=r["kind"], id=r["resource_id"], extra=json.loads(r["extra_json"]))
                for r in self._db.execute(
                    "SELECT * FROM resources WHERE name=? AND provider=? ORDER BY seq", (row["name"], row["provider"])
                )
            ]
            out.append(item)
        return out

    def current(self, name: str) -> dict[str, Any] | None:
        """The row of `name` that clients reach now: during a provider switch the one recorded
        ready, else the newest; None when nothing is recorded."""
        rows = self.rows(name)
        return next((r for r in rows if r["status"] == "ready"), rows[-1]) if rows else None

    def deployment(self, row: dict[str, Any]) -> Deployment:
        """A row as the Deployment a provider receives (spec revalidated)."""
        from .spec import validate_spec

        try:
            spec = validate_spec(row["spec"], source=f"state of {row['name']}")
        except DeployerError:
            spec = None  # a spec this version cannot read; destroy still works from resource ids
        return Deployment(
            name=row["name"], provider=row["provider"], spec=spec,
            resources=list(row["resources"]), url=row["url"], status=row["status"],
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM events WHERE name=? ORDER BY seq", (name,))]

    # -- benchmarks (deployer bench) -------------------------------------------------------
    # Results outlive the deployment they measured (destroy keeps them, as history); each row
    # carries the spec hash it was measured on, so a reader can tell a stale measurement.

    def record_benchmark(self, name: str, provider: str, spec_hash: str, result: dict[str, Any]) -> int:
        """Store one bench result (plain data, no secret) now; returns its sequence number."""
        with self._tx():
            cursor = self._db.execute(
                "INSERT INTO benchmarks (name, provider, spec_hash, at, result_json) VALUES (?,?,?,?,?)",
                (name, provider, spec_hash, time.time(), json.dumps(result, sort_keys=True)),
            )
            self._event(name, provider, "benchmark", f"#{cursor.lastrowid}")
            return int(cursor.lastrowid or 0)

    def benchmarks(self, name: str, provider: str | None = None) -> list[dict[str, Any]]:
        """Stored bench results of `name` (on `provider`, when given), newest first: each
        {"seq", "name", "provider", "spec_hash", "at", "result"}."""
        query = "SELECT * FROM benchmarks WHERE name=?" + (" AND provider=?" if provider else "")
        rows = self._db.execute(query + " ORDER BY at DESC, seq DESC", (name, provider) if provider else (name,))
        return [{**{k: r[k] for k in ("seq", "name", "provider", "spec_hash", "at")},
                 "result": json.loads(r["result_json"])} for r in rows]

    # -- gateway traffic (deployer gateway) -------------------------------------------------
    # What `deployer gateway` sent each backend, per minute: request and failure counts and the
    # wall seconds from sending to the last byte. `deployer cost` prices it. No URL, no key.

    def add_gateway_traffic(self, gateway: str, rows: list[tuple[str, str, int, int, int, float]]) -> None:
        """Add (deployment, provider, minute, requests, errors, seconds) rows to the totals of
        `gateway`; `minute` is the Unix time of the minute's start. One transaction."""
        with self._tx():
            self._db.executemany(
                """INSERT INTO gateway_traffic VALUES (?,?,?,?,?,?,?)
                   ON CONFLICT(gateway, deployment, provider, minute) DO UPDATE SET
                     requests=requests+excluded.requests, errors=errors+excluded.errors,
                     seconds=seconds+excluded.seconds""",
                [(gateway, *row) for row in rows],
            )

    def gateway_traffic(self, *, since: float, deployment: str | None = None) -> list[dict[str, Any]]:
        """Traffic totals per (gateway, deployment, provider) from minutes starting at or after
        `since`, with the first and last minute seen."""
        query = ("SELECT gateway, deployment, provider, SUM(requests) AS requests, SUM(errors) AS errors, "
                 "SUM(seconds) AS seconds, MIN(minute) AS first_minute, MAX(minute) AS last_minute "
                 "FROM gateway_traffic WHERE minute >= ?" + (" AND deployment = ?" if deployment else "")
                 + " GROUP BY gateway, deployment, provider ORDER BY deployment, provider, gateway")
        params: tuple[Any, ...] = (since, deployment) if deployment else (since,)
        return [dict(r) for r in self._db.execute(query, params)]


@contextmanager
def lock(home: Path, name: str, *, wait: float = 5.0) -> Iterator[None]:
    """Hold the exclusive lock of deployment `name` for the block.

    Waits up to `wait` seconds for another holder, then raises LockedError naming its pid.
    The OS releases the lock if this process dies, so a crash never leaves a stale lock.
    """
    lock_dir = Path(home) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = lock_dir / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LockedError(
                        f"another deployer process (pid {holder}) is working on {name!r}",
                        hint="wait for it to finish, then try again",
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
