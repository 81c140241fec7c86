"""The Lambda adapter against the emulated Lambda Cloud (stub engine in the VMs): deploy, chat,
status, redeploy, destroy; capacity failover; readiness failures; lost answers; firewall.

Every test runs with the emulator's strict rate limits on, at a 10x faster clock with the
adapter's limiter scaled the same way: the fixture fails any test that provoked a 429 or sent
anything outside Lambda's OpenAPI document.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from deployer.client import wait_ready
from deployer.errors import MissingCredentialsError, NotReadyError, ProviderError
from deployer.provider import Deployment, Resource
from deployer.spec import validate_spec
from tests.emulators.lambda_cloud.fixture import ENDPOINT_KEY, lambda_cloud  # noqa: F401  (fixture)

LAUNCH = ("POST", "/instance-operations/launch")


class Recorded:
    """The `record` callback, keeping what a state store would."""

    def __init__(self) -> None:
        self.resources: list[Resource] = []

    def __call__(self, kind: str, id: str, **extra: object) -> None:
        if not any(r.kind == kind and r.id == id for r in self.resources):
            self.resources.append(Resource(kind, id, dict(extra)))

    def deployment(self, spec) -> Deployment:
        return Deployment(name=spec.name, provider="lambda", spec=spec, resources=list(self.resources))

    def ids(self, kind: str) -> list[str]:
        return [r.id for r in self.resources if r.kind == kind]


def launches(bed) -> list:
    return bed.emulator.calls_to(*LAUNCH)


def assert_nothing_left(bed) -> None:
    assert bed.cloud.live() == []
    assert bed.cloud.rulesets == {}


def test_deploy_chat_status_redeploy_destroy(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    spec = bed.spec("chat")
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(hf_token="hf_test_token"), None, record)
    (instance_id,) = record.ids("instance")
    deployment = record.deployment(spec)
    wait_ready(endpoint, timeout=30, probe=lambda: provider.probe(deployment))

    client = openai.OpenAI(base_url=endpoint.url, api_key=ENDPOINT_KEY)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=endpoint.url, api_key="wrong-key").models.list()

    # what Lambda received: one named, tagged, firewalled instance that boots vLLM
    (call,) = launches(bed)
    assert call.body["name"] == "dplr-chat" and call.body["ssh_key_names"][0].startswith("deployer-")
    assert {"key": "deployer-name", "value": "chat"} in call.body["tags"]
    assert call.body["firewall_rulesets"] == [{"id": record.ids("firewall-ruleset")[0]}]
    assert call.body["user_data"].count(ENDPOINT_KEY) == 1  # in the 0600 env file, never on a command line
    vm = bed.cloud.instances[instance_id].vm
    assert "--api-key" not in vm.plan.docker.serve_args and "--middleware" in vm.plan.docker.serve_args
    assert vm.plan.env == {"VLLM_API_KEY": ENDPOINT_KEY, "HF_TOKEN": "hf_test_token", "PYTHONPATH": "/opt/deployer"}
    assert vm.problems == [] and vm.plan.notes == []

    report = provider.status(deployment)
    assert report.state == "ready"
    assert report.details["instance_state"] == "active" and report.details["url"] == endpoint.url
    assert report.details["type"] == "gpu_1x_h100_sxm5" and report.details["region"] == "us-south-2"
    assert report.details["price_per_hour"] == "$3.29" and report.details["ip"] in endpoint.url
    token = bed.cloud.instances[instance_id].jupyter_token
    assert token not in repr(report) + repr(record.resources) + repr(provider.list_owned())

    # a reboot of the VM: the container's restart policy brings vLLM back
    restarted = httpx.post(bed.emulator.base_url + "/instance-operations/restart",
                           json={"instance_ids": [instance_id]}, auth=(bed.emulator.api_key, ""))
    assert restarted.status_code == 200
    wait_ready(endpoint, timeout=30)
    # logs are read over SSH with deployer's key; the emulated VM has no SSH server
    lines = provider.logs(deployment)
    assert next(lines).startswith(f"# instance {instance_id}: active")
    with pytest.raises(ProviderError, match=r"ssh ubuntu@127\.[\d.]+ failed"):
        list(lines)

    # the same spec again (a new process, state lost): the instance is found by name, nothing launched
    again = Recorded()
    assert bed.provider().apply(spec, bed.secrets(hf_token="hf_test_token"), None, again).url == endpoint.url
    assert again.ids("instance") == [instance_id] and len(launches(bed)) == 1
    owned = provider.list_owned()
    assert {(o.kind, o.deployment) for o in owned} == {("instance", "chat"), ("firewall-ruleset", "chat")}

    provider.destroy(deployment)
    assert_nothing_left(bed)
    assert provider.status(deployment).state == "gone"
    provider.destroy(deployment)  # idempotent
    assert bed.cloud.ssh_keys  # the key is shared and kept


def test_changed_spec_replaces_the_vm_and_filesystem_holds_the_cache(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    spec = bed.spec("fs", filesystem="hfcache")
    provider, record = bed.provider(), Recorded()
    provider.apply(spec, bed.secrets(), None, record)
    first = record.ids("instance")[0]
    (fs,) = bed.cloud.filesystems.values()
    assert fs["name"] == "hfcache" and record.ids("filesystem") == [fs["id"]]
    vm = bed.cloud.instances[first].vm
    assert "/lambda/nfs/hfcache/huggingface:/root/.cache/huggingface" in vm.plan.docker.values("--volume")
    assert vm.plan.notes == []

    changed = bed.spec("fs", filesystem="hfcache", port=spec.options("lambda").port)
    changed = changed.model_copy(update={"model": changed.model.model_copy(update={"max_model_len": 128})})
    endpoint = provider.apply(changed, bed.secrets(), record.deployment(spec), record)
    second = record.ids("instance")[-1]
    assert second != first and [i.id for i in bed.cloud.live()] == [second]
    assert "--max-model-len 128" in " ".join(bed.cloud.instances[second].vm.plan.docker.serve_args)
    assert len(bed.cloud.rulesets) == 1  # reused, not duplicated
    wait_ready(endpoint, timeout=30)

    provider.destroy(record.deployment(changed))
    assert_nothing_left(bed)
    assert list(bed.cloud.filesystems) == [fs["id"]]  # the weight cache is kept


def test_capacity_failover_across_regions(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    bed.cloud.set_phantom("gpu_1x_h100_sxm5", "us-south-2")  # listed, yet full
    spec = bed.spec("failover", regions=["us-south-2", "us-south-3"])
    provider, record = bed.provider(), Recorded()
    provider.apply(spec, bed.secrets(), None, record)
    tried = [(c.body["region_name"], c.status) for c in launches(bed)]
    assert tried == [("us-south-2", 400), ("us-south-3", 200)]
    (instance,) = bed.cloud.live()
    assert instance.region == "us-south-3"
    assert [r["region"] for r in bed.cloud.rulesets.values()] == ["us-south-3"]  # the unused one is gone
    first, second = launches(bed)
    assert second.at - first.at >= 1.2 * 0.99  # the launch limit was respected
    provider.destroy(record.deployment(spec))
    assert_nothing_left(bed)


def test_every_candidate_full_is_reported(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    for type_name, region in [("gpu_1x_h100_sxm5", "us-south-2"), ("gpu_1x_h100_sxm5", "us-south-3"),
                              ("gpu_1x_h100_pcie", "us-west-3")]:
        bed.cloud.set_phantom(type_name, region)
    bed.cloud.set_capacity("gpu_1x_h100_pcie", ["us-west-3"])
    spec = bed.spec("full")
    with pytest.raises(ProviderError) as caught:
        bed.provider().apply(spec, bed.secrets(), None, Recorded())
    message = str(caught.value)
    for candidate in ("gpu_1x_h100_sxm5 in us-south-2", "gpu_1x_h100_sxm5 in us-south-3",
                      "gpu_1x_h100_pcie in us-west-3"):
        assert candidate in message
    assert caught.value.code == "instance-operations/launch/insufficient-capacity"
    assert_nothing_left(bed)


def test_no_listed_capacity_fails_before_launching(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    spec = bed.spec("nocap", regions=["us-east-1"])
    with pytest.raises(ProviderError, match="no allowed instance type lists capacity") as caught:
        bed.provider().apply(spec, bed.secrets(), None, Recorded())
    assert "gpu_1x_h100_sxm5: no capacity in us-east-1" in str(caught.value)
    assert launches(bed) == [] and bed.cloud.rulesets == {}


def test_readiness_timeout_terminates(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    bed.cloud.engine_env["STUB_ENGINE_STARTUP_S"] = "600"  # the server never answers
    data = bed.spec_data("hang")
    data["startup"]["readiness_timeout"] = 2
    spec = validate_spec(data)
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(), None, record)
    deployment = record.deployment(spec)
    with pytest.raises(NotReadyError) as caught:
        wait_ready(endpoint, timeout=provider.readiness_timeout(spec), probe=lambda: provider.probe(deployment))
    message = provider.not_ready(deployment, caught.value.message)
    assert "terminated the instance" in message and record.ids("instance")[0] in message
    assert_nothing_left(bed)


def test_unhealthy_instance_ends_the_wait(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    bed.cloud.engine_env["STUB_ENGINE_STARTUP_S"] = "600"
    spec = bed.spec("sick")
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(), None, record)
    bed.cloud.set_status(record.ids("instance")[0], "unhealthy")
    deployment = record.deployment(spec)
    with pytest.raises(NotReadyError, match="is unhealthy"):
        wait_ready(endpoint, timeout=20, probe=lambda: provider.probe(deployment))
    assert provider.status(deployment).state == "failed"
    provider.destroy(deployment)
    assert_nothing_left(bed)


def test_lost_launch_answer_never_makes_two_vms(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    bed.emulator.inject("GET", "/instance-types", 503)  # retried
    bed.emulator.inject(*LAUNCH, 500, after=True)  # launched, but the answer is an error
    spec = bed.spec("lost")
    provider, record = bed.provider(), Recorded()
    provider.apply(spec, bed.secrets(), None, record)
    assert [c.status for c in launches(bed)] == [500]
    assert [i.id for i in bed.cloud.live()] == record.ids("instance")
    provider.destroy(record.deployment(spec))
    assert_nothing_left(bed)


def test_firewall_opens_the_port_only_to_allowed_networks(lambda_cloud):  # noqa: F811
    bed = lambda_cloud
    spec = bed.spec("walled", allowed_cidrs=["203.0.113.0/24"])  # the test client is not in it
    provider, record = bed.provider(), Recorded()
    endpoint = provider.apply(spec, bed.secrets(), None, record)
    vm = bed.cloud.instances[record.ids("instance")[0]].vm
    assert any("firewall does not open" in p for p in vm.problems)
    with pytest.raises(httpx.ConnectError):
        httpx.get(endpoint.url + "/models", timeout=2)
    provider.destroy(record.deployment(spec))
    assert_nothing_left(bed)


def test_cli_deploy_chat_redeploy_status_destroy(lambda_cloud, cli, tmp_path):  # noqa: F811
    bed = lambda_cloud
    config = tmp_path / "lambda-tiny.yaml"
    config.write_text(json.dumps(bed.spec_data("clitiny")))  # JSON is YAML
    deployed = cli("deploy", str(config), "--json", env=bed.env)
    assert deployed.code == 0, deployed
    doc = deployed.json()
    assert doc["url"].endswith("/v1") and doc["status"] == "ready"
    assert {r["kind"] for r in doc["resources"]} == {"instance", "firewall-ruleset"}
    reply = openai.OpenAI(base_url=doc["url"], api_key=ENDPOINT_KEY).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=3)
    assert reply.choices[0].message.content

    again = cli("deploy", str(config), "--json", env=bed.env)
    assert again.code == 0 and again.json()["action"] == "unchanged", again
    assert len(launches(bed)) == 1
    status = cli("status", "clitiny", "--json", env=bed.env)
    assert status.code == 0, status
    (row,) = status.json()
    assert row["state"] == "ready" and row["details"]["type"] == "gpu_1x_h100_sxm5"
    everything = deployed.out + deployed.err + again.out + status.out + status.err
    assert ENDPOINT_KEY not in everything
    assert bed.cloud.live()[0].jupyter_token not in everything

    destroyed = cli("destroy", "clitiny", "--json", env=bed.env)
    assert destroyed.code == 0 and destroyed.json()["status"] == "destroyed", destroyed
    assert_nothing_left(bed)


def test_wrong_or_missing_api_key_is_reported_in_lambdas_terms(lambda_cloud, monkeypatch):  # noqa: F811
    bed = lambda_cloud
    monkeypatch.setenv("LAMBDA_API_KEY", "not-the-key")
    with pytest.raises(ProviderError) as caught:
        bed.provider().apply(bed.spec("badkey"), bed.secrets(), None, Recorded())
    assert caught.value.code == "global/invalid-api-key" and caught.value.status == 401
    assert "Check your API key" in caught.value.hint and "LAMBDA_API_KEY" in caught.value.hint
    monkeypatch.delenv("LAMBDA_API_KEY")
    provider = bed.provider()
    assert not provider.has_credentials()
    with pytest.raises(MissingCredentialsError, match="no Lambda Cloud API key"):
        provider.apply(bed.spec("nokey"), bed.secrets(), None, Recorded())
