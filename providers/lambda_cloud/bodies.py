"""The JSON bodies deployer sends to Lambda, built purely from the spec (plan shows the same ones).

Names: instance and ruleset are both `dplr-<deployment>`; the instance also carries the tags
`deployer-name=<deployment>` and `deployer-spec=<spec fingerprint>`, so a scan finds what the
local state lost and a redeploy recognises an instance that already serves this spec.
"""

from __future__ import annotations

from typing import Any

from deployer.provider import resource_name
from deployer.spec import Spec

NAME_TAG = "deployer-name"
SPEC_TAG = "deployer-spec"


def firewall_rules(spec: Spec) -> list[dict[str, Any]]:
    """SSH from `ssh_cidrs`, the serving port from `allowed_cidrs`; nothing else is opened."""
    opts = spec.options("lambda")
    rules = [
        {"protocol": "tcp", "port_range": [22, 22], "source_network": cidr, "description": "SSH"}
        for cidr in opts.ssh_cidrs
    ]
    rules += [
        {
            "protocol": "tcp",
            "port_range": [opts.port, opts.port],
            "source_network": cidr,
            "description": f"vLLM of deployment {spec.name} (deployer)",
        }
        for cidr in opts.allowed_cidrs
    ]
    return rules


def ruleset_body(spec: Spec, region: str) -> dict[str, Any]:
    """POST /firewall-rulesets: the deployment's own ruleset in `region` (rulesets are regional)."""
    return {"name": resource_name(spec.name), "region": region, "rules": firewall_rules(spec)}


def tags(spec: Spec) -> list[dict[str, str]]:
    return [{"key": NAME_TAG, "value": spec.name}, {"key": SPEC_TAG, "value": spec.fingerprint()}]


def launch_body(
    spec: Spec, *, instance_type: str, region: str, ssh_key: str, ruleset_id: str, user_data: str
) -> dict[str, Any]:
    """POST /instance-operations/launch: one instance, named, tagged, firewalled, booting vLLM."""
    opts = spec.options("lambda")
    name = resource_name(spec.name)
    body: dict[str, Any] = {
        "region_name": region,
        "instance_type_name": instance_type,
        "ssh_key_names": [ssh_key],
        "name": name,
        "hostname": name,
        "tags": tags(spec),
        "firewall_rulesets": [{"id": ruleset_id}],
    }
    if opts.filesystem:
        body["file_system_names"] = [opts.filesystem]
    if opts.os_image_family:
        body["image"] = {"family": opts.os_image_family}
    body["user_data"] = user_data
    return body


def same_rules(a: list[dict[str, Any]] | tuple[dict[str, Any], ...], b: list[dict[str, Any]]) -> bool:
    """Whether two rule lists allow the same traffic (order and descriptions aside)."""

    def key(rule: dict[str, Any]) -> tuple[Any, ...]:
        return (rule.get("protocol"), tuple(rule.get("port_range") or ()), rule.get("source_network"))

    return sorted(map(key, a)) == sorted(map(key, b))
