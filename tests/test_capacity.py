"""The capacity check (weights + KV cache vs GPU memory) and the cold-start ranges."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from deployer.costing import capacity, catalog, modelsize
from deployer.costing.modelsize import Shape
from deployer.errors import InputError
from deployer.spec import validate_spec

GIB = 2**30
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub, and an empty Hugging Face cache, unless a test fills one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def spec(model: dict[str, Any], gpu: str | None = "H100", count: int = 1, **sections: Any) -> Any:
    return validate_spec({"name": "cap", "provider": "runpod", "model": model,
                          "resources": {"gpu": gpu, "count": count}, **sections})


def test_table_shapes_give_the_stated_parameter_counts() -> None:
    seen = set()
    for entry in modelsize.table().values():
        if entry["id"] in seen:
            continue
        seen.add(entry["id"])
        shape = Shape.from_config(entry)
        assert shape is not None, entry["id"]
        assert shape.params() / 1e9 == pytest.approx(entry["params_b"], rel=0.01), entry["id"]
    assert len(seen) >= 20


def test_70b_in_bf16_does_not_fit_on_one_80gb_gpu() -> None:
    with pytest.raises(InputError) as caught:
        capacity.check(spec({"id": LLAMA_70B, "dtype": "bfloat16", "max_model_len": 8192}, count=1))
    # by hand: 70.55e9 params x 2 bytes = 131.4 GiB; KV 2 x 80 layers x 8 heads x 128 x 2 bytes
    # = 327,680 bytes/token x 8192 = 2.5 GiB; overhead 1.5 GiB; 80 GiB x 0.9 = 72 GiB available
    assert 70.55e9 * 2 / GIB == pytest.approx(131.4, abs=0.05)
    message, hint = caught.value.message, caught.value.hint
    assert "weights 131.4 GiB in bfloat16" in message
    assert "KV cache 2.5 GiB for one 8192-token sequence" in message
    assert "needs 135.4 GiB" in message and "gives 72.0 GiB" in message
    assert "resources.count: 2 (2x H100 gives 144 GiB)" in hint
    assert "resources.gpu: B200" in hint
    assert "model.quantization: fp8" in hint


def test_70b_in_bf16_fits_on_two_80gb_gpus_with_room_for_three_sequences() -> None:
    report = capacity.check(spec({"id": LLAMA_70B, "dtype": "bfloat16", "max_model_len": 8192}, count=2))
    assert report is not None and report.fits
    assert report.weights_gib == pytest.approx(70.55e9 * 2 / GIB, rel=1e-6)
    assert report.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert report.kv_gib_per_sequence == pytest.approx(2.5)
    assert report.available_gib == pytest.approx(144.0)
    assert report.required_gib == pytest.approx(131.41 + 2.5 + 3.0, abs=0.01)
    # (144 - 131.41 - 3.0) / 2.5 = 3.8 -> 3 sequences of 8192 tokens at once
    assert report.sequences_at_max_len == 3
    assert report.params_source.startswith("deployer's table of well-known models")
    assert report.to_dict()["fits"] is True


def test_70b_at_its_full_context_on_two_gpus_is_refused_with_a_shorter_context_as_a_way_out() -> None:
    with pytest.raises(InputError) as caught:
        capacity.check(spec({"id": LLAMA_70B}, count=2))  # max_position_embeddings 131072: KV 40 GiB
    assert "KV cache 40.0 GiB for one 131072-token sequence" in caught.value.message
    # room: 144 - 131.41 - 3 = 9.59 GiB / 327,680 bytes per token = 31,430 -> 31,232 (multiple of 256)
    assert "model.max_model_len: 31232" in caught.value.hint
    assert "resources.count: 4" in caught.value.hint


def test_quantization_shrinks_the_weights_by_hand() -> None:
    report = capacity.estimate(spec({"id": LLAMA_70B, "quantization": "awq", "max_model_len": 8192}))
    params = int(70.55e9)
    embed = 2 * 128256 * 8192
    expected = (params - embed) * (4 + 20 / 128) / 8 + embed * 2
    assert report.weights_gib == pytest.approx(expected / GIB)
    assert report.fits and report.precision == "awq 4-bit"
    fp8 = capacity.estimate(spec({"id": LLAMA_70B, "quantization": "fp8", "max_model_len": 8192}))
    assert fp8.weights_gib == pytest.approx(((params - embed) * 1 + embed * 2) / GIB)


def test_kv_cache_in_fp8_and_memory_utilization_from_engine_args() -> None:
    report = capacity.estimate(spec({"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 32768,
                                     "engine_args": {"kv-cache-dtype": "fp8", "gpu-memory-utilization": 0.5}},
                                    gpu="L4"))
    assert report.kv_bytes_per_token == 2 * 28 * 4 * 128 * 1
    assert report.available_gib == pytest.approx(24 * 0.5)


def test_attention_heads_must_divide_over_the_gpus() -> None:
    with pytest.raises(InputError) as caught:
        capacity.check(spec({"id": "Qwen/Qwen2.5-0.5B-Instruct"}, gpu="L4", count=4))
    assert "14 attention heads" in caught.value.message
    assert "one of 1, 2" in caught.value.hint


def test_local_model_is_sized_from_its_safetensors_headers(tiny_model: Path) -> None:
    report = capacity.check(spec({"id": str(tiny_model), "dtype": "bfloat16"}, gpu="T4"))
    config = json.loads((tiny_model / "config.json").read_text())
    shape = Shape.from_config(config)
    assert report.params_source.startswith("safetensors headers")
    assert report.params_b * 1e9 == pytest.approx(shape.params())  # headers and config agree
    assert report.weights_gib == pytest.approx(shape.params() * 2 / GIB)
    assert report.max_model_len == config["max_position_embeddings"]
    assert report.fits


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """A safetensors file with these (dtype, shape, bytes) tensors, zero-filled."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def test_a_local_prequantized_checkpoint_counts_its_bytes_on_disk(tmp_path: Path) -> None:
    model = tmp_path / "awq-model"
    model.mkdir()
    config = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "vocab_size": 512, "max_position_embeddings": 512,
              "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    (model / "config.json").write_text(json.dumps(config))
    write_safetensors(model / "model.safetensors", {"qweight": ("I32", [128, 32], 16384), "embed": ("BF16", [512, 128], 131072)})
    report = capacity.estimate(spec({"id": str(model)}, gpu="T4"))
    assert report.weights_gib * GIB == pytest.approx(16384 + 131072)
    assert report.precision == "awq 4-bit"
    assert report.params_b * 1e9 == Shape.from_config(config).params()  # packed ints are not parameters


def test_config_json_from_the_hugging_face_cache(tmp_path: Path) -> None:
    repo = tmp_path / "hf-home" / "hub" / "models--acme--chat-3b"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    config = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 16,
              "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096}
    (snapshot / "config.json").write_text(json.dumps(config))
    report = capacity.estimate(spec({"id": "acme/chat-3b", "params_b": 99}))
    assert "Hugging Face cache" in report.params_source  # config.json wins over params_b
    assert report.params_b * 1e9 == Shape.from_config(config).params()
    assert report.kv_bytes_per_token == 2 * 24 * 4 * 128 * 2


def test_params_b_sizes_an_unknown_model_without_a_kv_estimate() -> None:
    report = capacity.check(spec({"id": "acme/unknown-13b", "params_b": 13}))
    assert report.weights_gib == pytest.approx(13e9 * 2 / GIB)
    assert report.params_source == "model.params_b"
    assert report.kv_gib_per_sequence is None
    assert any("KV cache not counted" in note for note in report.notes)


def test_an_unknown_model_passes_with_a_note() -> None:
    report = capacity.check(spec({"id": "acme/mystery"}))
    assert report.fits is None and report.weights_gib is None
    assert any("set model.params_b" in note for note in report.notes)


def test_no_gpu_means_no_check() -> None:
    assert capacity.check(spec({"id": "acme/mystery"}, gpu=None)) is None


# -- cold start -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gb", "low", "high"),
    [(2, 5, 15), (4, 5, 15), (12, 10, 30), (20, 15, 45), (60, 30, 82.5), (100, 45, 120), (200, 90, 240)],
)
def test_reported_cold_start_range_by_weights_size(gb: float, low: float, high: float) -> None:
    # cold-start.md bands, anchored at 4 GB (5-15 s), 20 GB (15-45 s), 100 GB (45-120 s)
    assert capacity.reported_range(gb) == pytest.approx((low, high))


def test_measured_floor() -> None:
    # cold-start.md: 3.6 s import torch + 0.3 s CUDA + 16 GB at 1.6 GB/s = 13.9 s; from RAM 5.7 GB/s
    assert capacity.floor_s(16, "disk") == pytest.approx(13.9)
    assert capacity.floor_s(16, "ram") == pytest.approx(3.9 + 16 / 5.7)
    assert capacity.floor_s(141, "pinned") == pytest.approx(3.9 + 141 / 55)


def cold(report: capacity.CapacityReport, provider: str) -> capacity.ColdStart:
    return next(c for c in report.cold_start if c.provider == provider)


def test_cold_start_levers_per_provider() -> None:
    cat = catalog.load(live=False)
    model = {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 8192, "engine_args": {"enforce-eager": True}}
    report = capacity.estimate(spec(model), catalog=cat)
    gb = 8.03e9 * 2 / 1e9  # 16.06 GB
    low, high = capacity.reported_range(gb)
    runpod, modal, lam = cold(report, "runpod"), cold(report, "modal"), cold(report, "lambda")
    # FlashBoot: from host memory at best; the full range otherwise
    assert runpod.low_s == pytest.approx(capacity.floor_s(gb, "ram")) and runpod.high_s == pytest.approx(high)
    assert any("FlashBoot" in lever for lever in runpod.levers)
    assert any("enforce-eager" in lever for lever in runpod.levers)
    # GPU memory snapshot: 3-10x faster, never below the pinned-memory floor
    assert modal.low_s == pytest.approx(max(low / 10, capacity.floor_s(gb, "pinned")))
    assert modal.high_s == pytest.approx(high / 3)
    # a VM starts once per deploy: 4-6 minutes of boot plus the weights
    assert not lam.scales_to_zero and lam.low_s == pytest.approx(240 + capacity.floor_s(gb, "disk"))

    off = capacity.estimate(spec(model, startup={"fast_boot": False}), catalog=cat)
    assert cold(off, "runpod").low_s == pytest.approx(max(low, capacity.floor_s(gb, "ram")))
    assert cold(off, "modal").high_s == pytest.approx(high)
    assert any("fast_boot is off" in note for note in cold(off, "modal").notes)

    two = capacity.estimate(spec(model, count=2), catalog=cat)
    assert any("off for 2 GPUs" in note for note in cold(two, "modal").notes)
    warm = capacity.estimate(spec(model, scaling={"min_replicas": 1, "max_replicas": 2}), catalog=cat)
    assert any("min_replicas 1" in lever for lever in cold(warm, "runpod").levers)
