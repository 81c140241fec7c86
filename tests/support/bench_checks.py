"""What any honest `deployer bench --json` report of a real engine must show (shared by the
real-engine tests that bench their deployment: test_local_e2e.py, test_runpod_engine.py)."""

from __future__ import annotations

from typing import Any

import pytest


def plausible(doc: dict[str, Any], requests: int, max_tokens: int, prompt_words: int) -> None:
    """`doc` reports `requests` successful requests of exactly `max_tokens` tokens each (bench asks
    vLLM to ignore the end of sequence) for prompts of `prompt_words` words."""
    assert doc["requests"]["ok"] == requests and doc["errors"] == {}, doc["error_samples"]
    tokens = doc["tokens"]
    assert tokens["output_total"] == requests * max_tokens
    # one chunk per token, except where vLLM merged the tokens of a slow reader into one chunk
    assert requests <= tokens["chunks_total"] <= tokens["output_total"], tokens
    assert tokens["chunks_equal_usage"] == (tokens["chunks_total"] == tokens["output_total"])
    assert tokens["prompt_counted_mean"] >= prompt_words  # a word is at least one token
    for q in ("p50", "p90", "p99", "max"):
        assert 0 < doc["ttft_s"][q] < doc["e2e_s"][q]
    assert doc["itl_s"]["n"] == tokens["chunks_total"] - requests and doc["tpot_s"]["n"] == requests
    assert 0 < doc["tpot_s"]["mean"] * (max_tokens - 1) < doc["e2e_s"]["mean"]
    assert doc["throughput"]["output_tokens_per_s"] == pytest.approx(requests * max_tokens / doc["duration_s"])
