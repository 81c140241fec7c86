"""The README's hybrid recipe, as written, against the emulators: a Lambda VM baseline and RunPod
serverless overflow deployed with `deployer deploy configs/hybrid-*.yaml`, one gateway in front
(`configs/gateway/hybrid.yaml`), overflow past the baseline's concurrency, the baseline dying,
probes that leave the scaled-to-zero endpoint alone, and `deployer cost` pricing the traffic.
Emulated GPUs run the stub engine (the recipe's engine is exercised in test_gateway_engine.py)."""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import httpx
import pytest
import yaml

from tests.emulators.lambda_cloud.fixture import finish_testbed, start_testbed
from tests.emulators.runpod.fixture import start_runpod  # noqa: F401 - fixture
from tests.support.engine import REPO, free_port
from tests.support.gateway import in_process, start_gateway, stream_chat, streams_at_once

BASE, OVERFLOW = REPO / "configs" / "hybrid-lambda.yaml", REPO / "configs" / "hybrid-runpod.yaml"


def test_the_hybrid_recipe_lambda_baseline_runpod_overflow(cli, home: Path, tmp_path: Path, start_runpod,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_ENGINE_TOKEN_S", "0.05")  # the emulated GPUs' engines stream a token per 50 ms
    runpod = start_runpod()
    bed = start_testbed(tmp_path, monkeypatch)
    monkeypatch.setenv("DEPLOYER_HOME", str(home))
    try:
        with cf.ThreadPoolExecutor(2) as pool:
            deployed = list(pool.map(lambda spec: cli("deploy", str(spec), "--json"), (BASE, OVERFLOW)))
        assert all(d.code == 0 for d in deployed), deployed
        recipe = yaml.safe_load((REPO / "configs" / "gateway" / "hybrid.yaml").read_text())
        recipe["listen"]["port"] = free_port()
        recipe["health"] = {"interval": 0.3}
        config = tmp_path / "hybrid.yaml"
        config.write_text(yaml.safe_dump(recipe))

        check = in_process("gateway", "check", str(config), "--json", env={"DEPLOYER_HOME": str(home)})
        assert check.exit_code == 0, check.output
        backends = {b["backend"]: b for b in json.loads(check.stdout)["routes"][0]["backends"]}
        assert (backends["hybrid-base"]["provider"], backends["hybrid-base"]["limit"], backends["hybrid-base"]["probe"]) \
            == ("lambda", 4, "always")
        # RunPod scaled to zero is probed only while out of rotation: a probe would keep a worker billing
        assert (backends["hybrid-overflow"]["provider"], backends["hybrid-overflow"]["probe"]) == ("runpod", "when-out")

        models_calls = len(runpod.calls("data", "GET", r"/openai/v1/models$"))
        gw = start_gateway(config, home, tmp_path / "gateway.log")
        try:
            results = streams_at_once(gw.url, gw.key, 7, max_tokens=12)
            assert all(r.ok for r in results), [r.error for r in results if not r.ok]
            assert sorted(r.backend for r in results) == ["hybrid-base"] * 4 + ["hybrid-overflow"] * 3
            assert all(len([e for e in r.events if isinstance(e, dict) and e.get("choices")]) == 12 for r in results)

            # the baseline VM's engine dies: the overflow takes everything, clients see nothing but answers
            bed.cloud.live()[0].vm.stop()
            with httpx.Client() as client:
                after = [stream_chat(client, gw.url, gw.key, max_tokens=2) for _ in range(3)]
            assert all(r.ok and r.backend == "hybrid-overflow" for r in after), [(r.backend, r.error) for r in after]
            assert len(runpod.calls("data", "GET", r"/openai/v1/models$")) == models_calls
        finally:
            gw.stop()
        assert "backend hybrid-base (lambda) is out of rotation" in gw.log()

        env = {"DEPLOYER_HOME": str(home)}
        overflow = json.loads(in_process("cost", str(OVERFLOW), "--json", env=env).stdout)["observed"]["providers"]
        assert [(o["provider"], o["option"], o["requests"], o["errors"]) for o in overflow] == \
            [("runpod", "runpod/scale-to-zero", 6, 0)]
        assert 0 < overflow[0]["busy_usd"] < overflow[0]["hour_usd"] and overflow[0]["estimate_hour_usd"] > 0
        base = json.loads(in_process("cost", str(BASE), "--json", env=env).stdout)["observed"]["providers"]
        # Whichever found the dead engine first, a probe round or the next request (which then counts as
        # an error and fails over), the baseline answered its 4 and no client saw the failure
        assert base[0]["provider"] == "lambda" and base[0]["errors"] in (0, 1)
        assert base[0]["requests"] == 4 + base[0]["errors"]
        assert base[0]["hour_usd"] == base[0]["estimate_hour_usd"] > 1  # a VM's hour is its price, used or not
        table = in_process("cost", str(OVERFLOW), env=env)
        assert "observed through deployer gateway, last 60 min" in table.stdout and "runpod/scale-to-zero" in table.stdout

        for name in ("hybrid-base", "hybrid-overflow"):
            assert cli("destroy", name).code == 0
        assert runpod.leftovers() == [] and bed.cloud.live() == []
    finally:
        finish_testbed(bed)
