"""The state of one emulated Lambda account and the behaviour behind each API operation.

Operations take and return plain JSON-like data (the `data` of Lambda's envelope) and raise
`ApiError` with Lambda's status, code, message and suggestion. A background ticker moves
instances through their lifecycle on a clock the tests speed up (`speed`: emulated seconds per
real second): booting (no ip) -> active (the VM boots its user_data) -> terminating ->
terminated -> gone (404). `unhealthy` and `preempted` happen on demand.

Seeded from the real `GET /instance-types` capture (2025-11): types, prices and the regions
listing capacity, all adjustable per type and region.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.engine import CONTRACTS

from .vm import EmulatedVm

CAPTURE = CONTRACTS / "lambda" / "instance-types-response-2025-11.json"
MAX_USER_DATA = 1_000_000
EXTRA_REGIONS = {"us-south-1": "Texas, USA"}
FIREWALL_FREE_REGIONS = {"us-south-1"}  # Lambda applies no firewall rules there
DEFAULT_GLOBAL_RULES = [
    {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "SSH"},
    {"protocol": "icmp", "source_network": "0.0.0.0/0", "description": "ICMP"},
]
CLIENT_IP = ipaddress.IPv4Address("127.0.0.1")  # where the tests' requests come from

# Emulated seconds (scaled by `speed`): one GPU boots in about 5 minutes, 8x in over 20.
BOOT_SECONDS = {1: 300, 2: 420, 4: 600, 8: 1260}
TERMINATE_SECONDS = 30
GONE_AFTER_SECONDS = 120  # a terminated instance is listed this long, then 404


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, suggestion: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.suggestion = status, code, message, suggestion

    def body(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message}
        if self.suggestion is not None:
            error["suggestion"] = self.suggestion
        return {"error": error}


def invalid(message: str, suggestion: str | None = None) -> ApiError:
    return ApiError(400, "global/invalid-parameters", message, suggestion)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Instance:
    id: str
    name: str | None
    hostname: str | None
    region: str
    type_name: str
    ssh_key_names: list[str]
    file_systems: list[dict[str, str]]  # [{"name", "id", "mount_point"}]
    tags: list[dict[str, str]]
    ruleset_ids: list[str]
    user_data: str | None  # kept, never returned
    ip: str
    private_ip: str
    status: str = "booting"
    due: float = 0.0  # real monotonic time of the next lifecycle step
    jupyter_token: str = field(default_factory=lambda: secrets.token_hex(16))
    vm: EmulatedVm | None = None


class LambdaCloud:
    """One account. Thread-safe: every public method takes the lock."""

    def __init__(self, workdir: Path, *, speed: float = 1000.0, real_engine: bool | None = None,
                 engine_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.speed = speed
        self.real_engine = real_engine
        self.engine_env = dict(engine_env or {})
        self.lock = threading.RLock()
        capture = json.loads(CAPTURE.read_text())["data"]
        self.types: dict[str, dict[str, Any]] = {name: item["instance_type"] for name, item in capture.items()}
        self.regions: dict[str, str] = dict(EXTRA_REGIONS)
        self.capacity: dict[str, list[str]] = {}
        for name, item in capture.items():
            self.capacity[name] = [r["name"] for r in item["regions_with_capacity_available"]]
            for region in item["regions_with_capacity_available"]:
                self.regions[region["name"]] = region["description"]
        self.phantom: set[tuple[str, str]] = set()  # listed with capacity, yet launch says insufficient
        self.terminate_seconds: float = TERMINATE_SECONDS  # emulated; raise it for a termination that lags
        self.max_instances: int | None = None
        self.instances: dict[str, Instance] = {}
        self.ssh_keys: dict[str, dict[str, str]] = {}
        self.rulesets: dict[str, dict[str, Any]] = {}
        self.global_rules: list[dict[str, Any]] = [dict(r) for r in DEFAULT_GLOBAL_RULES]
        self.filesystems: dict[str, dict[str, Any]] = {}
        self.images = self._seed_images()
        self._net = random.randint(64, 200)  # 127.<net>.x.y: VM IPs unlikely to clash with others'
        self._next_host = 2
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="lambda-emulator-clock", daemon=True)

    # -- clock ----------------------------------------------------------------------------

    def after(self, emulated_seconds: float) -> float:
        return time.monotonic() + emulated_seconds / self.speed

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(5)
        with self.lock:
            for inst in self.instances.values():
                if inst.vm is not None:
                    inst.vm.stop()

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.02):
            self.tick()

    def tick(self) -> None:
        """Advance every instance whose next lifecycle step is due."""
        with self.lock:
            now = time.monotonic()
            for inst in list(self.instances.values()):
                if inst.status == "booting" and now >= inst.due:
                    self._activate(inst)
                elif inst.status == "terminating" and now >= inst.due:
                    inst.status = "terminated"
                    inst.due = self.after(GONE_AFTER_SECONDS)
                elif inst.status == "terminated" and now >= inst.due:
                    del self.instances[inst.id]
                elif inst.status == "active" and inst.vm is not None:
                    inst.vm.tick(now)

    def _activate(self, inst: Instance) -> None:
        inst.status = "active"
        inst.vm = EmulatedVm(inst.ip, self.workdir / "vms" / inst.id, real_engine=self.real_engine,
                             extra_env=self.engine_env)
        if inst.user_data:
            mounts = {fs["name"]: fs["mount_point"] for fs in inst.file_systems}
            inst.vm.boot(inst.user_data, mounts=mounts, port_open=lambda port: self._port_open(inst, port))
        else:
            inst.vm.problems.append("no user_data: nothing starts vLLM")

    def _port_open(self, inst: Instance, port: int) -> bool:
        if inst.region in FIREWALL_FREE_REGIONS:
            return True
        rules = [r for rid in inst.ruleset_ids for r in self.rulesets[rid]["rules"]] if inst.ruleset_ids \
            else self.global_rules
        for rule in rules:
            if rule["protocol"] not in ("tcp", "all"):
                continue
            low, high = rule.get("port_range", [1, 65535])
            if low <= port <= high and CLIENT_IP in ipaddress.IPv4Network(rule["source_network"], strict=False):
                return True
        return False

    # -- faults and inspection for tests --------------------------------------------------

    def set_capacity(self, type_name: str, regions: list[str]) -> None:
        with self.lock:
            self.capacity[type_name] = list(regions)

    def set_phantom(self, type_name: str, region: str) -> None:
        """List capacity for (type, region) but answer insufficient-capacity at launch."""
        with self.lock:
            self.phantom.add((type_name, region))
            if region not in self.capacity.setdefault(type_name, []):
                self.capacity[type_name].append(region)

    def set_status(self, instance_id: str, status: str) -> None:
        """Force `unhealthy` or `preempted` (the guest stops serving)."""
        with self.lock:
            inst = self.instances[instance_id]
            inst.status = status
            self._stop_guest(inst)

    def _stop_guest(self, inst: Instance) -> None:
        """Stop the guest's engine without holding up API answers (a real engine takes seconds)."""
        if inst.vm is not None:
            threading.Thread(target=inst.vm.stop, name=f"stop-{inst.id[:8]}", daemon=True).start()

    def live(self) -> list[Instance]:
        """Instances not yet terminated."""
        with self.lock:
            return [i for i in self.instances.values() if i.status != "terminated"]

    def vm_report(self) -> str:
        with self.lock:
            parts = []
            for inst in self.instances.values():
                vm = inst.vm
                if vm is not None:
                    parts.append(f"--- VM {inst.id} ({inst.status}) problems={vm.problems} "
                                 f"notes={vm.plan.notes if vm.plan else None}\n{vm.log()[-3000:]}")
            return "\n".join(parts)

    # -- JSON views -----------------------------------------------------------------------

    def _region(self, name: str) -> dict[str, str]:
        return {"name": name, "description": self.regions[name]}

    def instance_json(self, inst: Instance) -> dict[str, Any]:
        itype = self.types[inst.type_name]
        running = inst.status not in ("booting",)
        action = {"available": running and inst.status == "active"}
        if not action["available"]:
            action = {"available": False, "reason_code": "vm-has-not-launched" if inst.status == "booting"
                      else "vm-is-terminating", "reason_description": f"The instance is {inst.status}."}
        body: dict[str, Any] = {
            "id": inst.id,
            "status": inst.status,
            "ssh_key_names": list(inst.ssh_key_names),
            "file_system_names": [fs["name"] for fs in inst.file_systems],
            "file_system_mounts": [{"mount_point": fs["mount_point"], "file_system_id": fs["id"]}
                                   for fs in inst.file_systems],
            "region": self._region(inst.region),
            "instance_type": itype,
            "jupyter_token": inst.jupyter_token,
            "jupyter_url": f"https://jupyter-{inst.id}.lambdaspaces.com/?token={inst.jupyter_token}",
            "actions": {k: dict(action) for k in ("migrate", "rebuild", "restart", "cold_reboot")}
            | {"terminate": {"available": inst.status not in ("terminating", "terminated")}},
            "tags": [dict(t) for t in inst.tags],
            "firewall_rulesets": [{"id": rid} for rid in inst.ruleset_ids],
        }
        if inst.name is not None:
            body["name"] = inst.name
        if running:
            body["ip"] = inst.ip
            body["private_ip"] = inst.private_ip
            body["hostname"] = inst.hostname or inst.ip.replace(".", "-")
        return body

    def ruleset_json(self, rs: dict[str, Any]) -> dict[str, Any]:
        users = [i.id for i in self.instances.values() if rs["id"] in i.ruleset_ids and i.status != "terminated"]
        return {"id": rs["id"], "name": rs["name"], "region": self._region(rs["region"]),
                "rules": [dict(r) for r in rs["rules"]], "created": rs["created"], "instance_ids": users}

    def filesystem_json(self, fs: dict[str, Any]) -> dict[str, Any]:
        in_use = any(fs["id"] in (f["id"] for f in i.file_systems) for i in self.instances.values()
                     if i.status != "terminated")
        return {"id": fs["id"], "name": fs["name"], "mount_point": fs["mount_point"], "created": fs["created"],
                "created_by": {"id": "user0", "email": "emulator@example.com", "status": "active"},
                "is_in_use": in_use, "region": self._region(fs["region"]), "bytes_used": 0}

    def _seed_images(self) -> list[dict[str, Any]]:
        images = []
        for region in sorted(self.regions):
            for family, version, arch in (("lambda-stack-22-04", "22.04.5", "x86_64"),
                                          ("lambda-stack-22-04", "22.04.5", "arm64"),
                                          ("lambda-stack-24-04", "24.04.1", "x86_64")):
                images.append({
                    "id": _new_id(), "created_time": "2025-06-01T00:00:00+00:00",
                    "updated_time": "2025-10-01T00:00:00+00:00", "name": f"{family}-{arch}",
                    "description": f"Lambda Stack {version} ({arch})", "family": family, "version": version,
                    "architecture": arch, "region": {"name": region, "description": self.regions[region]},
                })
        return images

    # -- operations -----------------------------------------------------------------------

    def list_instance_types(self) -> dict[str, Any]:
        with self.lock:
            return {
                name: {"instance_type": itype,
                       "regions_with_capacity_available": [self._region(r) for r in self.capacity.get(name, [])]}
                for name, itype in self.types.items()
            }

    def list_regions(self) -> list[dict[str, str]]:
        with self.lock:
            return [self._region(name) for name in sorted(self.regions)]

    def list_images(self) -> list[dict[str, Any]]:
        return [dict(i) for i in self.images]

    def list_instances(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.instance_json(i) for i in self.instances.values()]

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        with self.lock:
            return self.instance_json(self._instance(instance_id))

    def _instance(self, instance_id: str) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise ApiError(404, "global/object-does-not-exist", "Specified instance does not exist.")
        return inst

    def rename_instance(self, instance_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            inst = self._instance(instance_id)
            if "name" in body:
                inst.name = body["name"]
            return self.instance_json(inst)

    def launch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            keys = body["ssh_key_names"]
            if len(keys) != 1:
                raise invalid("Exactly one SSH key must be specified.", "Specify one SSH key name.")
            type_name, region = body["instance_type_name"], body["region_name"]
            if type_name not in self.types:
                raise invalid(f"Invalid instance type: {type_name}.", "List instance types with GET /instance-types.")
            if region not in self.regions:
                raise invalid(f"Invalid region: {region}.", "List regions with GET /regions.")
            if keys[0] not in {k["name"] for k in self.ssh_keys.values()}:
                raise ApiError(404, "global/object-does-not-exist", f"SSH key {keys[0]!r} does not exist.",
                               "Add the key with POST /ssh-keys or check its name.")
            file_systems = []
            mount_points = {m["file_system_id"]: m["mount_point"] for m in body.get("file_system_mounts") or []}
            wanted = list(body.get("file_system_names") or [])
            by_id = {fs["id"]: fs for fs in self.filesystems.values()}
            for fs_id in mount_points:
                if fs_id not in by_id:
                    raise ApiError(404, "global/object-does-not-exist", f"Filesystem {fs_id} does not exist.",
                                   "Check the filesystem ID.")
                if by_id[fs_id]["name"] not in wanted:
                    wanted.append(by_id[fs_id]["name"])
            for fs_name in wanted:
                fs = next((f for f in self.filesystems.values() if f["name"] == fs_name), None)
                if fs is None:
                    raise ApiError(404, "global/object-does-not-exist", f"Filesystem {fs_name!r} does not exist.",
                                   "Create it with POST /filesystems or check its name.")
                if fs["region"] != region:
                    raise ApiError(400, "instance-operations/launch/file-system-in-wrong-region",
                                   f"Filesystem {fs_name!r} is in {fs['region']}, not {region}.",
                                   "Launch in the filesystem's region.")
                file_systems.append({"name": fs_name, "id": fs["id"],
                                     "mount_point": mount_points.get(fs["id"], fs["mount_point"])})
            ruleset_ids = [r["id"] for r in body.get("firewall_rulesets") or []]
            for rid in ruleset_ids:
                if rid not in self.rulesets:
                    raise ApiError(404, "global/object-does-not-exist", f"Firewall ruleset {rid} does not exist.",
                                   "Check the firewall ruleset ID.")
                if self.rulesets[rid]["region"] != region:
                    raise invalid(f"Firewall ruleset {rid} is not in {region}.",
                                  "Use firewall rulesets from the instance's region.")
            image = body.get("image")
            if image is not None:
                ok = any(("id" in image and i["id"] == image["id"]) or
                         ("family" in image and i["family"] == image["family"]) for i in self.images
                         if i["region"]["name"] == region)
                if not ok:
                    raise ApiError(404, "global/object-does-not-exist", f"Image {image} does not exist in {region}.",
                                   "List images with GET /images.")
            user_data = body.get("user_data")
            if user_data is not None and len(user_data.encode()) > MAX_USER_DATA:
                raise invalid("user_data exceeds 1MB.", "Shorten the user data.")
            if region not in self.capacity.get(type_name, []) or (type_name, region) in self.phantom:
                raise ApiError(400, "instance-operations/launch/insufficient-capacity",
                               "Not enough capacity to fulfill launch request.",
                               "Choose another instance type or region, or try again later.")
            if self.max_instances is not None and len(self.live()) >= self.max_instances:
                raise ApiError(400, "global/quota-exceeded", "Quota exceeded.", "Contact Support to increase your quota.")
            gpus = self.types[type_name]["specs"]["gpus"]
            host = self._next_host
            self._next_host += 1
            inst = Instance(
                id=_new_id(), name=body.get("name"), hostname=body.get("hostname"), region=region,
                type_name=type_name, ssh_key_names=list(keys), file_systems=file_systems,
                tags=[dict(t) for t in body.get("tags") or []], ruleset_ids=ruleset_ids, user_data=user_data,
                ip=f"127.{self._net}.{host // 250}.{host % 250 + 2}", private_ip=f"10.0.{host // 250}.{host % 250 + 2}",
                due=self.after(BOOT_SECONDS.get(gpus, 600)),
            )
            self.instances[inst.id] = inst
            return {"instance_ids": [inst.id]}

    def terminate(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            targets = [self._instance(i) for i in body["instance_ids"]]  # 404 before acting on any
            for inst in targets:
                if inst.status not in ("terminating", "terminated"):
                    inst.status = "terminating"
                    inst.due = self.after(self.terminate_seconds)
                    self._stop_guest(inst)
            return {"terminated_instances": [self.instance_json(i) for i in targets]}

    def restart(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            targets = [self._instance(i) for i in body["instance_ids"]]
            for inst in targets:
                if inst.status != "active":
                    raise ApiError(409, "global/conflict", f"Instance {inst.id} is {inst.status}.",
                                   "Restart an active instance.")
            for inst in targets:
                if inst.vm is not None:
                    inst.vm.reboot()
            return {"restarted_instances": [self.instance_json(i) for i in targets]}

    # ssh keys

    def list_ssh_keys(self) -> list[dict[str, str]]:
        with self.lock:
            return [{k: v for k, v in key.items() if k != "private_key"} for key in self.ssh_keys.values()]

    def add_ssh_key(self, body: dict[str, Any]) -> dict[str, str]:
        with self.lock:
            if any(k["name"] == body["name"] for k in self.ssh_keys.values()):
                raise invalid(f"An SSH key named {body['name']!r} already exists.", "Choose another name.")
            key = {"id": _new_id(), "name": body["name"]}
            if body.get("public_key"):
                if not body["public_key"].startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-")):
                    raise invalid("Invalid public key.", "Provide an OpenSSH public key.")
                key["public_key"] = body["public_key"]
                self.ssh_keys[key["id"]] = key
                return dict(key)
            key["public_key"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA" + secrets.token_hex(16) + " generated"
            self.ssh_keys[key["id"]] = key
            return {**key, "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nemulated\n-----END OPENSSH PRIVATE KEY-----\n"}

    def delete_ssh_key(self, key_id: str) -> dict[str, Any]:
        with self.lock:
            if self.ssh_keys.pop(key_id, None) is None:
                raise ApiError(404, "global/not-found", "The requested resource was not found.")
            return {}

    # firewall rulesets

    def _check_rules(self, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for rule in rules:
            if rule["protocol"] == "icmp" and "port_range" in rule:
                raise invalid("port_range is not allowed for icmp.")
            if rule["protocol"] != "icmp":
                if "port_range" not in rule:
                    raise invalid("port_range is required for tcp, udp and all.")
                if rule["port_range"][0] > rule["port_range"][1]:
                    raise invalid("port_range must be [min, max].")
            try:
                network = ipaddress.IPv4Network(rule["source_network"], strict=False)
            except ValueError:
                raise invalid(f"Invalid source_network {rule['source_network']!r}.") from None
            out.append({**rule, "source_network": str(network)})
        return out

    def list_rulesets(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.ruleset_json(r) for r in self.rulesets.values()]

    def create_ruleset(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if body["region"] not in self.regions:
                raise invalid(f"Invalid region: {body['region']}.")
            rs = {"id": _new_id(), "name": body["name"], "region": body["region"],
                  "rules": self._check_rules(body["rules"]), "created": _now_iso()}
            self.rulesets[rs["id"]] = rs
            return self.ruleset_json(rs)

    def _ruleset(self, ruleset_id: str) -> dict[str, Any]:
        rs = self.rulesets.get(ruleset_id)
        if rs is None:
            raise ApiError(404, "global/object-does-not-exist",
                           "Firewall ruleset does not exist or you do not have permission to access it.",
                           "Check your firewall ruleset ID and try again.")
        return rs

    def get_ruleset(self, ruleset_id: str) -> dict[str, Any]:
        with self.lock:
            return self.ruleset_json(self._ruleset(ruleset_id))

    def patch_ruleset(self, ruleset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            rs = self._ruleset(ruleset_id)
            if "name" in body:
                rs["name"] = body["name"]
            if "rules" in body:
                rs["rules"] = self._check_rules(body["rules"])
            return self.ruleset_json(rs)

    def delete_ruleset(self, ruleset_id: str) -> dict[str, Any]:
        with self.lock:
            rs = self._ruleset(ruleset_id)
            if self.ruleset_json(rs)["instance_ids"]:
                raise ApiError(400, "firewall-rulesets/firewall-ruleset-in-use",
                               "Firewall ruleset is in use by one or more instances.",
                               "Terminate all instances that are using the ruleset before deleting it.")
            del self.rulesets[ruleset_id]
            return {}

    def get_global_ruleset(self) -> dict[str, Any]:
        with self.lock:
            return {"id": "global", "name": "Global", "rules": [dict(r) for r in self.global_rules]}

    # filesystems

    def list_filesystems(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self.filesystem_json(f) for f in self.filesystems.values()]

    def create_filesystem(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if body["region"] not in self.regions:
                raise invalid(f"Invalid region: {body['region']}.")
            if any(f["name"] == body["name"] for f in self.filesystems.values()):
                raise ApiError(400, "global/duplicate", f"A filesystem named {body['name']!r} already exists.")
            fs = {"id": _new_id(), "name": body["name"], "region": body["region"],
                  "mount_point": f"/lambda/nfs/{body['name']}", "created": _now_iso()}
            self.filesystems[fs["id"]] = fs
            return self.filesystem_json(fs)

    def delete_filesystem(self, fs_id: str) -> dict[str, Any]:
        with self.lock:
            fs = self.filesystems.get(fs_id)
            if fs is None:
                raise ApiError(404, "global/object-does-not-exist", "Filesystem was not found.")
            if self.filesystem_json(fs)["is_in_use"]:
                raise ApiError(400, "filesystems/filesystem-in-use", "Filesystem is in use.",
                               "Terminate the instances using it first.")
            del self.filesystems[fs_id]
            return {"deleted_ids": [fs_id]}
