"""The gateway without a network: its file's validation, the policies' orders, its key, its
metrics read back, its traffic ledger; and the CLI's exit codes for bad input."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployer.errors import InputError
from deployer.gateway import policy
from deployer.gateway.metrics import GatewayMetrics, parse
from deployer.gateway.routes import load_routes
from deployer.gateway.server import client_key, key_path
from deployer.gateway.usage import UsageLedger
from deployer.settings import Settings
from deployer.state import StateStore
from tests.support.engine import REPO

GOOD = """\
name: hybrid
listen: {port: 8811}
routes:
  - model: tiny
    policy: primary-overflow
    backends:
      - deployment: base
        max_in_flight: 4
      - overflow
  - model: spread
    policy: weighted
    backends:
      - {deployment: base, weight: 3}
      - {deployment: overflow}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_a_file_loads_with_defaults_shorthand_and_its_url(tmp_path: Path) -> None:
    config, _ = load_routes(write(tmp_path, GOOD))
    assert config.name == "hybrid" and config.local_url == "http://127.0.0.1:8811/v1"
    assert config.deployments() == ["base", "overflow"]
    tiny = config.route("tiny")
    assert tiny.policy == "primary-overflow" and [b.deployment for b in tiny.backends] == ["base", "overflow"]
    assert tiny.backends[0].max_in_flight == 4 and tiny.backends[1].max_in_flight is None
    assert config.route("spread").backends[0].weight == 3
    assert config.route("missing") is None
    assert config.health.interval == 5 and config.timeouts.first_byte == 300 and config.auth.api_key_env is None
    assert config.model_copy(update={"listen": config.listen.model_copy(update={"host": "0.0.0.0"})}).local_url \
        == "http://127.0.0.1:8811/v1"


BAD = [
    # (what the file says, the exact problem line)
    (GOOD.replace("policy: weighted", "policy: wieghted"),
     ":11: routes.1.policy: Input should be 'primary-overflow', 'failover' or 'weighted'"),
    (GOOD.replace("max_in_flight: 4", "max_inflight: 4"),
     ":8: routes.0.backends.0.max_inflight: unknown key (did you mean 'max_in_flight'?)"),
    (GOOD.replace("listen: {port: 8811}", "listen: {port: 99999}"),
     ":2: listen.port: Input should be less than or equal to 65535"),
    (GOOD.replace("policy: weighted", "policy: failover"),
     ":13: routes.1.backends.0.weight: only policy weighted uses weights (this route's policy is failover)"),
    (GOOD.replace("model: spread", "model: tiny"), ":10: routes.1.model: model 'tiny' is routed twice (also routes.0)"),
    (GOOD.replace("- overflow\n", "- base\n"), ":9: routes.0.backends.1.deployment: 'base' is listed twice in this route"),
    (GOOD.replace("- overflow\n", "- Over_Flow\n"),
     ":9: routes.0.backends.1.deployment: 'Over_Flow' is not a name"),
    (GOOD.replace("routes:", "routs:"), ":3: routs: unknown key (did you mean 'routes'?)"),
    (GOOD + "      - {deployment: base, max_in_flight: 2}\n",
     ":15: routes.1.backends.2.max_in_flight: only policy primary-overflow uses max_in_flight"),
    ("name: x\nroutes: []\n", ":1: name: 'x' is not a name: use 2-32 lowercase letters"),
    ("name: gw\nroutes:\n  - model: m\n    backends: []\n", ":4: routes.0.backends: List should have at least 1 item"),
    ("name: gw\nroutes:\n  - model: m\n    backends: [aa]\n  - model: n\n    policy: primary-overflow\n"
     "    backends: [{deployment: aa, probe: always}]\n  - model: o\n    backends: [{deployment: aa, probe: when-out}]\n",
     ":9: routes.2.backends.0.probe: 'aa' has another probe in an earlier route ('always'); give it once"),
    ("- just a list\n", "a gateway file is a mapping"),
    ("name: gw\nroutes: [\n", "invalid YAML"),
]


@pytest.mark.parametrize(("text", "problem"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_files_name_the_file_line_and_key_path(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_routes(path)
    assert caught.value.exit_code == 2
    message = " ".join(caught.value.message.split())
    assert message.startswith(str(path)) and problem in message, message


def test_the_cli_refuses_bad_input_with_exit_2_and_no_traceback(cli, home: Path, tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace("max_in_flight: 4", "max_inflight: 4"))
    for command in ("run", "check", "status"):
        result = cli("gateway", command, str(bad))
        assert result.code == 2, result
        assert "did you mean 'max_in_flight'?" in result.err and "Traceback" not in result.err + result.out
    as_json = cli("gateway", "check", str(tmp_path / "missing.yaml"), "--json")
    assert as_json.code == 2 and as_json.json()["exit_code"] == 2 and "no such file" in as_json.json()["error"]


def test_deployments_are_checked_against_the_state_when_the_gateway_starts(cli, home: Path, tmp_path: Path) -> None:
    config = write(tmp_path, GOOD.replace("- overflow\n", "- overflw\n"))
    # syntax alone is fine; the names are checked against the state, with a hint from it
    store = StateStore(home)
    store.begin("overflow", "local", "h", {"name": "overflow"}, "creating")
    store.close()
    result = cli("gateway", "run", str(config))
    assert result.code == 2, result
    err = " ".join(result.err.split())
    assert f"{config}:9: routes.0.backends.1.deployment: no deployment named 'overflw' is recorded (did you mean " \
           "'overflow'?)" in err and f"{config}:7: routes.0.backends.0.deployment: no deployment named 'base'" in err
    assert "deployer list" in result.err and "Traceback" not in result.err
    # recorded but without an endpoint yet: a failure (exit 1) that says what to do, before anything listens
    store = StateStore(home)
    store.begin("base", "local", "h", {"name": "base"}, "creating")
    store.close()
    result = cli("gateway", "run", str(write(tmp_path, GOOD)))
    assert result.code == 1 and "backend 'base'" in result.err and "deployer deploy" in result.err, result
    assert not key_path(Settings(home=home), "hybrid").exists()  # nothing is made before the backends resolve
    status = cli("gateway", "status", str(write(tmp_path, GOOD)))
    assert status.code == 1 and "never ran here" in status.err


@dataclass
class Fake:
    name: str
    healthy: bool = True
    in_flight: int = 0
    limit: int = 2

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit


def route_of(policy_name: str, names: list[str], **weights: float):
    from deployer.gateway.routes import Route

    return Route.model_validate({"model": "m", "policy": policy_name, "backends": [
        {"deployment": n, **({"weight": weights[n]} if n in weights else {})} for n in names]})


def test_failover_takes_the_backends_in_rotation_in_order_and_all_of_them_when_none_is() -> None:
    fakes = {n: Fake(n) for n in ("aa", "bb", "cc")}
    route = route_of("failover", ["aa", "bb", "cc"])
    assert [b.name for b in policy.order(route, fakes)[0]] == ["aa", "bb", "cc"]
    fakes["aa"].healthy = False
    assert [b.name for b in policy.order(route, fakes)[0]] == ["bb", "cc"]
    for fake in fakes.values():
        fake.healthy = False
    order, in_rotation = policy.order(route, fakes)
    assert [b.name for b in order] == ["aa", "bb", "cc"] and in_rotation is False


def test_primary_overflow_spills_at_the_limit_and_the_last_takes_the_excess() -> None:
    fakes = {n: Fake(n) for n in ("base", "mid", "over")}
    route = route_of("primary-overflow", ["base", "mid", "over"])
    names = lambda: [b.name for b in policy.order(route, fakes)[0]]  # noqa: E731
    assert names() == ["base", "mid", "over"]
    fakes["base"].in_flight = 2  # at its limit
    assert names() == ["mid", "over", "base"]
    fakes["mid"].in_flight = 5
    fakes["over"].in_flight = 2
    assert names() == ["over", "mid", "base"]  # all full: the overflow tier first, then back up the list
    fakes["base"].in_flight = 1
    fakes["mid"].healthy = False
    assert names() == ["base", "over"]


def test_weighted_order_follows_the_weights() -> None:
    fakes = {n: Fake(n) for n in ("aa", "bb")}
    route = route_of("weighted", ["aa", "bb"], aa=3)
    rng = random.Random(7)
    firsts = [policy.order(route, fakes, rng)[0][0].name for _ in range(4000)]
    assert abs(firsts.count("aa") / 4000 - 0.75) < 0.03
    assert all(len(policy.order(route, fakes, rng)[0]) == 2 for _ in range(10))  # the other one stays as a fallback
    fakes["aa"].healthy = False
    assert [b.name for b in policy.order(route, fakes, rng)[0]] == ["bb"]


def test_the_gateway_key_is_generated_once_0600_apart_from_deployment_keys(home: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = load_routes(write(tmp_path, GOOD))
    settings = Settings(home=home)
    assert client_key(config, settings, create=False) is None
    key = client_key(config, settings, create=True)
    assert key and key.startswith("dpk-") and len(key) > 40
    assert key_path(settings, "hybrid") == home / "keys" / "gateways" / "hybrid.key"
    assert key_path(settings, "hybrid").stat().st_mode & 0o777 == 0o600
    assert client_key(config, settings, create=True) == key
    assert not (home / "keys" / "hybrid.key").exists()
    env_config, _ = load_routes(write(tmp_path, GOOD + "auth: {api_key_env: GW_KEY}\n"))
    monkeypatch.setenv("GW_KEY", "short")
    with pytest.raises(InputError, match="too weak"):
        client_key(env_config, settings, create=True)
    monkeypatch.setenv("GW_KEY", "a-long-enough-gateway-key")
    assert client_key(env_config, settings, create=True) == "a-long-enough-gateway-key"


def test_metrics_read_back_as_the_status_rows() -> None:
    metrics = GatewayMetrics()
    metrics.backend("base", "lambda", 4, True)
    metrics.backend("over", "runpod", 32, False)
    for seconds in (0.02, 0.04, 0.3, 0.3, 2.0):
        metrics.requests.labels("tiny", "base", "lambda").inc()
        metrics.latency.labels("tiny", "base", "lambda").observe(seconds)
    metrics.errors.labels("tiny", "over", "runpod", "connect").inc(2)
    metrics.in_flight.labels("base", "lambda").inc(3)
    metrics.responses.labels("tiny", "200").inc(5)
    text = metrics.render().decode()
    assert "_created" not in text
    doc = parse(text)
    rows = {r["backend"]: r for r in doc["backends"]}
    base, over = rows["base"], rows["over"]
    assert (base["provider"], base["healthy"], base["in_flight"], base["limit"], base["requests"]) == \
        ("lambda", True, 3, 4, 5)
    assert base["models"] == ["tiny"] and abs(base["seconds"] - 2.66) < 1e-9
    assert 0.25 < base["p50_s"] <= 0.5 and 1.0 < base["p99_s"] <= 2.5  # interpolated within the buckets
    assert (over["healthy"], over["limit"], over["errors"], over["p50_s"]) == (False, 32, {"connect": 2}, None)
    assert doc["responses"] == {"tiny": {"200": 5}}


def test_the_ledger_adds_per_minute_and_flushes_to_the_state(home: Path) -> None:
    ledger = UsageLedger("hybrid", home)
    now = 1_800_000_000.0
    ledger.add("base", "lambda", 1.5, error=False, now=now)
    ledger.add("base", "lambda", 0.5, error=True, now=now + 10)
    ledger.add("over", "runpod", 2.0, error=False, now=now + 70)
    assert ledger.flush() == 2  # base's two attempts share a minute: one row
    assert ledger.flush() == 0
    ledger.add("base", "lambda", 1.0, error=False, now=now + 20)
    ledger.flush()
    store = StateStore(home)
    rows = {r["deployment"]: r for r in store.gateway_traffic(since=0)}
    store.close()
    assert (rows["base"]["requests"], rows["base"]["errors"], rows["base"]["seconds"]) == (3, 1, 3.0)
    assert rows["over"]["requests"] == 1 and rows["over"]["gateway"] == "hybrid"


def test_help_and_plan_do_not_import_the_serving_stack(home: Path) -> None:
    code = (
        "import sys\nfrom deployer.cli import main\nsys.argv = ['deployer'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('starlette', 'uvicorn', 'prometheus_client', 'aiohttp')\n"
        "print(','.join(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    for args in (["--help"], ["gateway", "--help"], ["plan", str(REPO / "configs" / "local-tiny.yaml")]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "DEPLOYER_HOME": str(home)}, timeout=60)
        assert proc.stderr.strip().splitlines()[-1:] in ([], [""]), (args, proc.stderr[-500:])
