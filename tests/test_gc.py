"""`deployer gc` on every provider, against its emulator, through the CLI.

Each test makes the three cases gc sorts things into:
- healthy: deployed by deployer, recorded, still there;
- ghost: deployed and recorded, then deleted behind deployer's back (in the emulator);
- orphans: still at the provider under our prefix/tags but not in the state (a deploy whose state
  row was lost, and a resource made by hand with the dplr- name).
`gc --json` must list the three groups, `gc --yes` must remove every orphan (the emulator holds
none of it afterwards: endpoints and templates, instances and firewall rulesets, apps and Secrets)
and forget the ghost (removing what it left behind), and the healthy deployment must be untouched.
Providers without credentials are reported as skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployer.orchestrator import Orchestrator
from deployer.provider import Secrets
from deployer.settings import Settings
from deployer.state import StateStore
from tests.emulators.lambda_cloud.fixture import lambda_cloud  # noqa: F401 (fixture)
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 (fixture `modal_emulator`)
from tests.emulators.runpod.fixture import start_runpod  # noqa: F401 (fixture)
from tests.support.engine import REPO

CREDENTIALS = ("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY", "LAMBDA_API_KEY", "DEPLOYER_LAMBDA_API_KEY",
               "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")


def run(*args: str, env: dict[str, str | None] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m deployer ARGS` as a user runs it (environment: this test's, with `env` on top;
    a None value removes the variable)."""
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True,
                          env={k: v for k, v in full.items() if v is not None}, cwd=REPO, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def gc(*args: str, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    done = run("gc", "--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def groups(report: dict[str, Any]) -> dict[str, Any]:
    """The report reduced to what a test can compare: (kind, deployment) pairs per group."""
    return {
        "orphans": sorted((e["kind"], e["deployment"]) for e in report["orphans"]),
        "ghosts": sorted(e["deployment"] for e in report["ghosts"]),
        "left": sorted((e["deployment"], x["kind"]) for e in report["ghosts"] for x in e.get("left", [])),
        "healthy": sorted((e["kind"], e["deployment"]) for e in report["healthy"]),
    }


def status_by_name() -> dict[str, dict[str, Any]]:
    done = run("status", "--json")
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def recorded(provider: str) -> list[str]:
    return sorted(r["name"] for r in StateStore(Settings().home).rows() if r["provider"] == provider)


def integrity_ok() -> None:
    """The state database is whole (no half-written transaction survived)."""
    import sqlite3

    with sqlite3.connect(Settings().home / "state.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- RunPod ------------------------------------------------------------------------------------------


def test_gc_on_runpod(start_runpod: Any) -> None:
    from tests.emulators.runpod.fixture import tiny_spec

    emu = start_runpod()
    orch = Orchestrator(Settings())
    for name in ("keep", "ghost", "lost"):
        orch.deploy(tiny_spec(name=name))
    ids = {e["name"]: e["id"] for e in emu.endpoints()}
    keep_template = [t["id"] for t in emu.templates() if t["name"].startswith("dplr-keep")]

    console = httpx.Client(base_url=emu.control_url, headers={"Authorization": f"Bearer {emu.api_key}"})
    emu.faults.keep_bound_template = True  # the hand-made DELETE leaves the ghost's template behind
    assert console.delete(f"/serverless/{ids['dplr-ghost']}").status_code == 204
    emu.faults.keep_bound_template = False
    StateStore(Settings().home).forget("lost", "runpod")  # the state lost it; RunPod still runs it
    from providers.runpod.adapter import Provider

    body = Provider(Settings()).render(tiny_spec(name="stray"), Secrets.redacted(has_hf_token=False)).requests[2].json
    assert console.post("/serverless", json=body).status_code == 201  # made by hand with our name
    twin = console.post("/serverless", json={**body, "name": "dplr-keep"})  # a second one beside the healthy one
    assert twin.status_code == 201
    console.close()

    status = status_by_name()
    assert status["ghost"]["ghost"] is True and status["ghost"]["state"] == "gone"
    assert status["keep"]["ghost"] is False
    done = run("status")  # the table says what to do about it
    assert "ghost" in done.stdout and "gc --yes" in done.stdout

    found = groups(gc("--provider", "runpod"))
    assert found == {
        "orphans": [("endpoint", "keep"), ("endpoint", "lost"), ("endpoint", "stray"), ("template", "ghost")],
        "ghosts": ["ghost"], "left": [],
        "healthy": [("endpoint", "keep")],  # its bound template goes with it: not an orphan
    }
    everywhere = gc()  # every provider: those without credentials are skipped, not failed
    assert {s["provider"] for s in everywhere["skipped"]} == {"lambda", "modal"}
    assert groups(everywhere) == found and everywhere["applied"] is False
    assert len(emu.endpoints()) == 4, "gc without --yes changes nothing"

    from deployer.keys import key_path

    assert key_path(Settings(), "ghost").exists()
    applied = gc("--yes", "--provider", "runpod")
    assert applied["applied"] is True and groups(applied) == found
    assert not key_path(Settings(), "ghost").exists(), "a forgotten ghost's generated key goes too"
    assert key_path(Settings(), "keep").exists()
    assert [e["id"] for e in emu.endpoints()] == [ids["dplr-keep"]], "the twin went, the recorded one stayed"
    assert [t["id"] for t in emu.templates()] == keep_template
    assert recorded("runpod") == ["keep"]
    assert groups(gc("--provider", "runpod")) == {"orphans": [], "ghosts": [], "left": [],
                                                  "healthy": [("endpoint", "keep")]}
    assert status_by_name()["keep"]["state"] == "ready"
    integrity_ok()
    orch.destroy("keep")
    assert emu.leftovers() == []


# -- Lambda ------------------------------------------------------------------------------------------


def test_gc_on_lambda(lambda_cloud: Any) -> None:
    bed = lambda_cloud
    orch = Orchestrator(Settings())
    for name in ("keep", "ghost", "lost"):
        orch.deploy(bed.spec(name))
    instances = {i.name: i.id for i in bed.cloud.live()}
    rulesets = {r["name"]: r["id"] for r in bed.cloud.rulesets.values()}
    assert set(instances) == set(rulesets) == {"dplr-keep", "dplr-ghost", "dplr-lost"}

    bed.cloud.terminate({"instance_ids": [instances["dplr-ghost"]]})  # by hand, in Lambda's console
    StateStore(Settings().home).forget("lost", "lambda")
    stray = bed.cloud.create_ruleset({"name": "dplr-stray", "region": "us-east-1",
                                      "rules": [{"protocol": "tcp", "port_range": [22, 22],
                                                 "source_network": "0.0.0.0/0", "description": "SSH"}]})
    deadline = time.monotonic() + 10
    while any(i.id == instances["dplr-ghost"] for i in bed.cloud.live()) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert status_by_name()["ghost"]["ghost"] is True
    found = groups(gc("--provider", "lambda"))
    assert found == {
        "orphans": [("firewall-ruleset", "lost"), ("firewall-ruleset", "stray"), ("instance", "lost")],
        "ghosts": ["ghost"], "left": [("ghost", "firewall-ruleset")],
        "healthy": [("firewall-ruleset", "keep"), ("instance", "keep")],
    }
    applied = gc("--yes", "--provider", "lambda")
    assert groups(applied) == found
    assert [i.id for i in bed.cloud.live()] == [instances["dplr-keep"]]
    assert [r["id"] for r in bed.cloud.rulesets.values()] == [rulesets["dplr-keep"]], \
        "no firewall ruleset of the orphan, the hand-made one or the ghost is left"
    assert stray["id"] not in bed.cloud.rulesets
    assert recorded("lambda") == ["keep"]
    assert groups(gc("--provider", "lambda"))["healthy"] == [("firewall-ruleset", "keep"), ("instance", "keep")]
    integrity_ok()
    orch.destroy("keep")
    assert bed.cloud.live() == [] and bed.cloud.rulesets == {}


# -- Modal -------------------------------------------------------------------------------------------


def modal_spec(model: Path, name: str) -> Any:
    from deployer.spec import validate_spec

    return validate_spec({"name": name, "provider": "modal",
                          "model": {"id": str(model), "served_name": "tiny", "max_model_len": 256},
                          "resources": {"gpu": "L4"}, "scaling": {"min_replicas": 0, "max_replicas": 1}})


def modal_secrets(emulator: Any) -> list[str]:
    from providers.modal import sdk

    with sdk.open_client() as client:
        return sorted(sdk.secret_names(client, None))


def test_gc_on_modal(modal_emulator: Any, home: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.modal import sdk

    monkeypatch.setenv("HF_TOKEN", "hf_gc_test_token")  # so deployer also makes the -hf Secrets
    orch = Orchestrator(Settings())
    for name in ("keep", "ghost", "lost"):
        orch.deploy(modal_spec(tiny_model, name))
    keep_app = modal_emulator.deployed_app("dplr-keep").app_id
    with sdk.open_client() as client:
        assert sdk.stop_app(client, "dplr-ghost", None)  # `modal app stop` behind deployer's back
        sdk.upsert_secret(client, "dplr-stray-key", {"VLLM_API_KEY": "made-by-hand"}, None)
    StateStore(Settings().home).forget("lost", "modal")

    status = status_by_name()
    assert status["ghost"]["ghost"] is True and status["keep"]["ghost"] is False
    report = gc("--provider", "modal")
    assert groups(report) == {
        "orphans": [("app", "lost"), ("secret", "lost"), ("secret", "lost"), ("secret", "stray")],
        "ghosts": ["ghost"], "left": [("ghost", "secret"), ("ghost", "secret")],
        "healthy": [("app", "keep"), ("secret", "keep"), ("secret", "keep")],
    }
    shared = sorted(e["id"] for e in report["shared"])
    assert shared == ["dplr-hf-cache", "dplr-vllm-cache"], "the cache Volumes are shared, never orphans"

    applied = gc("--yes", "--provider", "modal")
    assert groups(applied) == groups(report)
    assert modal_emulator.deployed_app("dplr-lost") is None and modal_emulator.deployed_app("dplr-ghost") is None
    assert modal_emulator.deployed_app("dplr-keep").app_id == keep_app
    assert modal_secrets(modal_emulator) == ["dplr-keep-hf", "dplr-keep-key"], \
        "the Secrets of the orphan, the ghost and the hand-made one are deleted"
    assert recorded("modal") == ["keep"]
    assert sorted(e["id"] for e in gc("--yes", "--provider", "modal")["shared"]) == shared  # never deleted
    integrity_ok()
    orch.destroy("keep")
    assert modal_emulator.holds_nothing() and modal_secrets(modal_emulator) == []


def test_modal_a_deploy_whose_record_was_lost_is_found_again_by_name(
        modal_emulator: Any, home: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RunPod and Lambda prove this in their own tests (a lost create answer); on Modal an app is
    deployed by name, so the next deploy updates the app the state lost instead of making another."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    orch = Orchestrator(Settings())
    spec = modal_spec(tiny_model, "again")
    orch.deploy(spec)
    first = modal_emulator.deployed_app("dplr-again").app_id
    StateStore(Settings().home).forget("again", "modal")  # killed before the answer was recorded
    result = orch.deploy(spec)
    assert result.action == "created" and {"kind": "app", "id": first} in result.resources
    assert modal_emulator.deployed_app("dplr-again").app_id == first
    assert modal_secrets(modal_emulator) == ["dplr-again-key"]
    assert groups(gc("--provider", "modal"))["orphans"] == []
    orch.destroy("again")
    assert modal_emulator.holds_nothing() and modal_secrets(modal_emulator) == []


# -- local -------------------------------------------------------------------------------------------


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_gc_on_local_judges_only_this_home(home: Path, tmp_path: Path, spawned: list) -> None:
    """Local servers carry their deployment and DEPLOYER_HOME in their environment; gc scans
    this machine's processes and judges only those of its own home."""
    from providers.local.adapter import HOME_ENV, TAG_ENV, _start_time

    def server(name: str, for_home: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                env={**os.environ, TAG_ENV: name, HOME_ENV: str(for_home)})
        spawned.append(proc)
        return proc

    keep, lost = server("keep", home), server("lost", home)
    other = server("theirs", tmp_path / "another-home")  # someone else's state: not ours to judge
    dead = server("ghost", home)
    store = StateStore(home)
    for name, proc in (("keep", keep), ("ghost", dead)):
        store.begin(name, "local", "hash", {}, "ready")
        store.record_resource(name, "local", "process", str(proc.pid), started=_start_time(proc.pid))
    dead.kill()
    dead.wait()
    env: dict[str, str | None] = {key: None for key in CREDENTIALS}  # no cloud credentials at all
    env["HOME"] = str(tmp_path)  # nor any credentials file

    report = gc(env=env)
    assert groups(report) == {"orphans": [("process", "lost")], "ghosts": ["ghost"], "left": [],
                              "healthy": [("process", "keep")]}
    assert {s["provider"] for s in report["skipped"]} == {"runpod", "lambda", "modal"}
    assert all(s["reason"] == "no credentials" for s in report["skipped"])
    status = status_by_name()
    assert status["ghost"]["ghost"] is True and status["ghost"]["state"] == "dead"

    table = run("gc", env=env)
    assert table.returncode == 0 and "orphan" in table.stdout and "skipped runpod" in table.stdout
    assert "gc --yes" in table.stdout

    gc("--yes", env=env)
    assert lost.wait(10) is not None, "the orphan server was stopped"
    assert keep.poll() is None and other.poll() is None, "the healthy one and another home's stay"
    assert recorded("local") == ["keep"]
    assert groups(gc(env=env))["orphans"] == []
