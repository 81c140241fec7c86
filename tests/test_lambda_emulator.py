"""The Lambda emulator itself, spoken to over raw HTTP: the envelope, error codes and statuses
of Lambda's OpenAPI document, the lifecycle, and the limits the adapter tests rely on (so a
check of the adapter against it can fail)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.emulators.lambda_cloud.fixture import lambda_cloud  # noqa: F401  (fixture)


@pytest.fixture
def http(lambda_cloud):  # noqa: F811
    """A raw client; rate limits are off unless a test turns them back on."""
    lambda_cloud.emulator.strict_limits = None
    with httpx.Client(base_url=lambda_cloud.emulator.base_url,
                      headers={"Authorization": f"Bearer {lambda_cloud.emulator.api_key}"}) as client:
        yield client


def test_auth_and_envelope(lambda_cloud, http):  # noqa: F811
    bad = httpx.get(lambda_cloud.emulator.base_url + "/instances", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "global/invalid-api-key"
    basic = httpx.get(lambda_cloud.emulator.base_url + "/instances", auth=(lambda_cloud.emulator.api_key, ""))
    assert basic.status_code == 200 and basic.json() == {"data": []}
    types = http.request("GET", "/instance-types").json()["data"]
    assert types["gpu_1x_h100_sxm5"]["instance_type"]["price_cents_per_hour"] == 329
    assert [r["name"] for r in types["gpu_1x_h100_sxm5"]["regions_with_capacity_available"]] == ["us-south-2", "us-south-3"]
    missing = http.request("GET", "/instances/0123")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "global/object-does-not-exist"


def test_burst_gets_429_in_strict_mode(lambda_cloud, http):  # noqa: F811
    """The negative control for "the adapter never causes a 429": an unpaced client does."""
    lambda_cloud.emulator.strict_limits = (0.1, 1.2)
    statuses = [http.get("/regions").status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses
    time.sleep(0.5)  # the burst window passes
    launch = {"region_name": "us-south-3", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["none"]}
    first = http.post("/instance-operations/launch", json=launch)
    time.sleep(0.15)  # fine for the overall rate, too soon for a second launch
    second = http.post("/instance-operations/launch", json=launch)
    assert first.status_code == 404 and second.status_code == 429
    assert lambda_cloud.emulator.too_many >= 2
    lambda_cloud.emulator.too_many = 0  # expected here; the fixture fails on any other 429


def test_launch_validation_and_lifecycle(lambda_cloud, http):  # noqa: F811
    emu = lambda_cloud.emulator
    assert http.request("POST", "/ssh-keys", json={"name": "k1", "public_key": "ssh-ed25519 AAAAC3Nz k"}).status_code == 200
    base = {"region_name": "us-south-3", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k1"],
            "name": "dplr-emu", "user_data": "#cloud-config\nruncmd: []\n"}
    two_keys = http.request("POST", "/instance-operations/launch", json={**base, "ssh_key_names": ["k1", "k2"]})
    assert two_keys.status_code == 400 and two_keys.json()["error"]["code"] == "global/invalid-parameters"
    quantity = http.request("POST", "/instance-operations/launch", json={**base, "quantity": 2})
    assert quantity.status_code == 400 and "quantity" in quantity.json()["error"]["message"]
    assert any("quantity" in v for v in emu.violations)
    emu.violations.clear()  # provoked on purpose
    no_capacity = http.request("POST", "/instance-operations/launch", json={**base, "region_name": "us-east-1"})
    assert no_capacity.status_code == 400
    assert no_capacity.json()["error"]["code"] == "instance-operations/launch/insufficient-capacity"
    launched = http.request("POST", "/instance-operations/launch", json=base)
    assert launched.status_code == 200
    (instance_id,) = launched.json()["data"]["instance_ids"]
    booting = http.request("GET", f"/instances/{instance_id}").json()["data"]
    assert booting["status"] == "booting" and "ip" not in booting and "user_data" not in booting
    deadline = time.monotonic() + 5
    while (body := http.request("GET", f"/instances/{instance_id}").json()["data"])["status"] == "booting":
        assert time.monotonic() < deadline
    assert body["status"] == "active" and body["ip"].startswith("127.")
    # the VM found no docker run in that user_data: nothing serves
    assert "expected exactly one `docker run`" in " ".join(emu.cloud.instances[instance_id].vm.problems)
    gone = http.request("POST", "/instance-operations/terminate", json={"instance_ids": [instance_id]})
    assert gone.json()["data"]["terminated_instances"][0]["status"] == "terminating"
    deadline = time.monotonic() + 5
    while http.request("GET", f"/instances/{instance_id}").status_code == 200:
        assert time.monotonic() < deadline
    again = http.request("POST", "/instance-operations/terminate", json={"instance_ids": [instance_id]})
    assert again.status_code == 404


def test_ruleset_in_use_until_terminated(lambda_cloud, http):  # noqa: F811
    emu = lambda_cloud.emulator
    http.request("POST", "/ssh-keys", json={"name": "k1", "public_key": "ssh-ed25519 AAAAC3Nz k"})
    rule = {"protocol": "tcp", "port_range": [8000, 8000], "source_network": "10.1.2.3", "description": "x"}
    bad = http.request("POST", "/firewall-rulesets", json={"name": "r", "region": "us-south-3",
                                                          "rules": [{**rule, "source_network": "nonsense"}]})
    assert bad.status_code == 400
    emu.violations.clear()  # provoked on purpose (format ipv4network)
    created = http.request("POST", "/firewall-rulesets", json={"name": "r", "region": "us-south-3", "rules": [rule]})
    ruleset = created.json()["data"]
    assert ruleset["rules"][0]["source_network"] == "10.1.2.3/32" and ruleset["instance_ids"] == []
    wrong_region = http.request("POST", "/instance-operations/launch", json={
        "region_name": "us-south-2", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k1"],
        "firewall_rulesets": [{"id": ruleset["id"]}]})
    assert wrong_region.status_code == 400
    launched = http.request("POST", "/instance-operations/launch", json={
        "region_name": "us-south-3", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k1"],
        "firewall_rulesets": [{"id": ruleset["id"]}]}).json()["data"]["instance_ids"][0]
    in_use = http.request("DELETE", f"/firewall-rulesets/{ruleset['id']}")
    assert in_use.status_code == 400 and in_use.json()["error"]["code"] == "firewall-rulesets/firewall-ruleset-in-use"
    http.request("POST", "/instance-operations/terminate", json={"instance_ids": [launched]})
    time.sleep(0.2)
    assert http.request("DELETE", f"/firewall-rulesets/{ruleset['id']}").status_code == 200
    assert http.request("GET", f"/firewall-rulesets/{ruleset['id']}").status_code == 404
