"""Several `deployer` processes at once against the emulators: deploys and destroys of different
names run in parallel, the same name is serialised by its lock.

After every race: the state database passes sqlite's integrity check, the state records exactly
what the emulator holds, the emulator holds exactly one resource per name (no double create), and
the loser of a same-name race either waited and found the deployment unchanged (exit 0) or gave
up with the lock message (exit 1) - nothing else.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.settings import Settings
from deployer.state import StateStore
from tests.emulators.lambda_cloud.fixture import start_testbed
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 (fixture `modal_emulator`)
from tests.emulators.runpod.fixture import start_runpod  # noqa: F401 (fixture)
from tests.support.engine import REPO

LOCKED = "another deployer process"


@dataclass
class Outcome:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def doc(self) -> dict[str, Any]:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Outcome({' '.join(self.args)}: exit {self.code}, out={self.out[-600:]!r}, err={self.err[-1500:]!r})"


def at_once(*commands: tuple[str, ...], env: dict[str, str] | None = None, stagger: float = 0.0,
            timeout: float = 120) -> list[Outcome]:
    """Start every `python -m deployer ...` command together (`stagger` seconds apart) and wait for all."""
    full_env = {**os.environ, **(env or {})}
    procs = []
    for args in commands:
        procs.append(subprocess.Popen([sys.executable, "-m", "deployer", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=full_env, cwd=REPO,
                                      stdin=subprocess.DEVNULL))
        time.sleep(stagger)
    outcomes = []
    try:
        for args, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            outcomes.append(Outcome(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outcomes


def check_same_name_race(outcomes: list[Outcome], winner_action: str) -> None:
    """One did the work; the other waited and found it done, or gave up with the lock message."""
    assert all(o.code in (0, 1) for o in outcomes), outcomes
    done = [o for o in outcomes if o.code == 0 and o.doc().get("action", o.doc().get("status")) == winner_action]
    assert len(done) == 1, outcomes
    (loser,) = [o for o in outcomes if o is not done[0]]
    if loser.code == 0:
        assert loser.doc().get("action", loser.doc().get("status")) in ("unchanged", "absent"), loser
    else:
        assert LOCKED in loser.doc()["error"] and LOCKED in loser.err, loser
        assert "Traceback" not in loser.err


def state_integrity(home: Path) -> dict[str, list[tuple[str, str]]]:
    """integrity_check must say ok; returns {name: [(kind, id), ...]} as recorded."""
    with sqlite3.connect(home / "state.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return {row["name"]: sorted((r.kind, r.id) for r in row["resources"]) for row in StateStore(home).rows()}


def write_specs(folder: Path, make: Any, *names: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(make(name)))
        paths[name] = str(path)
    return paths


# -- RunPod ------------------------------------------------------------------------------------------


def runpod_spec(name: str) -> dict[str, Any]:
    from tests.support.engine import tiny_model

    return {"name": name, "provider": "runpod",
            "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                      "engine_args": {"enforce-eager": True}},
            "resources": {"gpu": "L4"}, "scaling": {"min_replicas": 0, "max_replicas": 1, "idle_timeout": 60},
            "startup": {"readiness_timeout": 60}}


def test_runpod_parallel_deploys_and_destroys(start_runpod: Any, tmp_path: Path) -> None:
    emu = start_runpod()
    home = Settings().home
    specs = write_specs(tmp_path / "specs", runpod_spec, "alpha", "beta", "same")

    deployed = at_once(("deploy", specs["alpha"], "--json"), ("deploy", specs["beta"], "--json"),
                       ("deploy", specs["same"], "--json"), ("deploy", specs["same"], "--json"))
    assert [o.code for o in deployed[:2]] == [0, 0], deployed
    assert [o.doc()["action"] for o in deployed[:2]] == ["created", "created"]
    check_same_name_race(deployed[2:], "created")

    names = Counter(e["name"] for e in emu.endpoints())
    assert names == {"dplr-alpha": 1, "dplr-beta": 1, "dplr-same": 1}, "exactly one endpoint per name"
    assert len(emu.calls(method="POST", path=r"^/v2/serverless$")) == 3
    recorded = state_integrity(home)
    assert recorded == {e["name"].removeprefix("dplr-"): [("endpoint", e["id"])] for e in emu.endpoints()}

    destroyed = at_once(("destroy", "alpha", "--json"), ("destroy", "beta", "--json"),
                        ("destroy", "same", "--json"), ("destroy", "same", "--json"))
    assert [o.code for o in destroyed[:2]] == [0, 0], destroyed
    check_same_name_race(destroyed[2:], "destroyed")
    assert emu.leftovers() == []
    assert state_integrity(home) == {}


def test_runpod_a_same_name_deploy_that_cannot_wait_fails_with_the_lock_message(start_runpod: Any,
                                                                               tmp_path: Path) -> None:
    """The first deploy holds the lock past the second's 5 s wait (a slow engine start): the second
    (a deploy, and a destroy) exits 1 naming the holder; the first completes alone."""
    emu = start_runpod(engine_startup_s=7.0)
    specs = write_specs(tmp_path / "specs", runpod_spec, "slow")
    first, second, destroy = at_once(("deploy", specs["slow"], "--json"), ("deploy", specs["slow"], "--json"),
                                     ("destroy", "slow", "--json"), stagger=0.7)
    assert first.code == 0 and first.doc()["action"] == "created", first
    for loser in (second, destroy):
        assert loser.code == 1, loser
        pid = loser.doc()["error"].split("pid ")[1].split(")")[0]
        assert LOCKED in loser.doc()["error"] and loser.doc()["hint"], loser
        assert pid.isdigit() and "Traceback" not in loser.err
    assert [e["name"] for e in emu.endpoints()] == ["dplr-slow"]
    assert state_integrity(Settings().home) == {"slow": [("endpoint", emu.endpoints()[0]["id"])]}
    from deployer.orchestrator import Orchestrator

    Orchestrator(Settings()).destroy("slow")
    assert emu.leftovers() == []


# -- Lambda ------------------------------------------------------------------------------------------

# Lambda's pacing defaults at the testbed's 10x clock (the testbed itself polls as often as the
# rate limit allows, which only one process at a time can do).
LAMBDA_DEFAULT_PACING = {"DEPLOYER_LAMBDA_POLL_INTERVAL": "0.5", "DEPLOYER_LAMBDA_PROBE_INTERVAL": "1.5",
                         "DEPLOYER_LAMBDA_RETRY_BACKOFF": "0.1"}


@pytest.fixture
def shared_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Lambda testbed, one account shared by several processes: its rate limits are the
    account's, so the emulator may answer 429 here (each process only paces itself); every
    request must still follow Lambda's OpenAPI document and every deploy must get through."""
    bed = start_testbed(tmp_path, monkeypatch)
    bed.env.update(LAMBDA_DEFAULT_PACING)
    try:
        yield bed
    finally:
        print(bed.cloud.vm_report())  # shown when the test failed
        bed.emulator.stop()
    assert not bed.emulator.violations, f"OpenAPI violations: {bed.emulator.violations}"


def test_lambda_parallel_deploys_and_destroys(shared_account: Any, tmp_path: Path) -> None:
    bed = shared_account
    specs = write_specs(tmp_path / "specs", lambda name: bed.spec_data(name), "alpha", "beta", "same")

    deployed = at_once(("deploy", specs["alpha"], "--json"), ("deploy", specs["beta"], "--json"),
                       ("deploy", specs["same"], "--json"), ("deploy", specs["same"], "--json"), env=bed.env)
    assert [o.code for o in deployed[:2]] == [0, 0], deployed
    check_same_name_race(deployed[2:], "created")

    live = bed.cloud.live()
    assert Counter(i.name for i in live) == {"dplr-alpha": 1, "dplr-beta": 1, "dplr-same": 1}
    assert Counter(r["name"] for r in bed.cloud.rulesets.values()) == {"dplr-alpha": 1, "dplr-beta": 1,
                                                                        "dplr-same": 1}
    from providers.lambda_cloud.ssh_key import auto_key_name

    ours = auto_key_name((bed.home / "lambda" / "id_ed25519.pub").read_text())
    assert {k["name"] for k in bed.cloud.ssh_keys.values()} == {ours}, "one key pair, uploaded once"
    assert {n for i in live for n in i.ssh_key_names} == {ours}, "every VM takes the key deployer holds"
    recorded = state_integrity(bed.home)
    rulesets = {r["name"]: r["id"] for r in bed.cloud.rulesets.values()}
    assert recorded == {i.name.removeprefix("dplr-"): sorted([("firewall-ruleset", rulesets[i.name]),
                                                               ("instance", i.id)]) for i in live}

    destroyed = at_once(("destroy", "alpha", "--json"), ("destroy", "beta", "--json"),
                        ("destroy", "same", "--json"), ("destroy", "same", "--json"), env=bed.env)
    assert [o.code for o in destroyed[:2]] == [0, 0], destroyed
    check_same_name_race(destroyed[2:], "destroyed")
    assert bed.cloud.live() == [] and bed.cloud.rulesets == {}
    assert state_integrity(bed.home) == {}
    limited = Counter(f"{c.method} {c.path.split('/')[1]}" for c in bed.emulator.calls if c.status == 429)
    print(f"the emulator answered 429 {bed.emulator.too_many} times ({dict(limited)}); every process got through")


# -- Modal -------------------------------------------------------------------------------------------


def test_modal_parallel_deploys_and_destroys(modal_emulator: Any, home: Path, tmp_path: Path,
                                             tiny_model: Path) -> None:
    def spec(name: str) -> dict[str, Any]:
        return {"name": name, "provider": "modal",
                "model": {"id": str(tiny_model), "served_name": "tiny", "max_model_len": 256},
                "resources": {"gpu": "L4"}, "scaling": {"min_replicas": 0, "max_replicas": 1}}

    specs = write_specs(tmp_path / "specs", spec, "alpha", "same")
    deployed = at_once(("deploy", specs["alpha"], "--json"), ("deploy", specs["same"], "--json"),
                       ("deploy", specs["same"], "--json"))
    assert deployed[0].code == 0, deployed
    check_same_name_race(deployed[1:], "created")
    apps = {name: modal_emulator.deployed_app(f"dplr-{name}") for name in ("alpha", "same")}
    assert all(apps.values())
    assert len(modal_emulator.requests("AppPublish")) == 2, "one publish per name"
    recorded = state_integrity(home)
    assert {name: [i for k, i in res if k == "app" and i.startswith("ap-")] for name, res in recorded.items()} == \
        {name: [app.app_id] for name, app in apps.items()}

    destroyed = at_once(("destroy", "alpha", "--json"), ("destroy", "same", "--json"), ("destroy", "same", "--json"))
    assert destroyed[0].code == 0, destroyed
    check_same_name_race(destroyed[1:], "destroyed")
    assert modal_emulator.holds_nothing()
    assert state_integrity(home) == {}
