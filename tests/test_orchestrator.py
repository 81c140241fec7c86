"""Deploy/destroy flows against a fake provider whose servers are real stub-engine processes:
idempotence, crashes at each step, concurrent deploys, provider switches, damaged state."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from deployer import registry
from deployer.errors import NotReadyError
from deployer.orchestrator import Orchestrator
from deployer.settings import Settings
from deployer.spec import validate_spec
from deployer.state import SCHEMA_VERSION, StateError, StateStore
from tests.support.fake_provider import FakeCloud, FakeProvider

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def clouds(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeProvider]:
    """One fake provider per backend name, each with its own cloud file; the registry returns them."""
    providers = {name: FakeProvider(FakeCloud(tmp_path / f"{name}-cloud.json"), tmp_path / "logs")
                 for name in registry.names()}
    for name, provider in providers.items():
        provider.name = name
    monkeypatch.setattr(registry, "load", lambda name, settings: providers[name])
    yield providers
    for provider in providers.values():  # never leave an engine running
        for owned in provider.list_owned():
            provider.destroy(_dep(owned.deployment))


def _dep(name: str):
    from deployer.provider import Deployment

    return Deployment(name=name, provider="?", spec=None)


def make_spec(tiny_model: Path, provider: str = "local", **scaling: int):
    return validate_spec({
        "name": "demo", "provider": provider,
        "model": {"id": str(tiny_model), "served_name": "demo-model"},
        "scaling": scaling or {"max_replicas": 1},
    })


def orch() -> Orchestrator:
    return Orchestrator(Settings())


def in_child(fn, *args) -> int:
    """Run fn(*args) in a forked process (the registry patch carries over); return its exit code."""
    proc = FORK.Process(target=fn, args=args)
    proc.start()
    proc.join(60)
    return proc.exitcode


def _deploy_in_child(spec, knob: str | None = None, delay: float = 0.0) -> None:
    provider = registry.load(spec.provider, None)
    if knob:
        setattr(provider, knob, True)
    provider.apply_delay = delay
    orch().deploy(spec)


def test_deploy_is_idempotent_and_updates_in_place(clouds, tiny_model) -> None:
    spec = make_spec(tiny_model)
    first = orch().deploy(spec)
    assert first.action == "created" and first.url.endswith("/v1")
    again = orch().deploy(spec)
    assert again.action == "unchanged" and again.url == first.url
    changed = orch().deploy(make_spec(tiny_model, max_replicas=3))
    assert changed.action == "updated"
    assert clouds["local"].creates == 1 and len(clouds["local"].cloud.load()) == 1
    assert orch().destroy("demo") == ["local"]
    assert clouds["local"].cloud.load() == {}
    assert orch().destroy("demo") == []  # idempotent


@pytest.mark.parametrize("knob", ["kill_after_create", "kill_after_record"])
def test_a_deploy_killed_mid_way_is_found_again_and_destroyed(clouds, tiny_model, knob) -> None:
    spec = make_spec(tiny_model)
    assert in_child(_deploy_in_child, spec, knob) == -9
    assert len(clouds["local"].cloud.load()) == 1  # the provider acted before the crash
    rows = StateStore(Settings().home).rows("demo")
    assert [r["status"] for r in rows] == ["creating"]  # the intent was recorded first
    assert len(rows[0]["resources"]) == (1 if knob == "kill_after_record" else 0)
    result = orch().deploy(spec)  # resumes: finds the server by name instead of creating another
    assert result.action == "updated"
    assert len(clouds["local"].cloud.load()) == 1
    orch().destroy("demo")
    assert clouds["local"].cloud.load() == {}


def test_destroy_after_a_crash_removes_what_was_recorded(clouds, tiny_model) -> None:
    assert in_child(_deploy_in_child, make_spec(tiny_model), "kill_after_record") == -9
    assert orch().destroy("demo") == ["local"]
    assert clouds["local"].cloud.load() == {}
    assert StateStore(Settings().home).rows("demo") == []


def test_concurrent_deploys_of_one_name_never_create_twice(clouds, tiny_model) -> None:
    spec = make_spec(tiny_model)
    procs = [FORK.Process(target=_deploy_in_child, args=(spec, None, 1.0)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    codes = sorted(p.exitcode for p in procs)
    assert codes[0] == 0  # one succeeded; the other waited (0) or failed cleanly on the lock (1)
    assert codes[1] in (0, 1)
    assert len(clouds["local"].cloud.load()) == 1
    db = sqlite3.connect(Settings().home / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM deployments").fetchone()[0] == 1


def test_provider_switch_brings_new_up_then_removes_old(clouds, tiny_model) -> None:
    orch().deploy(make_spec(tiny_model, "local"))
    moved = orch().deploy(make_spec(tiny_model, "modal"))
    assert moved.action == "moved" and moved.replaced == ["local"]
    assert clouds["local"].cloud.load() == {} and len(clouds["modal"].cloud.load()) == 1
    assert [r["provider"] for r in StateStore(Settings().home).rows("demo")] == ["modal"]
    orch().destroy("demo")


def test_failed_switch_keeps_the_old_deployment(clouds, tiny_model) -> None:
    old = orch().deploy(make_spec(tiny_model, "local"))
    clouds["modal"].broken = True
    spec = validate_spec({**make_spec(tiny_model, "modal").model_dump(mode="json"), "startup": {"readiness_timeout": 2}})
    with pytest.raises(NotReadyError, match="fake diagnosis"):
        orch().deploy(spec)
    assert clouds["modal"].cloud.load() == {}  # the half-made new one is gone
    assert len(clouds["local"].cloud.load()) == 1
    rows = StateStore(Settings().home).rows("demo")
    assert [(r["provider"], r["status"], r["url"]) for r in rows] == [("local", "ready", old.url)]
    orch().destroy("demo")


def test_plan_changes_nothing(clouds, tiny_model, home) -> None:
    plan = orch().plan(make_spec(tiny_model))
    assert plan.action == "create"
    assert plan.artifacts.requests[0].json["argv"][-1] == "<redacted>"
    assert not (home / "keys").exists() and clouds["local"].cloud.load() == {}


def test_corrupted_state_is_reported_not_overwritten(home) -> None:
    home.mkdir(parents=True)
    (home / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="unreadable"):
        StateStore(home)
    assert (home / "state.db").read_bytes() == b"this is not sqlite" * 100


def test_future_state_version_is_refused(home) -> None:
    StateStore(home).close()
    db = sqlite3.connect(home / "state.db")
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer deployer"):
        StateStore(home)


def test_state_refuses_secret_looking_extras(home) -> None:
    store = StateStore(home)
    store.begin("demo", "local", "h", {}, "creating")
    with pytest.raises(ValueError, match="secret"):
        store.record_resource("demo", "local", "server", "s1", api_key="x")


def test_gc_finds_orphans_and_ghosts_and_cleans_both(clouds, tiny_model) -> None:
    orch().deploy(make_spec(tiny_model))  # healthy
    ghost = validate_spec({**make_spec(tiny_model).model_dump(mode="json"), "name": "ghost"})
    orch().deploy(ghost)
    clouds["local"].destroy(_dep("ghost"))  # gone behind deployer's back: a ghost
    orphan = validate_spec({**make_spec(tiny_model).model_dump(mode="json"), "name": "orphan"})
    orch().deploy(orphan)
    StateStore(Settings().home).forget("orphan", "local")  # the state lost it: an orphan
    report = orch().gc("local")
    assert [e["deployment"] for e in report["orphans"]] == ["orphan"]
    assert [e["deployment"] for e in report["ghosts"]] == ["ghost"]
    assert [e["deployment"] for e in report["healthy"]] == ["demo"]
    orch().gc("local", apply=True)
    assert [s["name"] for s in clouds["local"].cloud.load().values()] == ["dplr-demo"]
    assert [r["name"] for r in StateStore(Settings().home).rows()] == ["demo"]
    again = orch().gc("local")
    assert again["orphans"] == [] and again["ghosts"] == []
    orch().destroy("demo")


def test_a_rotated_key_is_applied_not_reported_unchanged(clouds, tiny_model, monkeypatch) -> None:
    spec = validate_spec({**make_spec(tiny_model).model_dump(mode="json"), "auth": {"api_key_env": "DEMO_KEY"}})
    monkeypatch.setenv("DEMO_KEY", "first-key-value-0123456789")
    orch().deploy(spec)
    assert orch().deploy(spec).action == "unchanged"
    monkeypatch.setenv("DEMO_KEY", "second-key-value-0123456789")
    assert orch().deploy(spec).action == "updated"
    state_bytes = (Settings().home / "state.db").read_bytes()
    assert b"first-key-value-0123456789" not in state_bytes and b"second-key-value-0123456789" not in state_bytes
    orch().destroy("demo")


def test_gc_reports_a_failing_provider_and_still_scans_the_others(clouds, tiny_model) -> None:
    from deployer.errors import ProviderError

    def unreachable() -> list:
        raise ProviderError("runpod", "cannot reach https://api.runpod.io/v2 (ConnectError)")

    orch().deploy(make_spec(tiny_model))
    reachable = clouds["runpod"].list_owned
    clouds["runpod"].list_owned = unreachable
    try:
        report = orch().gc()
    finally:
        clouds["runpod"].list_owned = reachable
    assert {"provider": "runpod", "reason": "runpod: cannot reach https://api.runpod.io/v2 (ConnectError)"} in report["skipped"]
    assert [e["deployment"] for e in report["healthy"]] == ["demo"]
    orch().destroy("demo")


def test_a_change_in_what_the_provider_renders_is_applied(clouds, tiny_model) -> None:
    """Same spec, but a newer deployer renders something else (a new flag, a new guard)."""
    from deployer.provider import Request

    spec = make_spec(tiny_model)
    orch().deploy(spec)
    assert orch().deploy(spec).action == "unchanged"
    render = clouds["local"].render

    def newer_render(spec, secrets):
        artifacts = render(spec, secrets)
        artifacts.requests.append(Request("POST", "fake://cloud/guards", {"on": True}))
        return artifacts

    clouds["local"].render = newer_render
    try:
        assert orch().plan(spec).action == "update"
        assert orch().deploy(spec).action == "updated"
        assert orch().deploy(spec).action == "unchanged"
    finally:
        clouds["local"].render = render
    orch().destroy("demo")
