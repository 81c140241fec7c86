"""RunPod with the real vLLM engine: the CLI deploys, the emulated worker starts vLLM on this CPU
from the endpoint's env exactly as RunPod's worker would, a client chats at the printed URL and
`deployer bench` measures it through RunPod's OpenAI route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from tests.emulators.runpod import RunPodEmulator
from tests.emulators.runpod.fixture import start_runpod, tiny_spec  # noqa: F401
from tests.support.bench_checks import plausible
from tests.support.engine import REPO


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True,
                          env=dict(os.environ), cwd=REPO, timeout=400)


@pytest.mark.engine
def test_real_engine_deploy_chat_redeploy_destroy(start_runpod: object, tmp_path: Path) -> None:
    emu: RunPodEmulator = start_runpod(real_engine=True, time_scale=1.0, openai_wait_s=10.0)
    spec = tiny_spec(name="tiny-real", scaling={"idle_timeout": 600}, startup={"readiness_timeout": 300})
    config = tmp_path / "tiny-real.yaml"
    config.write_text(yaml.safe_dump(spec.model_dump(mode="json")))

    deployed = cli("deploy", str(config), "--json")
    assert deployed.returncode == 0, deployed.stderr
    url = json.loads(deployed.stdout)["url"]
    [worker] = emu.live_workers()
    assert worker.engine is not None and worker.engine.real

    client = OpenAI(base_url=url, api_key=emu.api_key)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=4, temperature=0)
    assert chat.model == "tiny" and chat.usage.completion_tokens >= 1
    assert "vllm" in worker.engine.log().lower()

    bench = cli("bench", "tiny-real", "--requests", "6", "--concurrency", "2", "--prompt-tokens", "24",
                "--max-tokens", "12", "--json")
    assert bench.returncode == 0, bench.stderr
    plausible(json.loads(bench.stdout), 6, 12, 24)
    assert emu.api_key not in bench.stdout + bench.stderr
    streamed = [e for e in emu.exchanges if e.path.endswith("/openai/v1/completions")
                and isinstance(e.body, dict) and e.body.get("stream") is True]
    assert len(streamed) == 6 and all(e.body["max_tokens"] == 12 for e in streamed)

    again = cli("deploy", str(config), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["action"] == "unchanged", again.stderr

    destroyed = cli("destroy", "tiny-real", "--json")
    assert destroyed.returncode == 0, destroyed.stderr
    assert emu.leftovers() == []
