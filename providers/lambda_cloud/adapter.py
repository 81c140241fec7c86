"""The Lambda Cloud backend: one GPU VM per deployment that boots straight into vLLM.

deploy (`apply`):
  1. Look for an instance named `dplr-<name>` (or tagged `deployer-name=<name>`). One that
     serves this spec (tag `deployer-spec`) is kept; any other is terminated first, since
     Lambda cannot change a running VM's user_data.
  2. Read `GET /instance-types`; the candidates are the allowed (type, region) pairs that list
     capacity now, in preference order.
  3. Find or create the SSH key, and the filesystem when one is configured.
  4. For each candidate: find or create the deployment's firewall ruleset in that region (SSH
     plus the serving port from the allowed CIDRs), launch with the rendered cloud-config as
     user_data, record the id at once. Insufficient capacity moves on to the next candidate.
  5. Wait for the instance's IP; return http://IP:PORT/v1. The core then waits for vLLM.

destroy: terminate, wait until terminated (404 counts), delete the rulesets, verify by scan.
All calls are paced by one process-wide limiter (about 1/s, launches 1 per 12 s).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from pydantic import ValidationError

from deployer.errors import DeployerError, InputError, ProviderError
from deployer.gpus import GPUS
from deployer.keys import existing_key
from deployer.provider import (
    Artifacts, Deployment, Endpoint, Owned, Recorder, Request, Secrets, StatusReport,
    deployment_of, resource_name,
)
from deployer.settings import Settings
from deployer.spec import Spec

from . import bodies, cloud_init, ssh_key
from .api import INSUFFICIENT_CAPACITY, RULESET_IN_USE, Filesystem, Instance, LambdaApi, Ruleset, TypeOffer
from .instance_types import CATALOG_DATE, allowed_types, classify, known_type
from .settings import DEFAULT_API_URL, LambdaSettings, load_settings

T = TypeVar("T")

REGION_PLACEHOLDER = "<region with capacity, chosen at deploy time>"
RULESET_PLACEHOLDER = "<id of the ruleset created above>"
GONE = ("terminated",)
BROKEN = ("unhealthy", "preempted", "terminating", "terminated")
STATE_WORDS = {
    "booting": "starting", "active": "ready", "unhealthy": "failed", "preempted": "failed",
    "terminating": "stopping", "terminated": "gone",
}
FIREWALL_FREE_REGIONS = ("us-south-1",)  # Lambda does not apply firewall rules there


@dataclass(frozen=True)
class Candidate:
    instance_type: str
    region: str
    price_cents_per_hour: int


class Provider:
    name = "lambda"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._api: LambdaApi | None = None
        self._probed: dict[str, tuple[float, str | None]] = {}

    # -- plumbing -------------------------------------------------------------------------

    @cached_property
    def _api_url(self) -> str:
        """The base URL plan shows (environment and .env only; no key file read, no network)."""
        try:
            return LambdaSettings().api_url
        except ValidationError:
            return DEFAULT_API_URL  # a bad pacing value is reported where it matters, at deploy

    def lambda_settings(self) -> LambdaSettings:
        """Credentials and pacing from the environment. Raises InputError for a bad value."""
        try:
            return load_settings()
        except ValidationError as exc:
            raise InputError(f"Lambda settings: {_first_error(exc)}",
                             hint="check the DEPLOYER_LAMBDA_* environment variables") from None

    def api(self) -> LambdaApi:
        """The API client (made on first use; InputError when no API key is configured)."""
        if self._api is None:
            self._api = LambdaApi(self.lambda_settings())
        return self._api

    def has_credentials(self) -> bool:
        return self.lambda_settings().api_key is not None

    def make_cold(self, deployment: Deployment, record: Recorder, timeout: float) -> str:
        """Always refused: a Lambda deployment is a VM that serves until destroyed and never scales
        to zero, so no request ever pays a cold start (the VM's start is paid once per deploy).
        Raises InputError, touching nothing."""
        raise InputError(
            f"{deployment.name} runs on a Lambda VM, which never scales to zero: no request pays a cold start",
            hint=f"run `deployer bench {deployment.name}` without --cold; the VM's start, paid once per deploy, "
                 "is in `deployer cost`",
        )

    # -- render ---------------------------------------------------------------------------

    def render(self, spec: Spec, secrets: Secrets) -> Artifacts:
        """The ruleset and launch requests and the cloud-config, as deploy will send them. Pure.

        Region, ruleset id and the auto SSH key name are decided at deploy time and shown as
        placeholders. Raises InputError when no Lambda instance type fits the spec."""
        opts = spec.options("lambda")
        types = allowed_types(spec)
        usable = [r for r in opts.regions if not (_restricted(spec) and r in FIREWALL_FREE_REGIONS)]
        if opts.regions and not usable:
            raise InputError(
                f"providers.lambda.regions is only {', '.join(opts.regions)}, where Lambda applies no firewall "
                "rules, so allowed_cidrs / ssh_cidrs could not be enforced",
                hint="add a region with firewall rules (e.g. us-east-1), or drop the network restriction",
            )
        region = usable[0] if usable else REGION_PLACEHOLDER
        try:
            user_data = cloud_init.render_user_data(spec, secrets)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        base = self._api_url.rstrip("/")
        launch = bodies.launch_body(
            spec, instance_type=types[0], region=region, ssh_key=opts.ssh_key_name or ssh_key.AUTO_KEY_PLACEHOLDER,
            ruleset_id=RULESET_PLACEHOLDER, user_data=user_data,
        )
        notes = [
            f"instance types, in order: {', '.join(_priced(t) for t in types)}; regions: "
            f"{', '.join(opts.regions) if opts.regions else 'any with capacity'} (prices from the "
            f"{CATALOG_DATE} catalog; deploy reads live capacity and prices and falls over on insufficient capacity)",
            f"the endpoint: http://<instance ip>:{opts.port}/v1, open to {', '.join(opts.allowed_cidrs)}; "
            "vLLM requires the API key",
        ]
        arm = [t for t in types if (known := known_type(t)) is not None and known.arch == "arm64"]
        if arm:
            notes.append(f"{', '.join(arm)} is an arm64 machine: {opts.image} must have an arm64 variant")
        if _restricted(spec):
            notes.append(f"{', '.join(FIREWALL_FREE_REGIONS)} is skipped: Lambda applies no firewall rules there, "
                         "and allowed_cidrs / ssh_cidrs restrict access")
        elif not opts.regions or any(r in FIREWALL_FREE_REGIONS for r in opts.regions):
            notes.append("Lambda applies no firewall rules in us-south-1: there the port is open to all "
                         "(the API key still protects it); set providers.lambda.regions to avoid it")
        if opts.filesystem:
            notes.append(f"filesystem {opts.filesystem} holds the weight cache; it pins the region and is "
                         "kept when the deployment is destroyed")
        return Artifacts(
            files={"lambda/cloud-init.yaml": user_data},
            requests=[
                Request("GET", f"{base}/instance-types"),
                Request("POST", f"{base}/firewall-rulesets", bodies.ruleset_body(spec, region)),
                Request("POST", f"{base}/instance-operations/launch", launch),
            ],
            notes=notes,
        )

    # -- apply ----------------------------------------------------------------------------

    def apply(self, spec: Spec, secrets: Secrets, current: Deployment | None, record: Recorder) -> Endpoint:
        """Launch (or keep) the deployment's VM and return its endpoint once it has an IP.

        Blocks through capacity failover and boot. Records every id as Lambda returns it.
        Raises InputError for a spec no type fits, ProviderError in Lambda's terms (listing
        every candidate tried when none had capacity)."""
        opts = spec.options("lambda")
        types = allowed_types(spec)
        try:
            user_data = cloud_init.render_user_data(spec, secrets)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        api = self.api()
        timeout = self.readiness_timeout(spec)

        kept: Instance | None = None
        for inst in self._live_instances(spec.name):
            record("instance", inst.id, region=inst.region, instance_type=inst.type)
            serves_spec = inst.tags.get(bodies.SPEC_TAG) == spec.fingerprint()
            if kept is None and serves_spec and inst.status in ("booting", "active"):
                kept = inst
            else:  # another spec, or broken: a VM's user_data cannot change, so it goes
                self._terminate_and_wait([inst.id])
        if kept is not None:
            return self._endpoint(spec, secrets, self._wait_for_ip(kept.id, timeout, spec.name))

        offers = api.instance_types()
        candidates = self._candidates(spec, types, offers)
        key_name = self._ssh_key_name(spec)
        if opts.filesystem:
            fs = self._filesystem(opts.filesystem, candidates[0].region, record)
            candidates = [c for c in candidates if c.region == fs.region]
            if not candidates:
                raise ProviderError(
                    "lambda", f"filesystem {fs.name} is in {fs.region}, where none of {', '.join(types)} has capacity now",
                    hint="retry later, or use another filesystem (a filesystem pins the region)",
                )

        rulesets: dict[str, Ruleset] = {}
        tried: list[str] = []
        launched: tuple[str, Candidate] | None = None
        try:
            for cand in candidates:
                if cand.region not in rulesets:
                    rulesets[cand.region] = self._ensure_ruleset(spec, cand.region, record)
                body = bodies.launch_body(
                    spec, instance_type=cand.instance_type, region=cand.region, ssh_key=key_name,
                    ruleset_id=rulesets[cand.region].id, user_data=user_data,
                )
                try:
                    instance_id = self._launch(body, spec.name)
                except ProviderError as exc:
                    if exc.code != INSUFFICIENT_CAPACITY:
                        raise _scrubbed(exc, secrets) from None
                    tried.append(f"{cand.instance_type} in {cand.region}")
                    continue
                record("instance", instance_id, region=cand.region, instance_type=cand.instance_type)
                launched = (instance_id, cand)
                break
        finally:
            used = launched[1].region if launched else None
            self._delete_rulesets([r.id for region, r in rulesets.items() if region != used], quiet=True)
        if launched is None:
            raise ProviderError(
                "lambda", f"no capacity for the deployment: tried {'; '.join(tried)} (insufficient capacity each time)",
                code=INSUFFICIENT_CAPACITY,
                hint="Lambda's capacity changes by the minute: retry later, or allow more types/regions in "
                "providers.lambda.instance_types / providers.lambda.regions",
            )
        return self._endpoint(spec, secrets, self._wait_for_ip(launched[0], timeout, spec.name))

    def _endpoint(self, spec: Spec, secrets: Secrets, inst: Instance) -> Endpoint:
        return Endpoint(
            url=f"http://{inst.ip}:{spec.options('lambda').port}/v1",
            api_key=secrets.api_key,
            model=spec.model.served,
        )

    def _candidates(self, spec: Spec, types: list[str], offers: dict[str, TypeOffer]) -> list[Candidate]:
        """Allowed (type, region) pairs with listed capacity, types first, then regions, in the
        user's order (else Lambda's). Raises ProviderError saying what was missing."""
        opts = spec.options("lambda")
        gpu, count = spec.resources.gpu, spec.resources.count
        need = GPUS[gpu].memory_gb if gpu else 0
        names = list(types)
        if not opts.instance_types:  # types the built-in table lacks but the live catalog offers
            extra = [o for o in offers.values() if o.name not in names and o.gpus == count
                     and classify(o.gpu_description)[0] == gpu]
            names += [o.name for o in sorted(extra, key=lambda o: o.price_cents_per_hour)]
        out: list[Candidate] = []
        problems: list[str] = []
        for name in names:
            offer = offers.get(name)
            if offer is None:
                problems.append(f"{name} is not offered")
                continue
            memory = classify(offer.gpu_description)[1] or 0
            if offer.gpus != count or memory < need:
                problems.append(f"{name} has {offer.gpus}x {offer.gpu_description}, not {count}x {gpu}")
                continue
            regions = [r for r in opts.regions if r in offer.regions] if opts.regions else list(offer.regions)
            unwalled = [r for r in regions if r in FIREWALL_FREE_REGIONS]
            if _restricted(spec) and unwalled:  # the ruleset would not apply: the port would be open to all
                regions = [r for r in regions if r not in unwalled]
                if not regions:
                    problems.append(f"{name}: capacity only in {', '.join(unwalled)}, where Lambda applies no "
                                    "firewall rules (allowed_cidrs / ssh_cidrs restrict access)")
                    continue
            if not regions:
                problems.append(f"{name}: no capacity in {', '.join(opts.regions) or 'any region'}")
            out += [Candidate(name, r, offer.price_cents_per_hour) for r in regions]
        if not out:
            raise ProviderError(
                "lambda", f"no allowed instance type lists capacity now ({'; '.join(problems)})",
                code=INSUFFICIENT_CAPACITY,
                hint="retry later, or allow more regions/types in providers.lambda.regions / instance_types",
            )
        return out

    def _launch(self, body: dict, deployment: str, attempts: int = 5) -> str:
        """Launch once; when the answer is lost (network, 429, 5xx) look the instance up by name
        before trying again, so a lost response never makes two VMs."""
        api = self.api()
        last: ProviderError | None = None
        for attempt in range(attempts):
            try:
                return api.launch(body)
            except ProviderError as exc:
                if exc.status is not None and exc.status < 500 and exc.status != 429:
                    raise
                last = exc
            found = self._live_instances(deployment)
            if found:
                return found[0].id
            if attempt < attempts - 1:
                self._pause(last, attempt, launch=True)
        assert last is not None
        raise last

    def _pause(self, exc: ProviderError, attempt: int, *, launch: bool = False) -> None:
        """Wait before trying a create again. A 429 means the account's limit was reached, and
        other deployer processes share it (each paces only itself): wait the documented interval,
        with jitter so that they do not collide again. Otherwise the retry backoff."""
        settings = self.api().settings
        if exc.status == 429:
            interval = settings.launch_interval if launch else settings.rate_interval * 2 ** attempt
            time.sleep(interval * (1 + random.random() / 2))
        else:
            time.sleep(settings.retry_backoff)

    def _create_once(self, lookup: Callable[[], T | None], create: Callable[[], T]) -> T:
        """`create`, unless `lookup` finds the thing; after a lost answer, look again first. A
        refusal (4xx) is looked up once too: another deployer process may have just made it
        (e.g. the shared SSH key, whose name then "already exists")."""
        found = lookup()
        if found is not None:
            return found
        attempts = 5
        for attempt in range(attempts):
            try:
                return create()
            except ProviderError as exc:
                refused = exc.status is not None and exc.status < 500 and exc.status != 429
                if refused or attempt == attempts - 1:
                    found = lookup()
                    if found is not None:
                        return found
                    raise
                self._pause(exc, attempt)
            found = lookup()
            if found is not None:
                return found
        raise AssertionError("unreachable")

    def _ensure_ruleset(self, spec: Spec, region: str, record: Recorder) -> Ruleset:
        api = self.api()
        name = resource_name(spec.name)
        rules = bodies.firewall_rules(spec)

        def lookup() -> Ruleset | None:
            return next((r for r in api.rulesets() if r.name == name and r.region == region), None)

        ruleset = self._create_once(lookup, lambda: api.create_ruleset(bodies.ruleset_body(spec, region)))
        record("firewall-ruleset", ruleset.id, region=region)
        if not bodies.same_rules(ruleset.rules, rules):
            ruleset = api.update_ruleset_rules(ruleset.id, rules)
        return ruleset

    def _ssh_key_name(self, spec: Spec) -> str:
        """The configured key (which must exist), else deployer's own, uploaded on first use."""
        api = self.api()
        wanted = spec.options("lambda").ssh_key_name
        if wanted:
            keys = api.ssh_keys()
            if not any(k.name == wanted for k in keys):
                raise InputError(
                    f"providers.lambda.ssh_key_name: your Lambda account has no SSH key named {wanted!r}",
                    hint=f"its keys: {', '.join(k.name for k in keys) or 'none'}; or drop ssh_key_name and "
                    "deployer makes one",
                )
            return wanted
        public = ssh_key.local_public_key(self.settings)

        def lookup() -> str | None:
            return next((k.name for k in api.ssh_keys() if ssh_key.same_key(k.public_key, public)), None)

        return self._create_once(lookup, lambda: api.add_ssh_key(ssh_key.auto_key_name(public), public).name)

    def _filesystem(self, name: str, region: str, record: Recorder) -> Filesystem:
        api = self.api()

        def lookup() -> Filesystem | None:
            return next((f for f in api.filesystems() if f.name == name), None)

        found = lookup()
        if found is not None:
            return found
        fs = self._create_once(lookup, lambda: api.create_filesystem(name, region))
        record("filesystem", fs.id, region=fs.region, kept_on_destroy=True)
        return fs

    def _wait_for_ip(self, instance_id: str, timeout: float, deployment: str) -> Instance:
        """Poll until the instance is active with an IP. On a broken instance or timeout, tear
        the deployment down (a VM bills per minute) and raise ProviderError."""
        api = self.api()
        deadline = time.monotonic() + timeout
        while True:
            inst = api.instance(instance_id)
            if inst is None:
                raise ProviderError("lambda", f"instance {instance_id} disappeared while booting",
                                    hint=f"`deployer destroy {deployment}` cleans up the rest")
            if inst.status in BROKEN:
                self._destroy_quietly(deployment)
                raise ProviderError("lambda", f"instance {instance_id} ({inst.type}, {inst.region}) became "
                                    f"{inst.status} while booting; terminated it",
                                    hint="deploy again to get another machine")
            if inst.status == "active" and inst.ip:
                return inst
            if time.monotonic() >= deadline:
                self._destroy_quietly(deployment)
                raise ProviderError("lambda", f"instance {instance_id} ({inst.type}, {inst.region}) had no IP "
                                    f"after {timeout:.0f}s (still {inst.status}); terminated it",
                                    hint="raise startup.readiness_timeout, or retry in another region")
            time.sleep(api.settings.poll_interval)

    # -- readiness ------------------------------------------------------------------------

    def probe_timeout(self) -> float:
        return self.lambda_settings().probe_timeout

    def client_key(self, deployment: Deployment) -> str | None:
        return existing_key(deployment.spec, self.settings)

    def readiness_timeout(self, spec: Spec) -> float:
        """Seconds: boot (1 GPU about 5 min, 8x over 20) + image pull + weights download and load."""
        if spec.startup.readiness_timeout:
            return float(spec.startup.readiness_timeout)
        boot = {1: 420, 2: 600, 4: 900, 8: 1800}[spec.resources.count]
        params = spec.model.params_b or _params_from_id(spec.model.id) or 8.0
        weights_gb = params * (1.0 if spec.model.quantization else 2.0)
        return boot + 300 + weights_gb / 0.2 + 120  # image ~10 GB; weights at ~200 MB/s

    def probe(self, deployment: Deployment) -> str | None:
        """None while the instance may still serve; else why it will not. Asks Lambda at most
        once per DEPLOYER_LAMBDA_PROBE_INTERVAL (the API allows about one call per second)."""
        res = deployment.resource("instance")
        if res is None:
            return None
        now = time.monotonic()
        cached = self._probed.get(res.id)
        if cached and now - cached[0] < self.api().settings.probe_interval:
            return cached[1]
        try:
            inst = self.api().instance(res.id)
        except ProviderError:
            return None  # a control-plane hiccup is no reason to give up on the server
        reason = None
        if inst is None:
            reason = f"instance {res.id} no longer exists"
        elif inst.status in BROKEN:
            reason = f"instance {res.id} ({inst.type}, {inst.region}) is {inst.status}"
        self._probed[res.id] = (now, reason)
        return reason

    def not_ready(self, deployment: Deployment, reason: str) -> str:
        """Tear the VM down (it bills per minute whether vLLM answers or not) and say so."""
        res = deployment.resource("instance")
        seen = ""
        if res is not None:
            try:
                inst = self.api().instance(res.id)
            except ProviderError:
                inst = None
            if inst is not None:
                seen = f"instance {inst.id} ({inst.type}, {inst.region}, {inst.status}, ip {inst.ip or 'none'}): "
        try:
            self.destroy(deployment)
            done = "deployer terminated the instance and removed its firewall ruleset"
        except DeployerError as exc:
            done = f"tearing it down failed ({exc.message}); run `deployer destroy {deployment.name}`"
        return (f"{seen}vLLM did not answer ({reason}); {done}. Common causes: a gated model without "
                "HF_TOKEN, a model too large for the GPUs, or a timeout too short for the download "
                "(startup.readiness_timeout).")

    # -- status / destroy / scan ----------------------------------------------------------

    def status(self, deployment: Deployment) -> StatusReport:
        """The instance's state, IP, type, region and price per hour; `gone` when none exists."""
        res = deployment.resource("instance")
        inst = self.api().instance(res.id) if res is not None else None
        if inst is None or inst.status in GONE:  # a killed update may have launched a newer VM
            live = self._live_instances(deployment.name)
            inst = live[0] if live else None
        if inst is None:
            return StatusReport("gone", {"instance": res.id if res else None})
        port = deployment.spec.options("lambda").port if deployment.spec is not None else None
        return StatusReport(
            STATE_WORDS.get(inst.status, inst.status),
            {
                "instance": inst.id,
                "instance_state": inst.status,
                "ip": inst.ip,
                "type": inst.type,
                "region": inst.region,
                "price_per_hour": f"${inst.price_cents_per_hour / 100:.2f}" if inst.price_cents_per_hour else None,
                "url": f"http://{inst.ip}:{port}/v1" if inst.ip and port else None,
            },
        )

    def destroy(self, deployment: Deployment) -> None:
        """Terminate every instance of the deployment (recorded or found by name/tag), wait for
        `terminated` (404 counts), delete its rulesets, then verify by scan. Idempotent. A
        configured filesystem is kept (it is the weight cache). Raises ProviderError if
        anything remains."""
        api = self.api()
        name = resource_name(deployment.name)
        instance_ids = [r.id for r in deployment.resources if r.kind == "instance"]
        instance_ids += [i.id for i in self._live_instances(deployment.name) if i.id not in instance_ids]
        self._terminate_and_wait(instance_ids)
        ruleset_ids = [r.id for r in deployment.resources if r.kind == "firewall-ruleset"]
        ruleset_ids += [r.id for r in api.rulesets() if r.name == name and r.id not in ruleset_ids]
        self._delete_rulesets(ruleset_ids)
        left = [f"instance {i.id} ({i.status})" for i in self._live_instances(deployment.name)]
        left += [f"firewall ruleset {r.id}" for r in api.rulesets() if r.name == name]
        if left:
            raise ProviderError("lambda", f"after destroy, Lambda still holds {', '.join(left)}",
                                hint="run destroy again in a minute; check https://cloud.lambda.ai/instances")

    def _destroy_quietly(self, deployment: str) -> None:
        """Best-effort teardown of everything named for `deployment` (found by scan)."""
        try:
            self.destroy(Deployment(name=deployment, provider=self.name, spec=None))
        except DeployerError:
            pass  # recorded in state; `deployer destroy` finishes the job

    def _terminate_and_wait(self, instance_ids: list[str], *, quiet: bool = False) -> None:
        api = self.api()
        try:
            for instance_id in instance_ids:
                api.terminate(instance_id)
            deadline = time.monotonic() + api.settings.terminate_timeout
            pending = list(instance_ids)
            while pending:
                pending = [i for i in pending if (inst := api.instance(i)) is not None and inst.status not in GONE]
                if not pending:
                    break
                if time.monotonic() >= deadline:
                    raise ProviderError("lambda", f"instances {', '.join(pending)} were not terminated after "
                                        f"{api.settings.terminate_timeout:.0f}s",
                                        hint="run destroy again; Lambda bills until `terminated`")
                time.sleep(api.settings.poll_interval)
        except DeployerError:
            if not quiet:
                raise

    def _delete_rulesets(self, ruleset_ids: list[str], *, quiet: bool = False) -> None:
        """Delete each ruleset (404 = gone), waiting while a terminating instance still holds it."""
        api = self.api()
        deadline = time.monotonic() + api.settings.terminate_timeout
        try:
            for ruleset_id in ruleset_ids:
                while True:
                    try:
                        api.delete_ruleset(ruleset_id)
                        break
                    except ProviderError as exc:
                        if exc.code != RULESET_IN_USE or time.monotonic() >= deadline:
                            raise
                    time.sleep(api.settings.poll_interval)
        except DeployerError:
            if not quiet:
                raise

    def _live_instances(self, deployment: str) -> list[Instance]:
        """Instances of `deployment` (by name or tag) that are not yet terminated."""
        name = resource_name(deployment)
        return [
            i for i in self.api().instances()
            if (i.name == name or i.tags.get(bodies.NAME_TAG) == deployment) and i.status not in GONE
        ]

    def list_owned(self) -> list[Owned]:
        """Instances and rulesets carrying our prefix or tag (SSH keys and filesystems are shared)."""
        api = self.api()
        owned = [
            Owned("lambda", "instance", i.id, i.tags.get(bodies.NAME_TAG) or deployment_of(i.name),
                  {"status": i.status, "type": i.type, "region": i.region, "ip": i.ip,
                   "price_cents_per_hour": i.price_cents_per_hour})
            for i in api.instances()
            if i.status not in GONE and (deployment_of(i.name) is not None or bodies.NAME_TAG in i.tags)
        ]
        owned += [
            Owned("lambda", "firewall-ruleset", r.id, deployment_of(r.name), {"region": r.region})
            for r in api.rulesets() if deployment_of(r.name) is not None
        ]
        return owned

    def logs(self, deployment: Deployment, follow: bool = False) -> Iterator[str]:
        """The vLLM container's log, read over SSH with deployer's key (Lambda's API has no log
        endpoint). Raises ProviderError when the VM has no IP or SSH fails."""
        report = self.status(deployment)
        ip = report.details.get("ip")
        yield f"# instance {report.details.get('instance')}: {report.details.get('instance_state', report.state)}"
        if not ip:
            raise ProviderError("lambda", "the instance has no IP yet (or is gone): no logs to read")
        if shutil.which("ssh") is None:
            raise ProviderError("lambda", "reading logs needs the ssh client", hint="install OpenSSH")
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=15"]
        if deployment.spec is None or deployment.spec.options("lambda").ssh_key_name is None:
            argv += ["-i", str(ssh_key.key_path(self.settings))]
        argv += [f"ubuntu@{ip}", "sudo", "docker", "logs", "--tail", "200"]
        argv += (["--follow"] if follow else []) + [resource_name(deployment.name)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            yield from (line.rstrip("\n") for line in proc.stdout)
        finally:
            proc.terminate()
            code = proc.wait()
        if code not in (0, -15):
            raise ProviderError("lambda", f"ssh ubuntu@{ip} failed (exit {code})",
                                hint="cloud-init may still be running; try again in a minute")


def _restricted(spec: Spec) -> bool:
    """Whether the spec limits who may reach the VM (then only regions with firewall rules serve)."""
    opts = spec.options("lambda")
    return any("0.0.0.0/0" not in cidrs for cidrs in (opts.allowed_cidrs, opts.ssh_cidrs))


def _scrubbed(exc: ProviderError, secrets: Secrets) -> ProviderError:
    """`exc` with any secret that Lambda's answer might echo from user_data replaced."""
    exc.message, exc.hint = secrets.scrub(exc.message), exc.hint and secrets.scrub(exc.hint)
    exc.args = (exc.message,)
    return exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


def _priced(name: str) -> str:
    known = known_type(name)
    return f"{name} (${known.price_cents_per_hour / 100:.2f}/h)" if known else name


def _params_from_id(model_id: str) -> float | None:
    """Billions of parameters guessed from a model id like `Llama-3.3-70B-Instruct`."""
    found = re.findall(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", model_id)
    return float(found[-1]) if found else None
