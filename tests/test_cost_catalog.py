"""The shipped price catalog (sources, dates, agreement with the providers' documents) and
override files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.costing import catalog
from deployer.errors import InputError
from deployer.gpus import GPUS
from tests.support.engine import CONTRACTS

DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")


@pytest.fixture
def shipped() -> catalog.Catalog:
    return catalog.load(live=False)


def test_every_shipped_price_has_a_source_and_a_date(shipped: catalog.Catalog) -> None:
    figures = []
    for info in shipped.providers.values():
        assert info.billing_source and info.increment_s in (1, 60)
        for gpu, entry in info.gpus.items():
            assert gpu in GPUS
            figures += list(entry.prices.values())
            figures += [t.price for t in entry.instance_types.values() if t.price is not None]
        figures += [extra.price for extra in info.extras.values()]
    assert len(figures) > 30
    for figure in figures:
        assert figure.origin == catalog.SHIPPED
        assert figure.source.strip(), figure
        assert DATE.match(figure.as_of), figure


def test_runpod_prices_match_the_documented_pool_table(shipped: catalog.Catalog) -> None:
    """RunPod's documented pool table (flex column, $/s) is the source; this also guards against
    the 25x-too-high per-second figures of some comparison articles."""
    table = json.loads((CONTRACTS / "pricing" / "runpod-serverless-pools.json").read_text())
    documented = {pool: row["flex"] for pool, row in table["pools"].items()}
    assert len(documented) == 9
    checked = 0
    for entry in shipped.providers["runpod"].gpus.values():
        if entry.prices:
            assert entry.prices["flex"].value == documented[entry.sku["pool"]]
            assert entry.prices["active"].value == entry.prices["flex"].value  # unified on 2026-05-13
            checked += 1
    assert checked == 9
    h100 = shipped.offers("H100", 1, ["runpod"])[0]
    assert h100.rate("flex") == pytest.approx(4.176)  # $/h, not ~$100/h


def test_lambda_prices_match_the_captured_instance_types_body(shipped: catalog.Catalog) -> None:
    body = json.loads((CONTRACTS / "lambda" / "instance-types-response-2025-11.json").read_text())["data"]
    checked = 0
    for gpu, entry in shipped.providers["lambda"].gpus.items():
        for itype in entry.instance_types.values():
            captured = body[itype.name]["instance_type"]
            assert itype.price.value == captured["price_cents_per_hour"] / 100
            assert itype.count == captured["specs"]["gpus"]
            assert str(GPUS[gpu].memory_gb) in captured["gpu_description"]
            checked += 1
    assert checked == 17


def test_modal_prices_match_pricing_md_and_bill_cpu_and_memory_on_top(shipped: catalog.Catalog) -> None:
    modal = shipped.providers["modal"]
    assert modal.gpus["H100"].prices["flex"].value == 0.001097
    assert modal.gpus["A100-80GB"].prices["flex"].value == 0.000694
    assert modal.gpus["L40S"].prices["flex"].value == 0.000542
    offer = shipped.offers("H100", 1, ["modal"])[0]
    # 4 cores x 0.0000131 + 32 GiB x 0.00000222 = 0.00012344 $/s = $0.444/h, inside pricing.md's $0.4-0.9/h
    assert offer.extras_per_hour == pytest.approx(0.00012344 * 3600)
    assert offer.rate("flex") == pytest.approx((0.001097 + 0.00012344) * 3600)


def test_hosts_are_catalog_data(shipped: catalog.Catalog) -> None:
    assert {o.provider for o in shipped.offers("H100", 1)} == {"runpod", "modal", "lambda"}
    assert {o.sku["instance_type"] for o in shipped.offers("H100", 1, ["lambda"])} == {"gpu_1x_h100_pcie", "gpu_1x_h100_sxm5"}
    assert [o.sku["instance_type"] for o in shipped.offers("H100", 2, ["lambda"])] == ["gpu_2x_h100_sxm5"]
    assert shipped.offers("H100", 1, ["runpod"])[0].sku["pool"] == "ADA_80_PRO"
    assert "no L40S" in shipped.why_not("lambda", "L40S", 1)
    assert "counts: 8" in shipped.why_not("lambda", "A100-80GB", 1)
    assert "no sourced price" in shipped.why_not("modal", "B200", 1)
    assert shipped.why_not("runpod", "H100", 4) is None
    assert "at most 4x A10" in shipped.why_not("modal", "A10", 8)


# -- override files -----------------------------------------------------------------------------


def write(tmp_path: Path, data: object, name: str = "prices.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return path


def test_override_replaces_only_the_figures_it_names(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "source": "our negotiated RunPod rate",
        "as_of": "2026-11-01",
        "providers": {"runpod": {"gpus": {"H100": {"usd_per_gpu_second": {"active": 0.0009}}}}},
    })
    cat = catalog.load(path, live=False)
    prices = cat.providers["runpod"].gpus["H100"].prices
    assert prices["active"] == catalog.Figure(0.0009, "override", "our negotiated RunPod rate", "2026-11-01")
    assert prices["flex"].origin == "shipped" and prices["flex"].value == 0.00116
    assert cat.providers["modal"].gpus["H100"].prices["flex"].origin == "shipped"
    assert cat.override_file == str(path)


def test_override_without_source_names_the_file_and_its_date(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": {"lambda": {"gpus": {"H100": {"instance_types": [
        {"name": "gpu_1x_h100_sxm5", "usd_per_hour": 4.29}]}}}}}, name="prices.json")
    os.utime(path, (1_790_000_000, 1_790_000_000))  # 2026-09-21 (UTC)
    cat = catalog.load(path, live=False)
    itype = cat.providers["lambda"].gpus["H100"].instance_types["gpu_1x_h100_sxm5"]
    assert itype.price.value == 4.29 and itype.count == 1
    assert itype.price.origin == "override" and str(path) in itype.price.source
    assert itype.price.as_of.startswith("2026-09-2")
    assert itype.note is None  # the shipped "a newer public catalog lists..." note went with the old figure


def test_override_adds_a_gpu_and_extra_units(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": {"modal": {
        "gpus": {"B200": {"usd_per_gpu_second": {"flex": 0.0017, "active": 0.0017}, "source": "modal.com/pricing",
                          "as_of": "2026-11-20"}},
        "extras": [{"name": "memory", "units": 64}],
    }}})
    cat = catalog.load(path, live=False)
    offer = cat.offers("B200", 2, ["modal"])[0]
    assert offer.gpu_rate("flex") == pytest.approx(0.0017 * 3600 * 2)
    assert offer.prices["flex"].source == "modal.com/pricing"
    memory = next(e for e in offer.extras if e.name == "memory")
    assert memory.units == 64 and memory.price.origin == "shipped"  # units changed, price kept
    assert offer.extras_per_hour == pytest.approx((4 * 0.0000131 + 64 * 0.00000222) * 3600)


def test_max_count_limits_serverless_offers(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": {"modal": {"gpus": {"A10": {"usd_per_gpu_second": {"flex": 0.0003, "active": 0.0003}}}}}})
    cat = catalog.load(path, live=False)
    assert [o.count for o in cat.offers("A10", 4, ["modal"])] == [4]
    assert cat.offers("A10", 8, ["modal"]) == []


def test_override_can_change_the_billing_increment(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": {"runpod": {"billing": {"increment_s": 60}}}})
    cat = catalog.load(path, live=False)
    assert cat.offers("H100", 1, ["runpod"])[0].increment_s == 60


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"providers": {"runpd": {}}}, "unknown provider"),
        ({"providers": {"runpod": {"gpus": {"H1OO": {}}}}}, "unknown GPU"),
        ({"providers": {"runpod": {"gpus": {"H100": {"usd_per_gpu_second": {"flex": -1}}}}}}, "number >= 0"),
        ({"providers": {"runpod": {"gpus": {"H100": {"usd_per_gpu_second": {"spot": 0.001}}}}}}, "unknown mode"),
        ({"providers": {"lambda": {"gpus": {"H100": {"usd_per_gpu_second": {"flex": 0.001}}}}}}, "bills VMs"),
        ({"providers": {"lambda": {"gpus": {"H100": {"instance_types": [{"name": "x", "usd_per_hour": 1}]}}}}}, "count"),
        ({"providers": {"runpod": {"billing": {"increment_s": 0}}}}, "increment_s"),
        ({"runpod": {}}, "providers:"),
        ({"providers": {"modal": {"extras": {"cpu": 1}}}}, "expected a list"),
        ({"providers": {"modal": {"extras": [{"name": "cpu", "units": "four"}]}}}, "units"),
        ({"providers": {"modal": {"extras": [{"name": "gpu-tax", "units": 1}]}}}, "needs usd_per_unit_second"),
    ],
)
def test_bad_override_files_are_input_errors(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(InputError) as caught:
        catalog.load(path, live=False)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-1, 1, allow_nan=False) | st.sampled_from(
        ["runpod", "modal", "lambda", "H100", "L4", "flex", "active", "on_demand", "gpu_1x_a10", "cpu", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["providers", "runpod", "modal", "lambda", "gpus", "H100", "L4", "usd_per_gpu_second", "flex", "active",
         "instance_types", "name", "count", "usd_per_hour", "extras", "units", "usd_per_unit_second", "billing",
         "increment_s", "sku", "modes", "kind", "source", "as_of", "cold_start"]), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=JSONISH)
def test_any_override_data_is_applied_or_refused_as_input_error(data: object) -> None:
    doc = {"providers": data} if not isinstance(data, dict) or "providers" not in data else data
    if not isinstance(doc.get("providers"), dict):
        return
    cat = catalog.build(catalog.shipped_raw())
    try:
        catalog.apply_override(cat, doc, name="fuzz.yaml")
    except InputError as exc:
        assert "fuzz.yaml" in str(exc) or "providers" in str(exc)
        return
    for offer in cat.offers("H100", 1) + cat.offers("L4", 1):  # whatever was accepted prices cleanly
        for mode in offer.prices:
            assert offer.rate(mode) >= 0


def test_unreadable_override_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such pricing file"):
        catalog.load(tmp_path / "missing.yaml", live=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        catalog.load(bad, live=False)


def test_the_wheel_ships_the_catalog_data(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    from tests.support.engine import REPO

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("deployer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"deployer/data/prices.yaml", "deployer/data/models.yaml"} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import deployer; from deployer.costing.catalog import load; from deployer.costing.modelsize import table;"
            "print(deployer.__file__, len(load(live=False).offers('H100', 1)), len(table()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(site), "HOME": str(tmp_path)}).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == "4" and int(out[2]) > 20
