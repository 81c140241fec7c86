"""End to end on the real engine: `deployer deploy` (a real CLI process) launches an emulated
Lambda VM whose cloud-config starts real vLLM with the adapter's command; a chat through the
openai client gets real tokens back; `deployer destroy` leaves Lambda empty."""

from __future__ import annotations

import json

import openai
import pytest

from tests.emulators.lambda_cloud.fixture import ENDPOINT_KEY, finish_testbed, start_testbed


@pytest.mark.engine
def test_real_vllm_on_an_emulated_lambda_vm(tmp_path, monkeypatch, cli):
    bed = start_testbed(tmp_path, monkeypatch, real_engine=True)
    try:
        data = bed.spec_data("lamreal")
        data["startup"]["readiness_timeout"] = 300
        config = tmp_path / "lambda-real.yaml"
        config.write_text(json.dumps(data))
        deployed = cli("deploy", str(config), "--json", env=bed.env, timeout=400)
        assert deployed.code == 0, deployed
        url = deployed.json()["url"]
        (instance,) = bed.cloud.live()
        assert url == f"http://{instance.ip}:{data['providers']['lambda']['port']}/v1"
        assert instance.vm.engine.real and instance.vm.restarts == 0

        client = openai.OpenAI(base_url=url, api_key=ENDPOINT_KEY)
        assert [m.id for m in client.models.list()] == ["tiny"]
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].message.content is not None
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="not-the-key").models.list()

        destroyed = cli("destroy", "lamreal", "--json", env=bed.env)
        assert destroyed.code == 0, destroyed
        assert bed.cloud.live() == [] and bed.cloud.rulesets == {}
    finally:
        finish_testbed(bed)
