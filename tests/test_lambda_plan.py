"""Lambda backend without a cloud: instance-type mapping, options, settings, and what `plan`
shows (the ruleset and launch requests and the cloud-config), checked against Lambda's OpenAPI
document, the emulated VM's reading of the cloud-config, and the installed vLLM's flag table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployer.errors import InputError
from deployer.provider import REDACTED, Secrets
from deployer.settings import Settings
from deployer.spec import load_spec, validate_spec
from deployer.vllm_command import GUARD_MIDDLEWARE, guard_source
from providers.lambda_cloud.adapter import Provider
from providers.lambda_cloud.instance_types import CATALOG, classify, instance_types_for
from providers.lambda_cloud.settings import load_settings
from tests.emulators.lambda_cloud.openapi import openapi
from tests.emulators.lambda_cloud.vm import plan_boot
from tests.support.engine import CONTRACTS, REPO
from tests.support.stub_engine import parse as parse_vllm_flags

CONFIGS = sorted((REPO / "configs").glob("lambda-*.yaml"))


def _spec(**overrides):
    data = {
        "name": "unit", "provider": "lambda",
        "model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 4096},
        "resources": {"gpu": "H100", "count": 1},
    }
    for key, value in overrides.items():
        data[key] = value
    return validate_spec(data)


def _provider(tmp_path: Path) -> Provider:
    return Provider(Settings(home=tmp_path / "home"))


def _check_plan(artifacts) -> dict:
    """Every request body validates against Lambda's document; returns the launch body."""
    api = openapi()
    by_path = {}
    for req in artifacts.requests:
        path = req.url.split("/api/v1", 1)[1]
        route, _, _ = api.match(req.method, path)
        assert route is not None, f"{req.method} {path} is not in Lambda's API"
        assert api.request_problems(route, req.json) == [], req.json
        by_path[path] = req.json
    assert {"/firewall-rulesets", "/instance-operations/launch"} <= set(by_path)
    return by_path["/instance-operations/launch"]


def test_gpu_mapping_follows_lambdas_catalog():
    assert instance_types_for("H100", 1) == ["gpu_1x_h100_sxm5", "gpu_1x_h100_pcie"]
    assert instance_types_for("A100-80GB", 8) == ["gpu_8x_a100_80gb_sxm4"]
    assert instance_types_for("A100-80GB", 1) == []
    assert instance_types_for("GH200", 1) == ["gpu_1x_gh200"]
    assert next(t for t in CATALOG if t.name == "gpu_1x_gh200").arch == "arm64"
    # the built-in table agrees with the real GET /instance-types body it was taken from
    capture = json.loads((CONTRACTS / "lambda" / "instance-types-response-2025-11.json").read_text())["data"]
    for entry in CATALOG:
        live = capture[entry.name]["instance_type"]
        assert live["specs"]["gpus"] == entry.count
        assert live["price_cents_per_hour"] == entry.price_cents_per_hour
        assert classify(live["gpu_description"]) == (entry.gpu, entry.memory_gb)
    assert classify("Tesla V100 (16 GB)") == (None, 16)


def test_no_fitting_type_is_an_input_error(tmp_path):
    provider = _provider(tmp_path)
    with pytest.raises(InputError, match=r"no Lambda instance type has 1x A100-80GB: Lambda sells A100-80GB only as 8x"):
        provider.render(_spec(resources={"gpu": "A100-80GB", "count": 1}), Secrets.redacted())
    with pytest.raises(InputError, match="set resources.gpu"):
        provider.render(_spec(resources={}), Secrets.redacted())
    with pytest.raises(InputError, match="gpu_1x_a10 has 1x A10"):
        provider.render(_spec(providers={"lambda": {"instance_types": ["gpu_1x_a10"]}}), Secrets.redacted())
    with pytest.raises(InputError, match="no Lambda instance type has 1x H200"):
        provider.render(_spec(resources={"gpu": "H200", "count": 1}), Secrets.redacted())


@pytest.mark.parametrize("bad, message", [
    ({"allowed_cidrs": ["10.0.0.300/8"]}, "CIDR"),
    ({"image": "vllm/vllm-openai:latest"}, "pin the image"),
    ({"image": "vllm/vllm-openai"}, "pin the image"),
    ({"instance_types": ["H100"]}, "not a Lambda instance type"),
    ({"filesystem": "9cache"}, "filesystem name"),
    ({"regoins": ["us-east-1"]}, "regions"),
])
def test_bad_options_are_input_errors(bad, message):
    with pytest.raises(InputError, match=message):
        _spec(providers={"lambda": bad})


def test_settings_read_env_then_keys_file(tmp_path, monkeypatch):
    keys = tmp_path / "lambda_keys"
    keys.write_text("# Lambda\napi_key = secret_from_file\n")
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    monkeypatch.setenv("DEPLOYER_LAMBDA_KEYS_FILE", str(keys))
    monkeypatch.setenv("DEPLOYER_LAMBDA_API_URL", "http://127.0.0.1:9/api/v1")
    settings = load_settings()
    assert settings.api_key.get_secret_value() == "secret_from_file"
    assert settings.api_url == "http://127.0.0.1:9/api/v1"
    assert "secret_from_file" not in repr(settings)
    monkeypatch.setenv("LAMBDA_API_KEY", "secret_from_env")
    assert load_settings().api_key.get_secret_value() == "secret_from_env"
    monkeypatch.delenv("LAMBDA_API_KEY")
    monkeypatch.setenv("DEPLOYER_LAMBDA_KEYS_FILE", str(tmp_path / "missing"))
    assert load_settings().api_key is None
    assert _provider(tmp_path).has_credentials() is False
    monkeypatch.delenv("DEPLOYER_LAMBDA_API_URL")
    assert load_settings().api_url == "https://cloud.lambda.ai/api/v1"


def test_render_is_pure_and_redacts(tmp_path):
    provider = _provider(tmp_path)
    spec = _spec(providers={"lambda": {"regions": ["us-east-1"], "allowed_cidrs": ["203.0.113.0/24"]}})
    first = provider.render(spec, Secrets.redacted())
    assert first.to_dict() == provider.render(spec, Secrets.redacted()).to_dict()
    plan_text = json.dumps(first.to_dict())
    assert REDACTED in plan_text
    real = provider.render(spec, Secrets(api_key="sk-real-endpoint-key", hf_token="hf_real_token"))
    real_text = json.dumps(real.to_dict())
    assert "sk-real-endpoint-key" in real_text and "hf_real_token" in real_text
    assert "sk-real-endpoint-key" not in plan_text and "hf_real_token" not in plan_text
    launch = _check_plan(first)
    assert launch["region_name"] == "us-east-1"
    assert launch["tags"][0] == {"key": "deployer-name", "value": "unit"}
    ruleset = next(r.json for r in first.requests if r.url.endswith("/firewall-rulesets"))
    assert {(r["port_range"][0], r["source_network"]) for r in ruleset["rules"]} == {
        (22, "0.0.0.0/0"), (8000, "203.0.113.0/24")}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_example_configs_plan_validates(tmp_path, config):
    """The shipped examples: requests valid for Lambda, a cloud-config the VM can boot, and a
    vLLM command every flag of which the installed vLLM accepts."""
    spec = load_spec(config)
    artifacts = _provider(tmp_path).render(spec, Secrets.redacted())
    launch = _check_plan(artifacts)
    user_data = artifacts.files["lambda/cloud-init.yaml"]
    assert launch["user_data"] == user_data
    assert yaml.safe_load(user_data)["runcmd"]
    boot = plan_boot(user_data, mounts={spec.options("lambda").filesystem: "/lambda/nfs/x"})
    assert boot.problems == [] and boot.notes == []
    assert boot.docker.image == "vllm/vllm-openai:v0.32.0"
    assert boot.host_port == spec.options("lambda").port
    parsed = parse_vllm_flags(boot.docker.serve_args)
    assert parsed["model"] == spec.model.id
    # the key reaches vLLM and its guard as VLLM_API_KEY from the 0600 env file, never as a flag
    assert "--api-key" not in parsed["flags"] and parsed["middleware"] == [GUARD_MIDDLEWARE]
    assert boot.env["VLLM_API_KEY"] == REDACTED and boot.env["PYTHONPATH"] == "/opt/deployer"
    assert boot.files["/opt/deployer/deployer_vllm_guard.py"] == guard_source()
    assert "/opt/deployer:/opt/deployer:ro" in boot.docker.values("--volume")
    if spec.resources.count > 1:
        assert parsed["flags"]["--tensor-parallel-size"] == str(spec.resources.count)
    assert launch["instance_type_name"] in spec.options("lambda").instance_types


def test_readiness_timeout_is_size_aware(tmp_path):
    provider = _provider(tmp_path)
    small = provider.readiness_timeout(_spec())
    big = provider.readiness_timeout(
        _spec(model={"id": "meta-llama/Llama-3.3-70B-Instruct"}, resources={"gpu": "H100", "count": 8}))
    assert 600 <= small <= 1800  # one GPU boots in ~5 min, plus image and 16 GB of weights
    assert big >= small + 20 * 60  # 8x H100 boots in over 20 min and pulls 140 GB
    assert provider.readiness_timeout(_spec(startup={"readiness_timeout": 77})) == 77


def test_cli_plan_json_shows_requests_and_cloud_config(cli):
    result = cli("plan", "configs/lambda-llama-70b.yaml", "--json", env={"HF_TOKEN": "hf_should_not_show"})
    assert result.code == 0, result
    assert "hf_should_not_show" not in result.out + result.err
    doc = result.json()
    api = openapi()
    calls = {(r["method"], r["url"].split("/api/v1", 1)[1]): r["json"] for r in doc["artifacts"]["requests"]}
    for (method, path), body in calls.items():
        route, _, _ = api.match(method, path)
        assert route is not None and api.request_problems(route, body) == []
    launch = calls[("POST", "/instance-operations/launch")]
    assert launch["file_system_names"] == ["llama-weights"]
    assert launch["instance_type_name"] == "gpu_8x_a100_80gb_sxm4"
    cloud_config = doc["artifacts"]["files"]["lambda/cloud-init.yaml"]
    assert "HF_TOKEN=<redacted>" in cloud_config and "/lambda/nfs/llama-weights/huggingface" in cloud_config
