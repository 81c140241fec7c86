"""No secret leaks: every CLI flow, on every cloud provider, with a distinct sentinel per secret.

Each test deploys through the CLI (subprocesses, as a user runs it) against a provider's emulator
with sentinel values for every credential deployer can see: RUNPOD_API_KEY, LAMBDA_API_KEY,
MODAL_TOKEN_ID/MODAL_TOKEN_SECRET (the emulators are started with them), the HF token and the
endpoint key (auth.api_key_env). Then it asserts that no sentinel appears

- in anything the CLI printed, stdout and stderr: plan (--json and human), cost --json (live
  prices read with the provider's key), deploy --json twice, status (--json and human),
  list --json, logs, gc --json, destroy --json; a failed deploy's diagnosis (RunPod crash loop),
- in any file under HOME / DEPLOYER_HOME: state.db and its -wal/-shm, rendered files, logs
  (read while deployed and after destroy; with api_key_env there is no generated key file),
- in `deployer logs` even when the HF token lives only in a RunPod secret deployer never saw,
- on the provider's side, except where the provider needs it and in that form only:
  RunPod gets its own key in Authorization and a `{{ RUNPOD_SECRET_hf_token }}` reference, never
  the HF token or the endpoint key; Lambda gets its key in Authorization and the endpoint key and
  HF token inside user_data only (the 0600 env file the container reads, never a command line); Modal
  gets its token in the gRPC metadata and the endpoint key / HF token only as the env dict of
  SecretGetOrCreate for `dplr-<name>-key` / `dplr-<name>-hf`.

The local provider's flow is scanned the same way in tests/test_local_e2e.py (real engine).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.emulators.lambda_cloud.fixture import finish_testbed, start_testbed
from tests.emulators.lambda_cloud.vm import parse_cloud_config, parse_docker_run
from tests.emulators.modal import ModalEmulator
from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.fixture import deploy_in_process, start_runpod, tiny_spec  # noqa: F401 - fixture
from tests.support.cli import CliResult as Run
from tests.support.engine import REPO, free_port, tiny_model

ENDPOINT_KEY_ENV = "DPLR_HYGIENE_ENDPOINT_KEY"
_RUN = secrets.token_hex(6)
SENTINELS = {
    "RUNPOD_API_KEY": f"rpa_SENTINELrunpodkey{_RUN}",
    "LAMBDA_API_KEY": f"secret_SENTINELlambdakey{_RUN}",
    "MODAL_TOKEN_ID": f"ak-SENTINELmodaltokenid{_RUN}",
    "MODAL_TOKEN_SECRET": f"as-SENTINELmodaltokensecret{_RUN}",
    "HF_TOKEN": f"hf_SENTINELhftoken{_RUN}",
    ENDPOINT_KEY_ENV: f"sk-SENTINELendpointkey{_RUN}",
}
HF, ENDPOINT_KEY = SENTINELS["HF_TOKEN"], SENTINELS[ENDPOINT_KEY_ENV]
CREDENTIALS = {"runpod": ("RUNPOD_API_KEY",), "lambda": ("LAMBDA_API_KEY",),
               "modal": ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")}


def hits(blob: str | bytes, *, allow: tuple[str, ...] = ()) -> list[str]:
    """Names of the sentinels found in `blob` (those in `allow` excepted)."""
    data = blob.encode(errors="replace") if isinstance(blob, str) else blob
    return [name for name, value in SENTINELS.items() if name not in allow and value.encode() in data]


def scan_tree(root: Path) -> dict[str, list[str]]:
    """{file: sentinels} for every file under `root` holding one."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and (names := hits(path.read_bytes())):
            found[str(path.relative_to(root))] = names
    return found


class Cli:
    """`python -m deployer ...` subprocesses with one fixed environment; keeps every result."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runs: list[Run] = []

    def __call__(self, *args: str, expect: int | None = 0, timeout: float = 180,
                 without: tuple[str, ...] = ()) -> Run:
        env = {k: v for k, v in self.env.items() if k not in without}
        proc = subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=timeout, stdin=subprocess.DEVNULL)
        run = Run(args, proc.returncode, proc.stdout, proc.stderr)
        self.runs.append(run)
        if expect is not None:
            assert run.code == expect, run
        return run

    def leaks(self) -> list[str]:
        return [f"{' '.join(r.args)}: {names}" for r in self.runs if (names := hits(r.out + r.err))]


def cli_env(home: Path, provider_env: dict[str, str]) -> dict[str, str]:
    """Every credential set to its sentinel (a flow must not leak another provider's key either),
    then the emulator's base URLs and fast settings; HOME isolated (no ~/.runpod, ~/.modal.toml)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "LAMBDA_", "MODAL_"))}
    return {**env, **SENTINELS, **provider_env, "HOME": str(home), "DEPLOYER_HOME": str(home / "deployer")}


def spec_data(name: str, provider: str, **sections: Any) -> dict[str, Any]:
    """The tiny model with the endpoint key from ENDPOINT_KEY_ENV and the HF token from HF_TOKEN."""
    data: dict[str, Any] = {
        "name": name, "provider": provider,
        "model": {"id": str(tiny_model()), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                  "engine_args": {"enforce-eager": True}},
        "resources": {"gpu": "L4"},
        "startup": {"readiness_timeout": 60},
        "auth": {"api_key_env": ENDPOINT_KEY_ENV},
        "secrets": {"hf_token_env": "HF_TOKEN"},
    }
    return {**data, **sections}


def every_flow(cli: Cli, config: Path, name: str, provider: str, *, url_key: str,
               deployed: Callable[[], None], logs_ok: bool = True) -> dict[str, Any]:
    """plan (JSON and human), cost, deploy, chat, redeploy, status (JSON and human), list, logs,
    gc, then `deployed()` (scans while up), destroy. Returns the deploy document."""
    plan = cli("plan", str(config), "--json").json()
    assert plan["name"] == name and plan["provider"] == provider
    assert name in cli("plan", str(config)).out  # the human form prints the rendered files too
    # cost reads live prices with every provider's credentials; only this provider's emulator runs
    others = tuple(k for p, keys in CREDENTIALS.items() if p != provider for k in keys)
    cost = cli("cost", str(config), "--requests-per-hour", "10", "--json", without=others).json()
    if provider != "modal":  # prices were read live, with the sentinel credential
        assert provider in cost["prices"]["live"], cost["prices"]
    doc = cli("deploy", str(config), "--json").json()
    assert doc["status"] == "ready" and doc["action"] == "created"
    reply = openai.OpenAI(base_url=doc["url"], api_key=url_key, max_retries=0).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=3)
    assert reply.choices[0].message.content  # the sentinel really is the key that works
    assert cli("deploy", str(config), "--json").json()["action"] == "unchanged"
    [row] = cli("status", name, "--json").json()
    assert row["state"] == "ready" and "ready" in cli("status", name).out
    assert [r["name"] for r in cli("list", "--json").json()] == [name]
    logs = cli("logs", name, expect=0 if logs_ok else None)
    assert logs.out or logs.err
    gc = cli("gc", "--provider", provider, "--json").json()
    assert gc["orphans"] == [] and {e["deployment"] for e in gc["healthy"]} == {name}
    deployed()
    assert cli("destroy", name, "--json").json()["destroyed"] == [provider]
    assert cli("list", "--json").json() == []
    return doc


def assert_no_file_leaks(home: Path) -> None:
    """Nothing under HOME (DEPLOYER_HOME is home/deployer) holds a sentinel; state.db is there."""
    assert (home / "deployer" / "state.db").exists()
    assert scan_tree(home) == {}


def assert_clean(cli: Cli, home: Path) -> None:
    assert cli.leaks() == []
    assert_no_file_leaks(home)


# -- RunPod ----------------------------------------------------------------------------------------


def test_runpod_flows_leak_nothing_and_runpod_never_sees_the_hf_token(
        start_runpod: Any, tmp_path: Path) -> None:  # noqa: F811
    # The user stored the same HF token as a RunPod secret (console > Settings > Secrets): the
    # worker resolves the reference and logs its command line with the token in it.
    emu: RunPodEmulator = start_runpod(api_key=SENTINELS["RUNPOD_API_KEY"], secrets={"hf_token": HF})
    home = tmp_path / "home"
    cli = Cli(cli_env(home, emu.env()))
    config = tmp_path / "rp.yaml"
    # idle_timeout 3600 emulated s: the worker (and its log) is still there when `logs` runs
    config.write_text(yaml.safe_dump(spec_data("hyg-rp", "runpod", scaling={"idle_timeout": 3600})))

    def while_deployed() -> None:
        assert_no_file_leaks(home)
        worker_lines = [line for w in emu.cluster.all_workers for _, _, line in w.log.entries]
        assert any(HF in line for line in worker_lines), "the scrub below must be exercised"
        assert any("--hf-token <redacted>" in r.out for r in cli.runs if r.args[0] == "logs")

    every_flow(cli, config, "hyg-rp", "runpod", url_key=SENTINELS["RUNPOD_API_KEY"], deployed=while_deployed)
    assert emu.leftovers() == []
    assert_clean(cli, home)

    [create] = emu.calls(method="POST", path=r"^/v2/serverless$")
    assert create.body["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"
    for exchange in emu.calls("control") + emu.calls("data"):
        what = f"{exchange.plane} {exchange.method} {exchange.path}"
        sent = json.dumps([exchange.path, exchange.query, exchange.body], default=str)
        assert hits(sent) == [], what  # the HF token and the endpoint key never reach RunPod
        headers = {k.lower(): v for k, v in exchange.headers.items()}
        assert headers.get("authorization") == "Bearer " + SENTINELS["RUNPOD_API_KEY"], what
        assert hits(json.dumps({k: v for k, v in headers.items() if k != "authorization"})) == [], what


def test_a_failed_runpod_deploy_shows_the_workers_log_without_the_token(
        start_runpod: Any, tmp_path: Path) -> None:  # noqa: F811
    emu: RunPodEmulator = start_runpod(api_key=SENTINELS["RUNPOD_API_KEY"], secrets={"hf_token": HF})
    emu.faults.crash = True
    home = tmp_path / "home"
    cli = Cli(cli_env(home, emu.env()))
    config = tmp_path / "crash.yaml"
    config.write_text(yaml.safe_dump(spec_data("hyg-crash", "runpod")))
    failed = cli("deploy", str(config), "--json", expect=1)
    assert "crash-looping" in failed.json()["error"] and "--hf-token <redacted>" in failed.json()["error"]
    cli("destroy", "hyg-crash", "--json")
    assert emu.leftovers() == []
    assert_clean(cli, home)


# -- Lambda ----------------------------------------------------------------------------------------


def test_lambda_flows_leak_nothing_and_secrets_reach_lambda_only_in_user_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bed = start_testbed(tmp_path, monkeypatch, api_key=SENTINELS["LAMBDA_API_KEY"])
    try:
        home = tmp_path / "home"
        cli = Cli(cli_env(home, bed.env))  # bed.env's LAMBDA_API_KEY is the sentinel
        config = tmp_path / "lam.yaml"
        config.write_text(yaml.safe_dump(spec_data("hyg-lam", "lambda", resources={"gpu": "H100"},
                                                   providers={"lambda": {"port": free_port()}})))
        # `logs` reads the container log over SSH; the emulated VM has no SSH server, so it fails,
        # and even that error output is scanned
        every_flow(cli, config, "hyg-lam", "lambda", url_key=ENDPOINT_KEY,
                   deployed=lambda: assert_no_file_leaks(home), logs_ok=False)
        assert bed.cloud.live() == [] and bed.cloud.rulesets == {}
        assert_clean(cli, home)

        [launch] = bed.emulator.calls_to("POST", "/instance-operations/launch")
        user_data = launch.body["user_data"]
        assert hits(json.dumps({k: v for k, v in launch.body.items() if k != "user_data"})) == []
        assert sorted(hits(user_data)) == sorted(["HF_TOKEN", ENDPOINT_KEY_ENV])
        config_doc = parse_cloud_config(user_data)
        [docker] = [cmd for cmd in config_doc.runcmd if cmd[:2] == ["docker", "run"]]
        assert "--api-key" not in parse_docker_run(docker).serve_args  # vLLM and its guard read VLLM_API_KEY
        assert user_data.count(ENDPOINT_KEY) == 1 and user_data.count(HF) == 1
        [env_file] = [p for p, text in config_doc.write_files.items() if HF in text]
        assert config_doc.write_files[env_file].splitlines() == [f"VLLM_API_KEY={ENDPOINT_KEY}", f"HF_TOKEN={HF}"]
        assert parse_docker_run(docker).values("--env-file") == [env_file]
        [entry] = [f for f in yaml.safe_load(user_data)["write_files"] if f["path"] == env_file]
        assert entry["permissions"] == "0600" and entry["owner"] == "root:root"
        for call in bed.emulator.calls:
            what = f"{call.method} {call.path}"
            body = call.body
            if isinstance(body, dict):
                body = {k: v for k, v in body.items() if k != "user_data"}
            assert hits(json.dumps(body)) == [], what
            headers = {k.lower(): v for k, v in call.headers.items()}
            assert headers.get("authorization") == "Bearer " + SENTINELS["LAMBDA_API_KEY"], what
            assert hits(json.dumps({k: v for k, v in headers.items() if k != "authorization"})) == [], what
    finally:
        finish_testbed(bed)


# -- Modal -----------------------------------------------------------------------------------------


@pytest.fixture
def modal_sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModalEmulator]:
    """The Modal emulator accepting only the sentinel token (the SDK in the CLI must send it)."""
    emulator = ModalEmulator(tmp_path / "modal-emulator",
                             token=(SENTINELS["MODAL_TOKEN_ID"], SENTINELS["MODAL_TOKEN_SECRET"])).start()
    for key, value in emulator.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield emulator
    finally:
        containers = list(emulator.containers.values()) + emulator.retired
        emulator.stop()
        assert not [c.spec.tag for c in containers if c.engine is not None and c.engine.alive()]
        assert not [t.name for t in threading.enumerate() if t.name.startswith("modal-") and t.is_alive()]


def test_modal_flows_leak_nothing_and_secrets_reach_modal_only_as_secret_payloads(
        modal_sentinel: ModalEmulator, tmp_path: Path) -> None:
    emu = modal_sentinel
    home = tmp_path / "home"
    cli = Cli(cli_env(home, {**emu.env(), "DEPLOYER_MODAL_POLL_INTERVAL": "0.05", "DEPLOYER_MODAL_STOP_TIMEOUT": "10"}))
    config = tmp_path / "modal.yaml"
    config.write_text(yaml.safe_dump(spec_data("hyg-modal", "modal")))  # snapshot mode, on the stub

    def while_deployed() -> None:
        assert_no_file_leaks(home)
        assert (home / "deployer" / "modal" / "hyg-modal" / "app.py").exists()  # the rendered file was scanned
        assert emu.secret_env("dplr-hyg-modal-key") == {"VLLM_API_KEY": ENDPOINT_KEY}
        assert emu.secret_env("dplr-hyg-modal-hf") == {"HF_TOKEN": HF}

    every_flow(cli, config, "hyg-modal", "modal", url_key=ENDPOINT_KEY, deployed=while_deployed)
    assert emu.holds_nothing() and emu.secret_env("dplr-hyg-modal-key") is None
    assert_clean(cli, home)

    payloads = {"dplr-hyg-modal-key": {"VLLM_API_KEY": ENDPOINT_KEY}, "dplr-hyg-modal-hf": {"HF_TOKEN": HF}}
    seen = set()
    with emu.control.lock:
        requests = list(emu.control.requests)
        metadata = list(emu.control.metadata)
    for rpc, message in requests:
        if message is None:
            continue
        if rpc == "SecretGetOrCreate" and message.env_dict:  # a write (lookups carry no env dict)
            assert dict(message.env_dict) == payloads[message.deployment_name], message.deployment_name
            seen.add(message.deployment_name)
            message = type(message).FromString(message.SerializeToString())
            message.env_dict.clear()
        assert hits(message.SerializeToString()) == [], rpc
    assert seen == set(payloads)
    tokens = ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET")
    for rpc, meta in metadata:
        assert meta.get("x-modal-token-id") == SENTINELS["MODAL_TOKEN_ID"], rpc
        others = {k: v for k, v in meta.items() if k not in ("x-modal-token-id", "x-modal-token-secret")}
        assert hits(json.dumps(others)) == [] and hits(json.dumps(meta), allow=tokens) == [], rpc


def test_runpod_logs_hide_a_token_that_only_runpod_holds(
        start_runpod: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The HF token may live only in the RunPod secret (providers.runpod.hf_secret_name, no local
    HF_TOKEN): deployer cannot know its value, yet the worker logs it on its command line."""
    held_by_runpod = f"hf_SENTINELonlyatrunpod{_RUN}"
    emu: RunPodEmulator = start_runpod(secrets={"my_hf": held_by_runpod})
    monkeypatch.delenv("HF_TOKEN", raising=False)
    spec = tiny_spec(name="rp-only", providers={"runpod": {"hf_secret_name": "my_hf"}},
                     scaling={"idle_timeout": 3600})
    provider, deployment, _ = deploy_in_process(spec)
    worker_lines = [line for w in emu.cluster.all_workers for _, _, line in w.log.entries]
    assert any(held_by_runpod in line for line in worker_lines)
    lines = list(provider.logs(deployment))
    assert any("--hf-token <redacted>" in line for line in lines)
    assert not [line for line in lines if held_by_runpod in line]
    provider.destroy(deployment)
    assert emu.leftovers() == []
