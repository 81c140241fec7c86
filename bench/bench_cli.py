"""Benchmarks with targets, printed as ratios (not a timed test).

    .venv/bin/python bench/bench_cli.py [--runs N] [--skip-engine]

1. `deployer --help` and `deployer plan configs/local-tiny.yaml`: median wall time of N runs,
   against 0.15 s and 0.3 s.
2. Local time-to-ready: `deployer deploy configs/local-tiny.yaml` until it returns (it returns once
   the server answers /v1/models and a one-token completion) against starting the same vLLM
   command by hand and polling the same two requests. Target: within 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DEPLOYER = [sys.executable, "-m", "deployer"]
CONFIG = str(REPO / "configs" / "local-tiny.yaml")


def median_seconds(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=REPO)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_vllm_seconds(env: dict[str, str], home: Path) -> float:
    """Start the command `plan` shows, by hand, and time it to the same readiness proof."""
    plan = json.loads(subprocess.run([*DEPLOYER, "plan", CONFIG, "--json"], check=True, capture_output=True,
                                     env=env, cwd=REPO, text=True).stdout)
    files = plan["artifacts"]["files"]
    script = files["local/tiny/serve.sh"]
    guard_dir = home / "bare"  # the same files serve.sh runs beside (the key guard)
    guard_dir.mkdir(exist_ok=True)
    for path, text in files.items():
        if path.endswith(".py"):
            (guard_dir / Path(path).name).write_text(text)
    exec_line = next(line for line in script.splitlines() if line.startswith("exec "))
    argv = [sys.executable if a == "$DEPLOYER_PYTHON" else a for a in shlex.split(exec_line)[1:]]
    port = 18700
    argv = [a if a != "$PORT" else str(port) for a in argv]
    key = "bench-key"
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env={**env, "VLLM_API_KEY": key, "VLLM_CPU_KVCACHE_SPACE": "1",
                                       "PYTHONPATH": str(guard_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        while True:
            try:
                base = f"http://127.0.0.1:{port}/v1"
                if httpx.get(base + "/models", headers=headers, timeout=2).status_code == 200:
                    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 1}
                    if httpx.post(base + "/completions", json=body, headers=headers, timeout=30).status_code == 200:
                        return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit("bare vLLM exited before answering")
            time.sleep(0.25)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def deployer_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([*DEPLOYER, "deploy", CONFIG, "--json"], check=True, capture_output=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - start
    subprocess.run([*DEPLOYER, "destroy", "tiny"], check=True, capture_output=True, env=env, cwd=REPO)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--engine-runs", type=int, default=2)
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DEPLOYER_HOME": tmp}
        rows = []
        help_s = median_seconds([*DEPLOYER, "--help"], args.runs, env)
        rows.append(("deployer --help (median)", help_s, 0.15))
        plan_s = median_seconds([*DEPLOYER, "plan", CONFIG], args.runs, env)
        rows.append(("deployer plan local-tiny (median)", plan_s, 0.30))
        for label, seconds, target in rows:
            verdict = "ok" if seconds <= target else "OVER"
            print(f"{label:<40} {seconds:7.3f} s   target {target:.2f} s   ratio {seconds / target:5.2f}  {verdict}")
        if args.skip_engine:
            return
        bare = statistics.median(bare_vllm_seconds(env, Path(tmp)) for _ in range(args.engine_runs))
        ours = statistics.median(deployer_seconds(env) for _ in range(args.engine_runs))
        ratio = ours / bare
        verdict = "ok" if ratio <= 1.10 else "OVER"
        print(f"{'local time-to-ready: deployer / bare vLLM':<40} {ours:7.2f} s / {bare:.2f} s   "
              f"target <= 1.10   ratio {ratio:5.2f}  {verdict}")


if __name__ == "__main__":
    main()
