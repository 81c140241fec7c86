"""The local provider end to end on the real vLLM engine, through the CLI as a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.support.bench_checks import plausible
from tests.support.engine import REPO, pid_alive

pytestmark = pytest.mark.engine
LOCAL_TINY = str(REPO / "configs" / "local-tiny.yaml")


@pytest.fixture(autouse=True)
def _never_leave_a_server(cli):
    """Whatever a test asserts, its servers are destroyed afterwards (a failing assertion must
    not leave a real vLLM running for the rest of the suite)."""
    yield
    for name in ("tiny", "broken"):
        cli("destroy", name)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_deploy_chat_redeploy_kill_recover_destroy(cli, home: Path, tiny_model: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hf_token = "hf_SENTINEL_local_e2e_" + os.urandom(6).hex()  # must show up nowhere either
    monkeypatch.setenv("HF_TOKEN", hf_token)
    outputs = [cli("plan", LOCAL_TINY, "--json")]
    assert outputs[0].code == 0, outputs[0]
    deployed = cli("deploy", LOCAL_TINY, "--json")
    outputs.append(deployed)
    assert deployed.code == 0, deployed
    doc = deployed.json()
    assert doc["action"] == "created" and doc["status"] == "ready" and doc["url"].endswith("/v1")
    key = (home / "keys" / "tiny.key").read_text().strip()
    assert (home / "keys" / "tiny.key").stat().st_mode & 0o777 == 0o600

    client = OpenAI(base_url=doc["url"], api_key=key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens >= 1
    with pytest.raises(Exception, match="401"):
        OpenAI(base_url=doc["url"], api_key="wrong", max_retries=0).models.list()
    # vLLM checks the key on /v1 only; deployer's guard (--middleware) covers the rest, e.g.
    # SageMaker's POST /invocations, which serves the same chats. GET /health stays open.
    server, keyed = doc["url"].removesuffix("/v1"), {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert httpx.post(server + "/invocations", json=body, timeout=60).status_code == 401
    assert httpx.get(server + "/version", headers={"Authorization": "Bearer wrong"}).status_code == 401
    invoked = httpx.post(server + "/invocations", json=body, headers=keyed, timeout=60)
    assert invoked.status_code == 200 and invoked.json()["choices"], invoked.text
    assert httpx.get(server + "/health").status_code == 200
    assert (home / "local" / "tiny" / "deployer_vllm_guard.py").exists()

    again = cli("deploy", LOCAL_TINY, "--json")
    outputs.append(again)
    assert again.code == 0 and again.json()["action"] == "unchanged" and again.json()["url"] == doc["url"]

    pid = int(next(r["id"] for r in doc["resources"] if r["kind"] == "process"))
    status = cli("status", "tiny", "--json")
    outputs.append(status)
    assert status.json()[0]["state"] == "ready"
    logs = cli("logs", "tiny")
    assert "Application startup complete" in logs.out

    os.killpg(pid, signal.SIGKILL)  # the server dies behind deployer's back
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    dead = cli("status", "tiny", "--json")
    assert dead.json()[0]["state"] == "dead"
    revived = cli("deploy", LOCAL_TINY, "--json")  # a dead server is not "unchanged": it is started again
    outputs.append(revived)
    assert revived.code == 0 and revived.json()["action"] == "updated", revived
    new_port = int(revived.json()["url"].rsplit(":", 1)[1].split("/")[0])
    new_pid = int(next(r["id"] for r in revived.json()["resources"] if r["kind"] == "process"))

    # deployer bench: a warm run, then --cold (restarts the server), then the cost of what it measured
    warm = cli("bench", "tiny", "--requests", "8", "--concurrency", "2", "--prompt-tokens", "32",
               "--max-tokens", "16", "--json")
    outputs.append(warm)
    assert warm.code == 0, warm
    plausible(warm.json(), 8, 16, 32)
    cold = cli("bench", "tiny", "--cold", "--requests", "2", "--concurrency", "1", "--prompt-tokens", "16",
               "--max-tokens", "8", "--json")
    outputs.append(cold)
    assert cold.code == 0, cold
    plausible(cold.json(), 2, 8, 16)
    measured = cold.json()["cold"]
    assert measured["error"] is None and "started it again" in measured["how"], measured
    # a vLLM start takes seconds, and nothing listened at first: the request was sent again
    assert measured["measured_s"] > 2 and measured["attempts"] > 1 and measured["ttft_s"] < measured["measured_s"]
    assert measured["predicted"] is None and "no resources.gpu" in measured["predicted_note"]
    restarted = cli("status", "tiny", "--json").json()[0]
    assert restarted["state"] == "ready" and restarted["url"] == revived.json()["url"]
    cold_pid = int(restarted["resources"][-1]["id"])
    assert cold_pid != new_pid and not pid_alive(new_pid)
    cost = cli("cost", "tiny", "--measured", "--requests-per-hour", "600", "--json")
    outputs.append(cost)
    assert cost.code == 0, cost
    assert cost.json()["measured"]["cold_start_s"] == measured["measured_s"]
    assert cost.json()["measured"]["seconds_per_request"] == cold.json()["throughput"]["seconds_per_request"]

    destroyed = cli("destroy", "tiny", "--json")
    outputs.append(destroyed)
    assert destroyed.code == 0 and destroyed.json()["destroyed"] == ["local"]
    assert not pid_alive(cold_pid) and not port_open(new_port)
    assert cli("list", "--json").json() == []

    # The key and the HF token appeared nowhere: not in state, logs, rendered files or any output.
    for path in home.rglob("*"):
        if path.is_file() and path.suffix != ".key":
            assert key.encode() not in path.read_bytes() and hf_token.encode() not in path.read_bytes(), path
    for result in outputs + [logs, status, dead]:
        for secret in (key, hf_token):
            assert secret not in result.out and secret not in result.err


def test_a_server_that_dies_while_starting_fails_the_deploy_fast(cli, home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    spec = tmp_path / "broken.yaml"
    spec.write_text(f"name: broken\nmodel:\n  id: {broken}\n  max_model_len: 256\nstartup:\n  readiness_timeout: 300\n")
    start = time.monotonic()
    result = cli("deploy", str(spec), env={"HF_HUB_OFFLINE": "1"})
    assert result.code == 1, result
    assert "gave up waiting: the vLLM process exited" in result.err
    assert time.monotonic() - start < 120
    assert cli("destroy", "broken").code == 0
    assert cli("list", "--json").json() == []


def test_ctrl_c_during_deploy_keeps_track_and_destroy_cleans_up(home: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "DEPLOYER_HOME": str(home)}
    destroy_cmd = [sys.executable, "-m", "deployer", "destroy", "tiny"]
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "deploy", LOCAL_TINY], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state_db = home / "state.db"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (home / "logs" / "tiny.log").exists():
            time.sleep(0.1)  # the server process has been started (and recorded) once its log exists
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "deployer destroy tiny" in err
        import sqlite3

        rows = sqlite3.connect(state_db).execute("SELECT kind, resource_id FROM resources WHERE name='tiny'").fetchall()
        assert [kind for kind, _ in rows] == ["process"]
        pid = int(rows[0][1])
        assert pid_alive(pid)  # Ctrl-C stops deployer, not the recorded server
        destroy = subprocess.run(destroy_cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
        assert destroy.returncode == 0, destroy.stderr
        assert not pid_alive(pid)
    finally:
        proc.kill()
        subprocess.run(destroy_cmd, cwd=REPO, capture_output=True, env=env, timeout=120)
