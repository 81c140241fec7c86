"""RunPod: what plan shows (exact REST v2 calls, valid per openapi-v2.json), the spec -> worker env
mapping, input errors, and where the RunPod key comes from. No emulator, no engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.errors import InputError
from deployer.provider import Secrets
from deployer.settings import Settings
from deployer.spec import load_spec, validate_spec
from deployer.vllm_command import serve_argv
from providers.runpod import mapping
from providers.runpod.adapter import Provider, owner_of
from providers.runpod.settings import load_settings
from tests.emulators.runpod.openapi import ContractChecker
from tests.emulators.runpod.worker_env import WorkerConfigError, vllm_serve_args
from tests.support.engine import REPO

CONFIGS = sorted((REPO / "configs").glob("runpod-*.yaml"))


def spec_of(**overrides: object) -> object:
    data: dict = {"name": "demo", "provider": "runpod", "model": {"id": "Qwen/Qwen2.5-0.5B-Instruct"},
                  "resources": {"gpu": "L4"}}
    data.update(overrides)
    return validate_spec(data)


def test_two_runpod_configs_ship() -> None:
    names = {p.name for p in CONFIGS}
    assert len(CONFIGS) == 2, names
    gpus = {load_spec(p).resources.gpu for p in CONFIGS}
    assert gpus == {"L4", "A100-80GB"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_plan_json_lists_the_exact_v2_requests_and_they_validate(config: Path, tmp_path: Path) -> None:
    token = "hf_plan_secret_value_123456"
    env = {**os.environ, "DEPLOYER_HOME": str(tmp_path), "HOME": str(tmp_path), "HF_TOKEN": token}
    env.pop("DEPLOYER_RUNPOD_API_URL", None)
    result = subprocess.run([sys.executable, "-m", "deployer", "plan", str(config), "--json"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout and token not in result.stderr
    doc = json.loads(result.stdout)
    requests = doc["artifacts"]["requests"]
    assert [(r["method"], r["url"]) for r in requests] == [
        ("GET", "https://api.runpod.io/v2/serverless"),
        ("GET", "https://api.runpod.io/v2/catalog/gpus"),
        ("POST", "https://api.runpod.io/v2/serverless"),
    ]
    checker = ContractChecker()
    for request in requests:
        path = request["url"].removeprefix("https://api.runpod.io")
        body = json.dumps(request["json"]).encode() if request["json"] is not None else None
        headers = {"Authorization": "Bearer x", **({"Content-Type": "application/json"} if body else {})}
        assert checker.request(request["method"], path, {}, headers, body) == [], request
    create = requests[2]["json"]
    spec = load_spec(config)
    assert create["name"] == f"dplr-{spec.name}"
    assert create["env"]["MODEL_NAME"] == spec.model.id
    assert create["env"]["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] == spec.model.served
    assert create["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"
    assert create["workers"] == {"min": spec.scaling.min_replicas, "max": spec.scaling.max_replicas,
                                 "idleTimeout": spec.scaling.idle_timeout}
    assert create["flashboot"] == "FLASHBOOT"
    assert create["gpu"]["allowedCudaVersions"] == ["13.0"]
    assert len(create["gpu"]["pools"]) == len(set(create["gpu"]["pools"])) == 2
    assert any("live catalog" in note for note in doc["notes"])


def test_plan_without_hf_token_sends_no_secret_reference() -> None:
    artifacts = Provider(Settings()).render(spec_of(), Secrets.redacted(has_hf_token=False))
    assert "HF_TOKEN" not in artifacts.requests[2].json["env"]
    named = spec_of(providers={"runpod": {"hf_secret_name": "my-hf"}})
    artifacts = Provider(Settings()).render(named, Secrets.redacted(has_hf_token=False))
    assert artifacts.requests[2].json["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_my-hf }}"


def test_render_is_pure_and_never_carries_the_token() -> None:
    spec = spec_of(model={"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 4096})
    secrets = Secrets(api_key="dpk-endpoint-key-value", hf_token="hf_real_token_value_42")
    one = Provider(Settings()).render(spec, secrets)
    two = Provider(Settings()).render(spec, secrets)
    assert one.to_dict() == two.to_dict() and one.notes == two.notes
    text = json.dumps(one.to_dict()) + "\n".join(one.notes)
    assert "hf_real_token_value_42" not in text and "dpk-endpoint-key-value" not in text


@pytest.mark.parametrize("model", [
    {"max_model_len": 2048, "dtype": "bfloat16", "revision": "abc123", "quantization": "awq",
     "engine_args": {"enforce-eager": True, "enable-prefix-caching": False, "max-num-seqs": 64,
                     "gpu-memory-utilization": 0.85, "kv-cache-dtype": "fp8"}},
    {"served_name": "chat", "engine_args": {"trust-remote-code": True}},
])
def test_worker_env_gives_the_same_vllm_flags_as_the_builder(model: dict) -> None:
    """Two independent paths (deployer's builder -> env, the worker's env -> argv) must agree."""
    spec = spec_of(model={"id": "org/model", **model}, resources={"gpu": "H100", "count": 2})
    env = mapping.worker_env(spec, Secrets(api_key="x"), spec.options("runpod"))
    from_worker = vllm_serve_args(env)
    from_builder = serve_argv(spec, host="127.0.0.1", port=8000, api_key=None)
    assert from_worker[0] == from_builder[0] == "org/model"
    assert _pairs(from_worker[1:]) == _pairs(from_builder[1:])
    assert env["MAX_CONCURRENCY"] == "32"


def _pairs(argv: list[str]) -> set[tuple[str, str | None]]:
    out, i = set(), 0
    while i < len(argv):
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.add((argv[i], argv[i + 1]))
            i += 2
        else:
            out.add((argv[i], None))
            i += 1
    return out


def test_the_emulated_worker_reads_env_like_worker_vllm() -> None:
    argv = vllm_serve_args({
        "MODEL_NAME": "m", "MODEL_REVISION": "r1", "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "s",
        "ENFORCE_EAGER": "false", "DISABLE_LOG_STATS": "no", "MAX_NUM_BATCHED_TOKENS": "0", "PORT": "9",
        "API_KEY": "k", "MAX_CONCURRENCY": "4", "NOT_A_FLAG": "1", "VLLM_EXTRA_ARGS": "--seed 7", "DTYPE": " ",
    })
    assert argv[0] == "m"
    assert _pairs(argv[1:]) == {("--revision", "r1"), ("--served-model-name", "s"), ("--no-enforce-eager", None),
                                ("--host", "127.0.0.1"), ("--port", "8000"), ("--seed", "7")}
    with pytest.raises(WorkerConfigError):
        vllm_serve_args({"MODEL_NAME": "m", "ENFORCE_EAGER": "maybe"})


@pytest.mark.parametrize("data, message", [
    ({"resources": {"gpu": None}}, "set resources.gpu"),
    ({"resources": {"gpu": "T4"}}, "no T4"),
    ({"model": {"id": "m", "engine_args": {"hf-token": "x"}}}, "secrets.hf_token_env"),
])
def test_specs_runpod_cannot_serve_are_input_errors(data: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Provider(Settings()).render(spec_of(**data), Secrets.redacted())


def test_bad_runpod_options_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown GPU 'H1000'"):
        spec_of(providers={"runpod": {"fallback_gpus": ["H1000"]}})
    with pytest.raises(InputError, match="secret name"):
        spec_of(providers={"runpod": {"hf_secret_name": "has space"}})


def test_exact_gpu_excludes_the_other_cards_of_the_pool() -> None:
    spec = spec_of(resources={"gpu": "L40S"}, providers={"runpod": {"exact_gpu": True}})
    gpu = Provider(Settings()).render(spec, Secrets.redacted()).requests[2].json["gpu"]
    assert gpu["pools"] == ["ADA_48_PRO"]
    assert gpu["excludedTypes"] == ["NVIDIA L40", "NVIDIA RTX 6000 Ada Generation"]
    fast_boot_off = spec_of(startup={"fast_boot": False}, providers={"runpod": {"pools": ["AMPERE_16"]}})
    body = Provider(Settings()).render(fast_boot_off, Secrets.redacted()).requests[2].json
    assert body["flashboot"] == "OFF" and body["gpu"]["pools"] == ["AMPERE_16"]


def test_update_body_sends_only_what_differs() -> None:
    spec = spec_of()
    desired = Provider(Settings()).render(spec, Secrets.redacted()).requests[2].json
    current = {**json.loads(json.dumps(desired)), "id": "e1", "dataCenterIds": [], "networkVolumes": [],
               "gpu": {**desired["gpu"], "minCudaVersion": None}}
    assert mapping.update_body(current, desired) == {}
    current["workers"] = {"min": 1, "max": 1, "idleTimeout": 300}
    current["gpu"] = {**current["gpu"], "pools": ["ADA_24"], "excludedTypes": ["NVIDIA GeForce RTX 4090"]}
    assert mapping.update_body(current, desired) == {"workers": desired["workers"],
                                                     "gpu": {"pools": desired["gpu"]["pools"]}}


def test_owner_of_recognises_our_names_only() -> None:
    assert owner_of("dplr-qwen") == "qwen"
    assert owner_of("dplr-qwen__template__abc") == "qwen"
    assert owner_of("someone-elses") is None


def test_the_key_comes_from_env_then_the_sdk_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    config = tmp_path / "config.toml"
    monkeypatch.setenv("DEPLOYER_RUNPOD_CONFIG_FILE", str(config))
    assert load_settings().api_key is None
    assert Provider(Settings()).has_credentials() is False
    config.write_text('[default]\napi_key = "rpa_from_file"\n')
    settings = load_settings()
    assert settings.api_key.get_secret_value() == "rpa_from_file" and settings.key_origin == str(config)
    assert Provider(Settings()).has_credentials() is True
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_from_env")
    settings = load_settings()
    assert settings.api_key.get_secret_value() == "rpa_from_env" and settings.key_origin == "$RUNPOD_API_KEY"
    assert "rpa_from_env" not in repr(settings)
    monkeypatch.delenv("RUNPOD_API_KEY")
    config.write_text("[default\napi_key=")
    with pytest.raises(InputError, match="cannot read the RunPod config"):
        load_settings()
    assert Provider(Settings()).has_credentials() is False
