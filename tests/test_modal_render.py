"""The generated Modal app: what it says, that it imports with the real `modal`, what is refused.

No control plane here (see test_modal_deploy.py); one test runs the snapshot class's own
lifecycle code against the stub engine.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deployer.errors import InputError
from deployer.provider import REDACTED, Secrets
from deployer.settings import Settings
from deployer.spec import load_spec, validate_spec
from deployer.vllm_command import GUARD_MIDDLEWARE, guard_source, serve_command
from providers.modal import render, sizing
from providers.modal.adapter import Provider
from tests.support.engine import REPO, free_port

CONFIGS = REPO / "configs"


def modal_spec(**overrides: object) -> object:
    data: dict = {"name": "tiny", "provider": "modal",
                  "model": {"id": "Qwen/Qwen2.5-0.5B-Instruct", "served_name": "qwen"},
                  "resources": {"gpu": "L40S"}}
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_spec(data)


@pytest.fixture
def provider(tmp_path: Path) -> Provider:
    return Provider(Settings(home=tmp_path / "home"))


def app_text(provider: Provider, spec: object, secrets: Secrets | None = None) -> str:
    artifacts = provider.render(spec, secrets or Secrets.redacted(has_hf_token=False))
    return artifacts.files[render.file_path(spec.name)]


def literal(text: str, name: str) -> object:
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not assigned in the app file")


def import_app(tmp_path: Path, text: str, module: str) -> object:
    """Import the file the way deploy does (real `modal`), returning the module."""
    from providers.modal import sdk

    path = tmp_path / f"{module}.py"
    path.write_text(text)
    sdk.load_app(path, module)
    return sys.modules.pop(module)


# -- the two shipped configs ----------------------------------------------------------------------


def test_qwen_config_renders_a_snapshot_class_on_an_l40s(provider: Provider, tmp_path: Path) -> None:
    import modal

    spec = load_spec(CONFIGS / "modal-qwen-l40s.yaml")
    text = app_text(provider, spec)
    module = import_app(tmp_path, text, "qwen_app")
    assert isinstance(module.Server, modal.Cls) and not hasattr(module, "serve")
    assert 'gpu="L40S"' in text and "enable_memory_snapshot=True" in text
    assert 'experimental_options={"enable_gpu_snapshot": True}' in text
    assert "@modal.enter(snap=True)" in text and "@modal.enter(snap=False)" in text and "@modal.exit()" in text
    command = literal(text, "VLLM_COMMAND")
    assert command == serve_command(spec, host="0.0.0.0", port=8000, api_key=None, guard=True,
                                    overrides={"enable-sleep-mode": True})
    assert "--enable-sleep-mode" in command and "--api-key" not in command
    assert command[-2:] == ["--middleware", GUARD_MIDDLEWARE]
    assert '"VLLM_SERVER_DEV_MODE": "1"' in text and '"TORCHINDUCTOR_COMPILE_THREADS": "1"' in text
    assert '"HF_XET_HIGH_PERFORMANCE": "1"' in text and 'uv_pip_install("vllm==0.32.0")' in text
    assert f"memory={sizing.snapshot_memory_mib(spec)}" in text
    assert "scaledown_window=300," in text and "min_containers=0," in text and "max_containers=2," in text


def test_llama_config_renders_a_plain_web_function_on_an_h100(provider: Provider, tmp_path: Path) -> None:
    import modal

    spec = load_spec(CONFIGS / "modal-llama-h100.yaml")
    artifacts = provider.render(spec, Secrets.redacted(has_hf_token=True))
    text = artifacts.files["modal/llama-8b/app.py"]
    module = import_app(tmp_path, text, "llama_app")
    assert isinstance(module.serve, modal.Function) and not hasattr(module, "Server")
    assert 'gpu="H100"' in text and "enable_memory_snapshot" not in text and "--enable-sleep-mode" not in text
    assert literal(text, "VLLM_COMMAND") == serve_command(spec, host="0.0.0.0", port=8000, api_key=None, guard=True)
    assert 'modal.Secret.from_name("dplr-llama-8b-hf", required_keys=["HF_TOKEN"])' in text
    assert "@modal.web_server(port=VLLM_PORT, startup_timeout=STARTUP_TIMEOUT)" in text
    assert literal(text, "STARTUP_TIMEOUT") == sizing.startup_timeout_s(spec) >= 600  # 16 GB of weights
    assert "timeout=900," in text
    assert [r.json.get("deployment_name") for r in artifacts.requests[:2]] == ["dplr-llama-8b-key", "dplr-llama-8b-hf"]


@pytest.mark.parametrize("mode", ["snapshot", "plain"])
def test_the_image_carries_the_key_guard_onto_vllms_pythonpath(provider: Provider, mode: str) -> None:
    """vLLM checks the key on /v1 only; the guard it loads with --middleware must be in the
    container: written beside the app file, added to the image from there, on PYTHONPATH."""
    spec = modal_spec(providers={"modal": {"mode": mode}})
    artifacts = provider.render(spec, Secrets.redacted())
    assert artifacts.files[render.guard_path(spec.name)] == guard_source()
    assert render.guard_path(spec.name).rsplit("/", 1)[0] == render.file_path(spec.name).rsplit("/", 1)[0]
    text = artifacts.files[render.file_path(spec.name)]
    assert '"PYTHONPATH": "/opt/deployer"' in text
    image_chain = text[text.index("image = ("):text.index("hf_cache =")].strip().splitlines()
    assert image_chain[-2].strip().startswith(  # last: a build step after a mounted file is refused
        '.add_local_file(Path(__file__).with_name("deployer_vllm_guard.py"), "/opt/deployer/deployer_vllm_guard.py")')
    assert literal(text, "VLLM_COMMAND")[-2:] == ["--middleware", GUARD_MIDDLEWARE]


def test_startup_timeout_and_readiness_grow_with_the_model(provider: Provider) -> None:
    small, big = modal_spec(), modal_spec(model={"id": "org/model", "params_b": 70})
    assert sizing.startup_timeout_s(small) < sizing.startup_timeout_s(big)
    assert provider.readiness_timeout(small) < provider.readiness_timeout(big)
    assert provider.readiness_timeout(small) >= 20 * 60  # a first deploy builds the vLLM image


# -- secrets never reach the artifacts --------------------------------------------------------------


def test_no_secret_in_file_or_requests_even_with_real_secrets(provider: Provider) -> None:
    spec = modal_spec()
    secrets = Secrets(api_key="dpk-very-secret-value", hf_token="hf_also_secret")
    artifacts = provider.render(spec, secrets)
    dump = repr(artifacts.to_dict()) + "\n".join(artifacts.notes)
    assert "dpk-very-secret-value" not in dump and "hf_also_secret" not in dump
    assert REDACTED in dump  # the requests show where the key goes
    text = artifacts.files["modal/tiny/app.py"]
    assert 'modal.Secret.from_name("dplr-tiny-key", required_keys=["VLLM_API_KEY"])' in text
    assert provider.render(spec, Secrets.redacted(has_hf_token=True)).files == artifacts.files  # same shape


def test_render_does_not_import_modal() -> None:
    code = ("import sys; from deployer.spec import load_spec; from deployer.settings import Settings; "
            "from deployer.provider import Secrets; from providers.modal.adapter import Provider; "
            f"Provider(Settings()).render(load_spec({str(CONFIGS / 'modal-qwen-l40s.yaml')!r}), Secrets.redacted()); "
            "assert 'modal' not in sys.modules, 'render imported modal'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# -- what is refused, and why --------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "words"), [
    ({"resources": {"gpu": "RTX4090"}}, ["does not offer the RTX4090", "L4"]),
    ({"resources": {"gpu": None}}, ["resources.gpu is not set"]),
    ({"resources": {"gpu": "A10", "count": 8}}, ["at most 4 x A10"]),
    ({"resources": {"count": 2}, "providers": {"modal": {"mode": "snapshot"}}}, ["snapshot", "multi-GPU", "count: 1"]),
    ({"scaling": {"idle_timeout": 1}}, ["scale-down window is 2..3600"]),
    ({"model": {"params_b": 70}, "providers": {"modal": {"startup_timeout": 60}}}, ["startup_timeout is 60s"]),
])
def test_refused_at_plan_time_with_the_reason(provider: Provider, overrides: dict, words: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        provider.render(modal_spec(**overrides), Secrets.redacted())
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(("block", "word"), [
    ({"mode": "fast"}, "mode"),
    ({"vllm_version": "latest"}, "pin an exact vLLM release"),
    ({"base_image": "nvidia/cuda:latest"}, "pin the base image"),
    ({"hf_cache_volume": "bad name!"}, "not a Modal name"),
    ({"gpu_snapshot": True}, "gpu_snapshot"),
    ({"timeout": 100000}, "timeout"),
])
def test_bad_options_are_input_errors(block: dict, word: str) -> None:
    with pytest.raises(InputError) as caught:
        modal_spec(providers={"modal": block})
    assert word in str(caught.value)


def test_auto_mode_picks_plain_for_several_gpus_and_says_why(provider: Provider) -> None:
    spec = modal_spec(resources={"gpu": "H100", "count": 2})
    artifacts = provider.render(spec, Secrets.redacted())
    text = artifacts.files["modal/tiny/app.py"]
    assert 'gpu="H100:2"' in text and "enable_memory_snapshot" not in text
    assert literal(text, "VLLM_COMMAND")[-8:] == ["--tensor-parallel-size", "2", "--host", "0.0.0.0", "--port", "8000",
                                                  "--middleware", GUARD_MIDDLEWARE]
    assert any("snapshots need one GPU" in note for note in artifacts.notes)
    assert "enable_memory_snapshot=True" not in app_text(provider, modal_spec(startup={"fast_boot": False}))


# -- the snapshot class's own code, run against the stub engine ----------------------------------


def test_snapshot_class_lifecycle_starts_warms_sleeps_wakes_and_stops(
        provider: Provider, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The methods Modal runs in the container (start -> snapshot -> wake -> serve -> exit), called
    here directly with `vllm serve` swapped for the stub engine on a free port. The stub loads
    the key guard, so the app's own /sleep and /wake_up calls must carry the key."""
    spec = modal_spec(model={"id": str(tiny_model), "served_name": "tiny"})
    text = app_text(provider, spec)
    module = import_app(tmp_path, text, "snapshot_app")
    port = free_port()
    command = literal(text, "VLLM_COMMAND")
    assert command[-6:] == ["--host", "0.0.0.0", "--port", "8000", "--middleware", GUARD_MIDDLEWARE]
    stub = [sys.executable, "-m", "tests.support.stub_engine", *command[2:-6], *command[-2:],
            "--host", "127.0.0.1", "--port", str(port)]
    monkeypatch.setattr(module, "VLLM_COMMAND", stub)
    monkeypatch.setattr(module, "VLLM_PORT", port)
    for key, value in render.plan_app(spec, has_hf_token=False).image_env.items():  # the image's ENV
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VLLM_API_KEY", "k-lifecycle")  # from the Modal Secret
    guard_dir = tmp_path / "opt-deployer"  # the image's /opt/deployer
    guard_dir.mkdir()
    (guard_dir / "deployer_vllm_guard.py").write_text(guard_source())
    monkeypatch.setenv("PYTHONPATH", f"{guard_dir}:{REPO}")
    monkeypatch.chdir(REPO)
    user_cls = module.Server._get_user_cls()  # modal's own handle on the class body (SDK 1.6)
    instance = user_cls()
    method = lambda name: user_cls.__dict__[name]._get_raw_f()  # noqa: E731
    method("start")(instance)
    try:
        base, keyed = f"http://127.0.0.1:{port}", {"Authorization": "Bearer k-lifecycle"}
        assert httpx.get(base + "/is_sleeping").status_code == 401  # the guard is in front
        assert httpx.get(base + "/is_sleeping", headers=keyed).json() == {"is_sleeping": True}
        method("wake")(instance)
        assert httpx.get(base + "/is_sleeping", headers=keyed).json() == {"is_sleeping": False}
        answer = httpx.post(base + "/v1/completions", headers=keyed,
                            json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert answer.status_code == 200
    finally:
        method("stop")(instance)
    assert instance.process.poll() is not None
    assert os.environ["VLLM_API_KEY"] not in text
