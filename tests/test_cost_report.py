"""`deployer cost`: the report's figures, the recommendation, the JSON shape, the command line,
and the cost/capacity extras of `deployer plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from deployer.costing import report
from deployer.costing.cli import register
from deployer.settings import Settings
from deployer.spec import validate_spec

H100_RUNPOD = 0.00116 * 3600  # $/h
H100_MODAL = (0.001097 + 4 * 0.0000131 + 32 * 0.00000222) * 3600  # GPU + CPU + memory, $/h


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub, no provider keys (shipped prices only), no ambient override file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in ("RUNPOD_API_KEY", "DEPLOYER_RUNPOD_API_KEY", "LAMBDA_API_KEY", "DEPLOYER_LAMBDA_API_KEY",
                "DEPLOYER_PRICING", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DEPLOYER_LAMBDA_KEYS_FILE", str(tmp_path / "no-lambda-keys"))


def spec_data(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "qwen", "provider": "runpod",
        "model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 8192},
        "resources": {"gpu": "H100", "count": 1},
        "scaling": {"min_replicas": 0, "max_replicas": 2, "idle_timeout": 60},
    }
    data.update(sections)
    return data


def cost(data: dict[str, Any], **traffic: Any) -> dict[str, Any]:
    spec = validate_spec(data)
    shaped, source = report.traffic_of(spec, **traffic)
    return report.cost_report(spec, live=False, traffic=shaped, traffic_source=source)


def option(doc: dict[str, Any], option_id: str) -> dict[str, Any]:
    return next(o for o in doc["options"] if o["id"] == option_id)


def test_options_are_priced_by_hand() -> None:
    doc = cost(spec_data(), requests_per_hour=120, seconds_per_request=3, hours_per_day=10, tokens_per_request=600)
    ids = [o["id"] for o in doc["options"]]
    assert ids == ["runpod/scale-to-zero", "runpod/warm-1", "modal/scale-to-zero", "modal/warm-1",
                   "lambda/gpu_1x_h100_pcie", "lambda/gpu_1x_h100_sxm5"]
    runpod = option(doc, "runpod/scale-to-zero")
    assert runpod["spec_provider"] and runpod["sku"]["pool"] == "ADA_80_PRO"
    assert runpod["cost_per_request_usd"] == pytest.approx(3 * 0.00116)
    modal = option(doc, "modal/scale-to-zero")
    assert modal["cost_per_request_usd"] == pytest.approx(3 * H100_MODAL / 3600)  # CPU and memory billed on top
    assert modal["extras_usd_per_hour"] == pytest.approx((4 * 0.0000131 + 32 * 0.00000222) * 3600)
    # a VM bills 24 h a day: 730 h x $2.49
    assert option(doc, "lambda/gpu_1x_h100_pcie")["monthly"]["usd"] == pytest.approx(1817.70)
    # a warm minimum bills 730 h at the active rate
    assert option(doc, "runpod/warm-1")["monthly"]["usd"] == pytest.approx(730 * H100_RUNPOD)
    # 36,500 requests a month x 3 s busy at $4.176/h
    assert runpod["monthly"]["terms"]["busy"]["usd"] == pytest.approx(36500 * 3 * H100_RUNPOD / 3600)
    terms = runpod["monthly"]["terms"]
    assert runpod["monthly"]["usd"] == pytest.approx(sum(t["usd"] for t in terms.values()))
    assert runpod["usd_per_million_tokens"] == pytest.approx(runpod["monthly"]["usd"] / 36500 / 600 * 1e6)
    # one request alone: cold start + 3 s + 60 s idle window, rounded up to whole seconds
    cold = runpod["cold_start_s"]["used"]
    assert runpod["lone_request_usd"] == pytest.approx(-(-(cold + 63) // 1) * H100_RUNPOD / 3600)


def test_low_utilization_recommends_serverless_with_its_cold_starts() -> None:
    doc = cost(spec_data(), requests_per_hour=120, seconds_per_request=3, hours_per_day=10)
    rec = doc["recommendation"]
    assert rec["mode"] == "scale-to-zero" and rec["rule_of_thumb"] == "serverless"
    assert rec["figures_agree_with_rule"]
    cheapest = min(doc["options"], key=lambda o: o["monthly"]["usd"])
    assert rec["option"] == cheapest["id"] and rec["monthly_usd"] == cheapest["monthly"]["usd"]
    assert any("cold starts a month" in r and "min_replicas: 1" in r for r in rec["reasons"])
    assert any("low" in r for r in rec["reasons"])


def test_high_utilization_recommends_the_dedicated_vm() -> None:
    doc = cost(spec_data(), requests_per_hour=1000, seconds_per_request=2)  # 13.3 busy h/day
    rec = doc["recommendation"]
    assert rec["option"] == "lambda/gpu_1x_h100_pcie"
    assert rec["rule_of_thumb"] == "dedicated" and rec["figures_agree_with_rule"]
    # the shipped figure is dated and a newer catalog disagrees: the recommendation says so
    assert any(r.startswith("price caveat for lambda/gpu_1x_h100_pcie: a newer public catalog lists $3.29/h")
               for r in rec["reasons"])


def test_the_figures_win_when_the_idle_tail_makes_a_low_utilization_serverless_dearer() -> None:
    # 20% utilisation is serverless territory by the rule of thumb, but a request every 10 s
    # never lets a 300 s window expire: serverless bills 24 h a day at $4.18/h > a $2.49/h VM
    doc = cost(spec_data(scaling={"idle_timeout": 300}), requests_per_hour=360, seconds_per_request=2)
    rec = doc["recommendation"]
    assert rec["rule_of_thumb"] == "serverless"
    assert rec["option"] == "lambda/gpu_1x_h100_pcie"
    assert not rec["figures_agree_with_rule"]
    assert any(r.startswith("the figures win over the rule of thumb") for r in rec["reasons"])
    runpod = option(doc, "runpod/scale-to-zero")["monthly"]
    assert runpod["billed_hours"] == pytest.approx(730, rel=1e-6)


def test_cold_start_intolerance_allows_only_warm_or_dedicated() -> None:
    doc = cost(spec_data(scaling={"min_replicas": 1, "max_replicas": 2}), requests_per_hour=10)
    assert {o["mode"] for o in doc["options"]} == {"warm", "vm"}
    rec = doc["recommendation"]
    assert rec["rule_of_thumb"] == "warm or dedicated"
    assert rec["mode"] in ("warm", "vm")


def test_break_even_rows() -> None:
    doc = cost(spec_data(), requests_per_hour=120, seconds_per_request=3, hours_per_day=24)
    row = next(b for b in doc["break_even"]
               if b["serverless"] == "runpod/scale-to-zero" and b["always_on"] == "lambda/gpu_1x_h100_pcie")
    assert row["utilization"] == pytest.approx(2.49 / H100_RUNPOD)
    assert row["busy_hours_per_day"] == pytest.approx(24 * 2.49 / H100_RUNPOD)  # 14.3 h
    shaped = row["at_traffic"]
    assert not shaped["never"]
    assert shaped["busy_hours_per_day"] < row["busy_hours_per_day"]  # the idle tail brings it forward
    assert shaped["busy_hours_per_day"] == pytest.approx(shaped["requests_per_hour"] * 3 * 24 / 3600)
    same = next(b for b in doc["break_even"]
                if b["serverless"] == "runpod/scale-to-zero" and b["always_on"] == "runpod/warm-1")
    assert same["never"]  # same price: busy time alone never makes warm cheaper


def test_without_traffic_there_are_rates_and_break_even_but_no_month() -> None:
    doc = cost(spec_data())
    assert doc["traffic"] is None and doc["recommendation"] is None
    assert all(o["monthly"] is None for o in doc["options"])
    assert doc["break_even"]
    assert any("--requests-per-hour" in n for n in doc["notes"])


def test_unavailable_providers_say_why() -> None:
    doc = cost(spec_data(resources={"gpu": "L40S", "count": 1}), requests_per_hour=10)
    assert [u["provider"] for u in doc["unavailable"]] == ["lambda"]
    assert "no L40S" in doc["unavailable"][0]["reason"]
    assert {o["provider"] for o in doc["options"]} == {"runpod", "modal"}


def test_no_gpu_is_this_machine_for_free() -> None:
    doc = cost(spec_data(provider="local", resources={}), requests_per_hour=10)
    assert doc["options"] == [] and any("this machine: free" in n for n in doc["notes"])


# -- the JSON shape and the command line -----------------------------------------------------


OPTION_KEYS = {
    "id", "provider", "label", "kind", "mode", "warm_replicas", "spec_provider", "gpu", "count", "sku",
    "sku_label", "billing_increment_s", "rate_usd_per_hour", "gpu_usd_per_hour", "extras_usd_per_hour", "prices",
    "idle_window_s", "cold_start_s", "note", "cost_per_request_usd", "lone_request_usd", "usd_per_million_tokens",
    "monthly",
}


def app() -> typer.Typer:
    cli = typer.Typer()

    @cli.callback()
    def main() -> None:
        """deployer (cost only)."""

    register(cli)
    return cli


def write_spec(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_json_output_shape(tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec_data(traffic={"requests_per_hour": 50, "tokens_per_request": 400}))
    result = CliRunner().invoke(app(), ["cost", str(path), "--hours-per-day", "12", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"name", "provider", "model", "gpu", "count", "traffic", "arrival_model", "capacity",
                        "options", "unavailable", "break_even", "recommendation", "prices", "notes"}
    assert doc["traffic"] == {"requests_per_hour": 50.0, "seconds_per_request": 2.0, "tokens_per_request": 400,
                              "hours_per_day": 12.0, "source": "spec and flags"}
    assert doc["arrival_model"]["name"] == "poisson"
    assert set(doc["arrival_model"]["terms"]) >= {"busy", "idle_tail", "cold_start", "rounding", "warm", "vm"}
    for item in doc["options"]:
        assert set(item) == OPTION_KEYS
        assert set(item["monthly"]) == {"usd", "replicas", "cold_starts", "billed_hours", "usd_per_request", "terms"}
        for figure in item["prices"]["modes"].values():
            assert set(figure) == {"value", "origin", "source", "as_of"} and figure["origin"] == "shipped"
    assert set(doc["break_even"][0]) == {"serverless", "always_on", "serverless_usd_per_busy_hour",
                                         "always_on_usd_per_hour", "utilization", "busy_hours_per_day", "never",
                                         "at_traffic"}
    assert set(doc["recommendation"]) == {"option", "provider", "mode", "monthly_usd", "rule_of_thumb",
                                          "figures_agree_with_rule", "reasons"}
    assert doc["capacity"]["fits"] is True and doc["capacity"]["cold_start"]
    assert doc["prices"] == {"override_file": None, "live": {},
                             "shipped_note": "figures not live or overridden are the shipped catalog's, with their date"}


def test_table_output_names_the_figures(tmp_path: Path) -> None:
    path = write_spec(tmp_path, spec_data())
    result = CliRunner().invoke(app(), ["cost", str(path), "--requests-per-hour", "100"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("runpod/scale-to-zero *", "lambda/gpu_1x_h100_pcie", "$1,818", "shipped, as of 2026-05-13",
                 "break-even", "recommendation:", "arrivals: Poisson", "capacity: fits", "idle"):
        assert text in result.output, text


def test_pricing_file_from_the_flag_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_spec(tmp_path, spec_data())
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"source": "contract", "as_of": "2026-11-01", "providers": {
        "lambda": {"gpus": {"H100": {"instance_types": [{"name": "gpu_1x_h100_pcie", "usd_per_hour": 1.0}]}}}}}))
    result = CliRunner().invoke(app(), ["cost", str(path), "--requests-per-hour", "10", "--pricing", str(prices), "--json"])
    doc = json.loads(result.stdout)
    vm = option(doc, "lambda/gpu_1x_h100_pcie")
    assert vm["monthly"]["usd"] == pytest.approx(730.0)
    assert vm["prices"]["modes"]["on_demand"] == {"value": 1.0, "origin": "override", "source": "contract",
                                                  "as_of": "2026-11-01"}
    assert doc["prices"]["override_file"] == str(prices)
    monkeypatch.setenv("DEPLOYER_PRICING", str(prices))
    result = CliRunner().invoke(app(), ["cost", str(path), "--requests-per-hour", "10", "--json"])
    assert option(json.loads(result.stdout), "lambda/gpu_1x_h100_pcie")["monthly"]["usd"] == pytest.approx(730.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requests-per-hour", "-1"], "--requests-per-hour must be >= 0"),
        (["--seconds-per-request", "0"], "--seconds-per-request must be > 0"),
        (["--hours-per-day", "25"], "--hours-per-day must be in (0, 24]"),
        (["--tokens-per-request", "0"], "--tokens-per-request must be >= 1"),
        (["--pricing", "/nonexistent/prices.yaml"], "no such pricing file"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    path = write_spec(tmp_path, spec_data())
    result = CliRunner().invoke(app(), ["cost", str(path), *args, "--json"])
    assert result.exit_code == 2
    assert message in json.loads(result.stdout)["error"]


def test_deployer_cost_and_plan_as_subprocesses(cli: Any, tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home"), "DEPLOYER_LAMBDA_KEYS_FILE": str(tmp_path / "none")}
    config = Path(__file__).resolve().parents[1] / "configs" / "cost-example.yaml"
    result = cli("cost", str(config), "--json", env=env)
    assert result.code == 0, result
    doc = result.json()
    assert doc["name"] == "cost-example" and doc["recommendation"]["reasons"]

    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({"name": "big", "provider": "local", "resources": {"gpu": "H100", "count": 1},
                                   "model": {"id": "meta-llama/Llama-3.1-70B-Instruct", "dtype": "bfloat16",
                                             "max_model_len": 8192}}))
    refused = cli("deploy", str(big), "--json", env=env)
    assert refused.code == 2, refused
    error = refused.json()
    assert "131.4 GiB" in error["error"] and "72.0 GiB" in error["error"]
    assert "resources.count: 2" in error["hint"]


# -- plan --------------------------------------------------------------------------------------


def test_plan_summary_prices_the_spec_provider_at_the_spec_traffic() -> None:
    assert report.plan_summary(validate_spec(spec_data()), Settings()) is None  # no traffic: nothing
    summary = report.plan_summary(validate_spec(spec_data(traffic={"requests_per_hour": 120, "seconds_per_request": 3})),
                                  Settings())
    assert summary["provider"] == "runpod" and summary["traffic"]["requests_per_hour"] == 120
    (only,) = summary["options"]
    assert only["id"] == "runpod/scale-to-zero"
    assert only["cost_per_request_usd"] == pytest.approx(3 * 0.00116)
    assert only["monthly_usd"] == pytest.approx(sum(only["monthly_terms_usd"].values()))
    assert only["prices"] == {"flex": "shipped (2026-05-13)", "active": "shipped (2026-05-13)"}
    local = spec_data(provider="local", resources={}, traffic={"requests_per_hour": 1})
    assert report.plan_summary(validate_spec(local), Settings()) == {"provider": "local", "note": "this machine: free"}


def test_plan_extras_render_as_lines() -> None:
    import io

    from rich.console import Console

    from deployer.costing import capacity
    from deployer.costing.cli import render_plan_extras

    spec = validate_spec(spec_data(traffic={"requests_per_hour": 120, "seconds_per_request": 3}))
    buffer = io.StringIO()
    render_plan_extras({"capacity": capacity.check(spec).to_dict(), "cost": report.plan_summary(spec, Settings())},
                       Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "capacity: fits: 16.1 of 72.0 GiB" in text
    assert "RunPod serverless: cold start" in text
    assert "$0.00348 per request busy" in text and "prices flex shipped (2026-05-13)" in text
