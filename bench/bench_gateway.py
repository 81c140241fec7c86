"""The gateway's overhead against calling vLLM directly, printed as ratios (not a timed test).

    .venv/bin/python bench/bench_gateway.py [--requests N] [--streams N] [--tokens N]

Deploys configs/local-tiny.yaml (real vLLM on this machine) into a temporary DEPLOYER_HOME,
starts `deployer gateway run` in front of it, and measures in one run, interleaving gateway and
direct calls so that drift in the machine's load hits both alike:

1. Latency of a one-token completion (non-streaming), N requests each way, one at a time:
   p50 and p99, the ratio gateway/direct and the milliseconds added. Targets: p50 ratio <= 1.05
   and < 2 ms added at p50.
2. 64 concurrent streams of 32 tokens, on vLLM: requests/s, completion tokens/s (from `usage`),
   median time to first token; each way, the median of three runs.
3. The same 64 streams against a backend that uses no CPU to speak of (a Starlette app streaming
   32 chunks at once): what the gateway itself can relay, apart from competing with vLLM's CPU
   inference for this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
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

LIGHT_BACKEND = r'''
import asyncio, json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

async def chat(request):
    body = await request.json()
    async def events():
        for _ in range(body["max_tokens"]):
            yield b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
            await asyncio.sleep(0)
        usage = {"prompt_tokens": 1, "completion_tokens": body["max_tokens"], "total_tokens": body["max_tokens"] + 1}
        yield ("data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n").encode()
        yield b"data: [DONE]\n\n"
    return StreamingResponse(events(), media_type="text/event-stream")

async def models(request):
    return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s")


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
    completion = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal completion
        start = time.perf_counter()
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": tokens,
                "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", f"{url}/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as answer:
            answer.raise_for_status()
            buffer = b""
            async for data in answer.aiter_raw():
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data: {"):
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        completion += event["usage"]["completion_tokens"]
                    elif start and event.get("choices"):
                        first.append(time.perf_counter() - start)
                        start = 0.0  # only the first

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=count + 8)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(count)))
        wall = time.perf_counter() - start
    return {"requests_per_s": count / wall, "tokens_per_s": completion / wall,
            "first_token_p50_s": statistics.median(first) if first else float("nan")}


def median_of_three(direct: tuple[str, str], gateway: tuple[str, str], count: int, tokens: int) -> dict[str, dict]:
    """Three runs each way, alternating (d g g d d g): the run with the median tokens/s."""
    runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
    for name in ("direct", "gateway", "gateway", "direct", "direct", "gateway"):
        url, key = direct if name == "direct" else gateway
        runs[name].append(asyncio.run(streams(url, key, count, tokens)))
    return {name: sorted(found, key=lambda r: r["tokens_per_s"])[1] for name, found in runs.items()}


def start_gateway(env: dict[str, str], home: Path, name: str, backend: str) -> tuple[subprocess.Popen, tuple[str, str]]:
    port = free_port()
    config = home / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"name": name, "listen": {"port": port}, "health": {"interval": 30},
                                      "routes": [{"model": "tiny", "backends": [backend]}]}))
    proc = subprocess.Popen([*DEPLOYER, "gateway", "run", str(config)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(f"http://127.0.0.1:{port}/health")
    return proc, (f"http://127.0.0.1:{port}/v1", (home / "keys" / "gateways" / f"{name}.key").read_text().strip())


def record_light_backend(home: Path, url: str) -> str:
    """Record the CPU-light backend as a deployment named `light`, as a deploy would; its key."""
    sys.path.insert(0, str(REPO))
    from deployer import keys
    from deployer.settings import Settings
    from deployer.spec import validate_spec
    from deployer.state import StateStore

    spec = validate_spec({"name": "light", "model": {"id": "/nonexistent/light", "served_name": "tiny"}})
    key = keys.endpoint_key(spec, Settings(home=home), create=True)
    store = StateStore(home)
    store.begin("light", "local", "bench", spec.model_dump(mode="json"), "creating")
    store.set_status("light", "local", "ready", url=url, key_source="the deployment's API key")
    store.close()
    return key or ""


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
    light_port = free_port()
    light = subprocess.Popen([sys.executable, "-c", LIGHT_BACKEND, str(light_port)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [light]
    try:
        wait_for(f"http://127.0.0.1:{light_port}/v1/models")
        light_direct = (f"http://127.0.0.1:{light_port}/v1", record_light_backend(home, f"http://127.0.0.1:{light_port}/v1"))
        proc, gateway = start_gateway(env, home, "bench", "tiny")
        procs.append(proc)
        proc, light_gateway = start_gateway(env, home, "bench-light", "light")
        procs.append(proc)
        report_latency(latency(direct, gateway, args.requests))
        report_streams(f"{args.streams} concurrent streams of {args.tokens} tokens, real vLLM (median of three runs each)",
                       median_of_three(direct, gateway, args.streams, args.tokens))
        report_streams(f"{args.streams} concurrent streams of {args.tokens} chunks, CPU-light backend (median of three)",
                       median_of_three(light_direct, light_gateway, args.streams, args.tokens))
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        subprocess.run([*DEPLOYER, "destroy", "tiny"], capture_output=True, env=env, cwd=REPO)


def report_latency(lat: dict[str, list[float]]) -> None:
    d50, g50 = statistics.median(lat["direct"]), statistics.median(lat["gateway"])
    d99, g99 = percentile(lat["direct"], 0.99), percentile(lat["gateway"], 0.99)
    ratio50, added50 = g50 / d50, (g50 - d50) * 1000
    print(f"one-token completion on vLLM, {len(lat['direct'])} each way, interleaved")
    print(f"  p50  direct {d50 * 1000:6.2f} ms  gateway {g50 * 1000:6.2f} ms  ratio {ratio50:5.3f} "
          f"(goal <= {GOAL_RATIO}: {'ok' if ratio50 <= GOAL_RATIO else 'MISS'})  added {added50:4.2f} ms "
          f"(goal < {GOAL_ADDED_MS:g} ms: {'ok' if added50 < GOAL_ADDED_MS else 'MISS'})")
    print(f"  p99  direct {d99 * 1000:6.2f} ms  gateway {g99 * 1000:6.2f} ms  ratio {g99 / d99:5.3f}  "
          f"added {(g99 - d99) * 1000:4.2f} ms")


def report_streams(title: str, picked: dict[str, dict]) -> None:
    d, g = picked["direct"], picked["gateway"]
    print(title)
    for name, r in (("direct ", d), ("gateway", g)):
        print(f"  {name} {r['requests_per_s']:6.1f} requests/s {r['tokens_per_s']:7.0f} tokens/s  "
              f"first token p50 {r['first_token_p50_s'] * 1000:5.0f} ms")
    print(f"  ratio gateway/direct: throughput {g['tokens_per_s'] / d['tokens_per_s']:5.3f}")


if __name__ == "__main__":
    main()
