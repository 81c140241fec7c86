"""Live prices from the provider emulators replace shipped ones; overrides still win; failures
fall back to shipped figures with a note. The emulators check every request and response
against the providers' OpenAPI documents."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.costing import catalog, report
from deployer.spec import validate_spec
from tests.emulators.lambda_cloud.fixture import LambdaTestbed, lambda_cloud  # noqa: F401 (fixture)
from tests.emulators.runpod.catalog import default_catalog
from tests.emulators.runpod.fixture import start_runpod  # noqa: F401 (fixture)

KEYS = ("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY", "LAMBDA_API_KEY", "DEPLOYER_LAMBDA_API_KEY", "DEPLOYER_PRICING")


@pytest.fixture(autouse=True)
def no_ambient_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEPLOYER_LAMBDA_KEYS_FILE", str(tmp_path / "no-lambda-keys"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def runpod_catalog(**serverless: float) -> list[dict[str, Any]]:
    """The emulator's default catalog with these GPU ids at other serverless $/h."""
    gpus = default_catalog()
    for gpu in gpus:
        if gpu["id"] in serverless:
            gpu["price"]["serverless"] = serverless[gpu["id"]]
    return gpus


def test_without_keys_nothing_is_live() -> None:
    cat = catalog.load(live=True, timeout=2)
    assert cat.live == {} and cat.notes == []
    assert all(f.origin == "shipped" for e in cat.providers["runpod"].gpus.values() for f in e.prices.values())


def test_runpod_catalog_prices_replace_shipped_ones(start_runpod: Callable[..., Any]) -> None:
    # the pool price moved: H100s now $3.60/h; every type of the pool bills it
    emu = start_runpod(catalog=runpod_catalog(**{"NVIDIA H100 80GB HBM3": 3.6, "NVIDIA H100 PCIe": 3.6,
                                                 "NVIDIA H100 NVL": 3.6}))
    cat = catalog.load(live=True, providers=["runpod"], timeout=5)
    h100 = cat.providers["runpod"].gpus["H100"].prices
    assert h100["flex"].origin == "live" and h100["flex"].value == pytest.approx(3.6 / 3600)
    assert h100["active"].value == pytest.approx(3.6 / 3600)
    assert h100["flex"].source == f"GET {emu.control_url}/catalog/gpus"
    assert "runpod" in cat.live
    # a pool the shipped catalog has no documented price for gets one from the API
    assert cat.offers("RTX5090", 1, ["runpod"])[0].prices["flex"].value == pytest.approx(1.58 / 3600)
    assert len(emu.calls(method="GET", path=r"^/v2/catalog/gpus$")) == 1
    # other providers keep their shipped figures
    assert cat.providers["modal"].gpus["H100"].prices["flex"].origin == "shipped"


def test_an_override_beats_a_live_price(start_runpod: Callable[..., Any], tmp_path: Path) -> None:
    start_runpod(catalog=runpod_catalog(**{"NVIDIA H100 80GB HBM3": 3.6}))
    override = tmp_path / "prices.yaml"
    override.write_text(yaml.safe_dump({"source": "negotiated", "as_of": "2026-11-01", "providers": {
        "runpod": {"gpus": {"H100": {"usd_per_gpu_second": {"active": 0.0008}}}}}}))
    cat = catalog.load(override, live=True, providers=["runpod"], timeout=5)
    prices = cat.providers["runpod"].gpus["H100"].prices
    assert prices["flex"].origin == "live" and prices["flex"].value == pytest.approx(0.001)
    assert prices["active"] == catalog.Figure(0.0008, "override", "negotiated", "2026-11-01")


def test_a_rejected_key_falls_back_to_shipped_figures_with_a_note(
    start_runpod: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_runpod()
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_NOTTHEKEY")
    cat = catalog.load(live=True, providers=["runpod"], timeout=5)
    assert cat.live == {}
    assert cat.providers["runpod"].gpus["H100"].prices["flex"].origin == "shipped"
    (note,) = cat.notes
    assert note.startswith("runpod: live prices unavailable") and "401" in note and "using shipped figures" in note


def test_lambda_instance_type_prices_replace_shipped_ones(lambda_cloud: LambdaTestbed) -> None:  # noqa: F811
    with lambda_cloud.cloud.lock:
        lambda_cloud.cloud.types["gpu_1x_h100_pcie"]["price_cents_per_hour"] = 299
    cat = catalog.load(live=True, providers=["lambda"], timeout=5)
    itype = cat.providers["lambda"].gpus["H100"].instance_types["gpu_1x_h100_pcie"]
    assert itype.price.origin == "live" and itype.price.value == 2.99
    assert itype.price.source == f"GET {lambda_cloud.emulator.base_url.rstrip('/')}/instance-types"
    assert itype.note is None  # the shipped "newer public catalog" caveat belonged to the shipped figure
    sxm = cat.providers["lambda"].gpus["H100"].instance_types["gpu_1x_h100_sxm5"]
    assert sxm.price.origin == "live" and sxm.price.value == 3.29
    assert [(c.method, c.path, c.status) for c in lambda_cloud.emulator.calls] == [("GET", "/instance-types", 200)]


def test_cost_json_says_which_figures_are_live(
    start_runpod: Callable[..., Any], lambda_cloud: LambdaTestbed, tmp_path: Path, cli: Any,  # noqa: F811
) -> None:
    emu = start_runpod(catalog=runpod_catalog(**{"NVIDIA H100 80GB HBM3": 3.6}))
    with lambda_cloud.cloud.lock:
        lambda_cloud.cloud.types["gpu_1x_h100_pcie"]["price_cents_per_hour"] = 199
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "live", "provider": "runpod",
                                    "model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 8192},
                                    "resources": {"gpu": "H100"}}))
    env = {k: v for k, v in os.environ.items() if k.startswith(("DEPLOYER_", "RUNPOD_", "LAMBDA_", "HF_", "HOME"))}
    result = cli("cost", str(spec), "--requests-per-hour", "200", "--json", env=env)
    assert result.code == 0, result
    doc = json.loads(result.out)
    assert set(doc["prices"]["live"]) == {"runpod", "lambda"}
    options = {o["id"]: o for o in doc["options"]}
    assert options["runpod/scale-to-zero"]["prices"]["modes"]["flex"]["origin"] == "live"
    assert options["lambda/gpu_1x_h100_pcie"]["monthly"]["usd"] == pytest.approx(1.99 * 730)
    assert options["modal/scale-to-zero"]["prices"]["modes"]["flex"]["origin"] == "shipped"
    assert emu.calls(method="GET", path=r"^/v2/catalog/gpus$")


def test_plan_summary_reads_live_prices_for_the_spec_provider_only(
    start_runpod: Callable[..., Any], lambda_cloud: LambdaTestbed,  # noqa: F811
) -> None:
    emu = start_runpod(catalog=runpod_catalog(**{"NVIDIA H100 80GB HBM3": 3.6}))
    spec = validate_spec({"name": "plan", "provider": "runpod", "resources": {"gpu": "H100"},
                          "model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 8192},
                          "traffic": {"requests_per_hour": 30, "seconds_per_request": 2}})
    from deployer.settings import Settings

    summary = report.plan_summary(spec, Settings())
    (only,) = summary["options"]
    assert only["prices"]["flex"].startswith("live (")
    assert only["cost_per_request_usd"] == pytest.approx(2 * 3.6 / 3600)
    assert len(emu.calls(method="GET", path=r"^/v2/catalog/gpus$")) == 1
    assert lambda_cloud.emulator.calls == []  # Lambda has a key here, but is not the spec's provider
