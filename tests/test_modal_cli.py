"""`deployer` as a user runs it against the local Modal control plane: plan, deploy (real vLLM),
chat with the openai client, redeploy (a no-op), status, logs, destroy; then nothing is left."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import yaml

from tests.emulators.modal import ModalEmulator
from tests.emulators.modal.fixtures import modal_emulator_fixture  # noqa: F401 - provides `modal_emulator`

KEY = "dpk-cli-e2e-key-0123456789"


def write_spec(path: Path, model: Path, **extra: object) -> Path:
    spec = {
        "name": "tiny", "provider": "modal",
        "model": {"id": str(model), "served_name": "tiny", "max_model_len": 256, "dtype": "float32",
                  "engine_args": {"enforce-eager": True}},
        "resources": {"gpu": "L4"},
        "auth": {"api_key_env": "MODAL_E2E_KEY"},
        **extra,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_plan_json_shows_the_app_and_no_secret(cli, tmp_path: Path, tiny_model: Path,
                                               modal_emulator: ModalEmulator) -> None:
    spec = write_spec(tmp_path / "tiny.yaml", tiny_model)
    result = cli("plan", str(spec), "--json", env={**modal_emulator.env(), "MODAL_E2E_KEY": KEY, "HF_TOKEN": "hf_x"})
    assert result.code == 0, result
    doc = result.json()
    text = doc["artifacts"]["files"]["modal/tiny/app.py"]
    assert "enable_memory_snapshot=True" in text and 'gpu="L4"' in text
    assert KEY not in result.out and "hf_x" not in result.out
    secrets = [r["json"].get("deployment_name") for r in doc["artifacts"]["requests"][:2]]
    assert secrets == ["dplr-tiny-key", "dplr-tiny-hf"]
    assert modal_emulator.rpc_names() == []  # plan calls nobody


@pytest.mark.engine
def test_deploy_chat_redeploy_destroy_with_the_real_engine(cli, tmp_path: Path, tiny_model: Path,
                                                           modal_emulator: ModalEmulator) -> None:
    """Plain mode: vLLM's CPU build has no sleep mode, so snapshot mode runs on the stub only."""
    modal_emulator.real_engine = True
    spec = write_spec(tmp_path / "tiny.yaml", tiny_model, providers={"modal": {"mode": "plain"}},
                      startup={"readiness_timeout": 240})
    env = {**modal_emulator.env(), "MODAL_E2E_KEY": KEY}

    deployed = cli("deploy", str(spec), "--json", env=env, timeout=400)
    assert deployed.code == 0, deployed
    doc = deployed.json()  # stdout is exactly one JSON document: the SDK printed nothing there
    assert doc["status"] == "ready" and doc["url"].endswith("/v1") and doc["action"] == "created"
    app = modal_emulator.deployed_app("dplr-tiny")
    assert {"kind": "app", "id": app.app_id} in doc["resources"]
    assert modal_emulator.container(app.app_id, "serve").engine.real

    client = openai.OpenAI(base_url=doc["url"], api_key=KEY)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=doc["url"], api_key="wrong-key").models.list()

    again = cli("deploy", str(spec), "--json", env=env)
    assert again.code == 0 and again.json()["action"] == "unchanged", again
    assert modal_emulator.deployed_app("dplr-tiny").version == 1

    status = cli("status", "tiny", "--json", env=env)
    assert status.code == 0 and json.loads(status.out)[0]["state"] == "ready", status
    logs = cli("logs", "tiny", env=env)
    assert logs.code == 0 and "[modal] running" in logs.out, logs

    destroyed = cli("destroy", "tiny", "--json", env=env)
    assert destroyed.code == 0 and destroyed.json()["destroyed"] == ["modal"], destroyed
    assert modal_emulator.holds_nothing()
    assert modal_emulator.secret_env("dplr-tiny-key") is None
    assert cli("destroy", "tiny", "--json", env=env).json()["status"] == "absent"
