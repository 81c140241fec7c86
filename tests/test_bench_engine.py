"""`deployer bench` against the real vLLM: the local tiny model (warm run, then `--cold`, which
restarts the server, then `cost --measured`), and a RunPod emulator worker running vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployer.state import StateStore
from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.fixture import start_runpod, tiny_spec  # noqa: F401
from tests.support.engine import REPO


def plausible(doc: dict, requests: int, max_tokens: int, prompt_words: int) -> None:
    """What any honest run of `requests` x `max_tokens` tokens must show."""
    assert doc["requests"]["ok"] == requests and doc["errors"] == {}, doc["error_samples"]
    tokens = doc["tokens"]
    assert tokens["output_total"] == requests * max_tokens  # ignore_eos: exactly max_tokens each
    # one chunk per token, except where vLLM merged the tokens of a slow reader into one chunk
    assert requests <= tokens["chunks_total"] <= tokens["output_total"], tokens
    assert tokens["chunks_equal_usage"] == (tokens["chunks_total"] == tokens["output_total"])
    assert tokens["prompt_counted_mean"] >= prompt_words  # a word is at least one token
    for q in ("p50", "p90", "p99", "max"):
        assert 0 < doc["ttft_s"][q] < doc["e2e_s"][q]
    assert doc["itl_s"]["n"] == tokens["chunks_total"] - requests and doc["tpot_s"]["n"] == requests
    assert 0 < doc["tpot_s"]["mean"] * (max_tokens - 1) < doc["e2e_s"]["mean"]
    speed = doc["throughput"]
    assert speed["output_tokens_per_s"] == pytest.approx(requests * max_tokens / doc["duration_s"])


@pytest.mark.engine
def test_local_tiny_model_warm_cold_and_measured_cost(cli, home: Path, tmp_path: Path, tiny_model: Path) -> None:
    spec = yaml.safe_load((REPO / "configs" / "local-tiny.yaml").read_text())
    spec["model"]["id"] = str(tiny_model)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(spec))
    deployed = cli("deploy", str(config), "--json", timeout=400)
    assert deployed.code == 0, deployed
    try:
        warm = cli("bench", "tiny", "--requests", "8", "--concurrency", "2", "--prompt-tokens", "32",
                   "--max-tokens", "16", "--json")
        assert warm.code == 0, warm
        plausible(warm.json(), 8, 16, 32)
        before = deployed.json()["resources"]

        cold = cli("bench", "tiny", "--cold", "--requests", "2", "--concurrency", "1", "--prompt-tokens", "16",
                   "--max-tokens", "8", "--json", timeout=400)
        assert cold.code == 0, cold
        doc = cold.json()
        plausible(doc, 2, 8, 16)
        measured = doc["cold"]
        assert measured["error"] is None and "started it again" in measured["how"], measured
        # a vLLM start takes seconds, and nothing listened at first: the request was sent again
        assert measured["measured_s"] > 2 and measured["attempts"] > 1
        assert measured["ttft_s"] < measured["measured_s"]
        assert measured["predicted"] is None and "no resources.gpu" in measured["predicted_note"]

        status = cli("status", "tiny", "--json")
        assert status.code == 0 and status.json()[0]["state"] == "ready", status
        assert status.json()[0]["url"] == deployed.json()["url"]
        assert status.json()[0]["resources"][-1] not in before  # the restarted server is recorded

        cost = cli("cost", "tiny", "--measured", "--requests-per-hour", "600", "--json")
        assert cost.code == 0, cost
        priced = cost.json()
        assert priced["measured"]["cold_start_s"] == measured["measured_s"]
        assert priced["measured"]["seconds_per_request"] == doc["throughput"]["seconds_per_request"]
        assert len(StateStore(home).benchmarks("tiny")) == 2
    finally:
        assert cli("destroy", "tiny").code == 0


@pytest.mark.engine
def test_runpod_real_worker(cli, tmp_path: Path, start_runpod) -> None:
    emu: RunPodEmulator = start_runpod(real_engine=True, time_scale=1.0, openai_wait_s=10.0)
    spec = tiny_spec(name="tiny-bench", scaling={"idle_timeout": 600}, startup={"readiness_timeout": 300})
    config = tmp_path / "tiny-bench.yaml"
    config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    deployed = cli("deploy", str(config), "--json", timeout=400)
    assert deployed.code == 0, deployed
    try:
        [worker] = emu.live_workers()
        assert worker.engine is not None and worker.engine.real
        result = cli("bench", "tiny-bench", "--requests", "6", "--concurrency", "2", "--prompt-tokens", "24",
                     "--max-tokens", "12", "--json")
        assert result.code == 0, result
        doc = result.json()
        plausible(doc, 6, 12, 24)
        assert doc["url"].endswith(f"/{deployed.json()['resources'][0]['id']}/openai/v1")
        assert emu.api_key not in result.out + result.err
        streamed = [e for e in emu.exchanges if e.path.endswith("/openai/v1/completions")
                    and isinstance(e.body, dict) and e.body.get("stream") is True]
        assert len(streamed) == 6 and all(e.body["max_tokens"] == 12 for e in streamed)
    finally:
        assert cli("destroy", "tiny-bench").code == 0
    assert emu.leftovers() == []
