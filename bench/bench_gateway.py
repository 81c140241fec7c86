"""The gateway's overhead against calling vLLM directly, printed as ratios (not a timed test).

    .venv/bin/python bench/bench_gateway.py [--requests N] [--streams N]

Deploys configs/local-tiny.yaml (real vLLM on this machine) into a temporary DEPLOYER_HOME,
starts `deployer gateway run` in front of it, and measures in one run, interleaving gateway and
direct calls so that drift in the machine's load hits both alike:

1. Latency of a one-token completion (non-streaming), N requests each way, one at a time:
   p50 and p99, the ratio gateway/direct and the milliseconds added. Targets: p50 ratio <= 1.05
   and < 2 ms added at p50.
2. 64 concurrent streams of 32 tokens: requests per second and tokens per second each way, and
   the gateway's time to first token against direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOYER = [sys.executable, "-m", "deployer"]
CONFIG = str(REPO / "configs" / "local-tiny.yaml")
GOAL_RATIO, GOAL_ADDED_MS = 1.05, 2.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(direct: tuple[str, str], gateway: tuple[str, str], requests: int) -> dict[str, list[float]]:
    """Seconds per one-token completion, alternating direct and gateway calls."""
    out: dict[str, list[float]] = {"direct": [], "gateway": []}
    with httpx.Client(timeout=60) as client:
        for i in range(requests + 10):
            order = (("direct", direct), ("gateway", gateway)) if i % 2 else (("gateway", gateway), ("direct", direct))
            for name, (url, key) in order:
                start = time.perf_counter()
                answer = client.post(f"{url}/completions", headers={"Authorization": f"Bearer {key}"},
                                     json={"model": "tiny", "prompt": "Hello", "max_tokens": 1})
                elapsed = time.perf_counter() - start
                answer.raise_for_status()
                if i >= 10:  # warm-up discarded
                    out[name].append(elapsed)
    return out


async def streams(url: str, key: str, count: int, tokens: int) -> dict[str, float]:
    """`count` concurrent streams of `tokens` tokens: throughput and the median time to first token."""
    first: list[float] = []
    received = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal received
        start = time.perf_counter()
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": tokens,
                "stream": True, "ignore_eos": True}
        async with client.stream("POST", f"{url}/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as answer:
            answer.raise_for_status()
            buffer, mine = b"", 0
            async for data in answer.aiter_raw():
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: {") and b'"content"' in line:
                        if mine == 0:
                            first.append(time.perf_counter() - start)
                        mine += 1
            received += mine

    limits = httpx.Limits(max_connections=count + 8)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(count)))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": received, "requests_per_s": count / wall, "tokens_per_s": received / wall,
            "first_token_p50_s": statistics.median(first) if first else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="one-token completions each way (default 300)")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams (default 64)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per stream (default 32)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="deployer-bench-gateway-"))
    env = {**os.environ, "DEPLOYER_HOME": str(home)}
    deployed = subprocess.run([*DEPLOYER, "deploy", CONFIG, "--json"], capture_output=True, text=True, env=env, cwd=REPO)
    if deployed.returncode != 0:
        raise SystemExit(f"deploy failed: {deployed.stderr[-2000:]}")
    direct = (json.loads(deployed.stdout)["url"], (home / "keys" / "tiny.key").read_text().strip())
    gateway_config = home / "gateway.yaml"
    port = 18800
    gateway_config.write_text(yaml.safe_dump({"name": "bench", "listen": {"port": port},
                                              "routes": [{"model": "tiny", "backends": ["tiny"]}]}))
    proc = subprocess.Popen([*DEPLOYER, "gateway", "run", str(gateway_config)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        gateway = (f"http://127.0.0.1:{port}/v1", "")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        gateway = (gateway[0], (home / "keys" / "gateways" / "bench.key").read_text().strip())
        report(latency(direct, gateway, args.requests), direct, gateway, args)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        subprocess.run([*DEPLOYER, "destroy", "tiny"], capture_output=True, env=env, cwd=REPO)


def report(lat: dict[str, list[float]], direct: tuple[str, str], gateway: tuple[str, str],
           args: argparse.Namespace) -> None:
    d50, g50 = statistics.median(lat["direct"]), statistics.median(lat["gateway"])
    d99, g99 = percentile(lat["direct"], 0.99), percentile(lat["gateway"], 0.99)
    ratio50, added50 = g50 / d50, (g50 - d50) * 1000
    ok = ratio50 <= GOAL_RATIO and added50 < GOAL_ADDED_MS
    print(f"one-token completion, {len(lat['direct'])} each way, interleaved")
    print(f"  p50   direct {d50 * 1000:7.2f} ms   gateway {g50 * 1000:7.2f} ms   ratio {ratio50:5.3f}   "
          f"added {added50:5.2f} ms   goal <= {GOAL_RATIO} and < {GOAL_ADDED_MS} ms   {'ok' if ok else 'MISS'}")
    print(f"  p99   direct {d99 * 1000:7.2f} ms   gateway {g99 * 1000:7.2f} ms   ratio {g99 / d99:5.3f}   "
          f"added {(g99 - d99) * 1000:5.2f} ms")
    runs = {}
    for name, (url, key) in (("direct", direct), ("gateway", gateway), ("direct ", direct), ("gateway ", gateway)):
        runs.setdefault(name.strip(), []).append(asyncio.run(streams(url, key, args.streams, args.tokens)))
    best = {name: max(r, key=lambda x: x["tokens_per_s"]) for name, r in runs.items()}
    d, g = best["direct"], best["gateway"]
    print(f"{args.streams} concurrent streams of {args.tokens} tokens (best of two runs each)")
    print(f"  direct  {d['requests_per_s']:6.1f} requests/s  {d['tokens_per_s']:7.0f} tokens/s   "
          f"first token p50 {d['first_token_p50_s'] * 1000:6.0f} ms")
    print(f"  gateway {g['requests_per_s']:6.1f} requests/s  {g['tokens_per_s']:7.0f} tokens/s   "
          f"first token p50 {g['first_token_p50_s'] * 1000:6.0f} ms   throughput ratio "
          f"{g['tokens_per_s'] / d['tokens_per_s']:5.3f}")


if __name__ == "__main__":
    main()
