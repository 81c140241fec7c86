"""Run the RunPod and Lambda Cloud emulators by hand, to try deployer without accounts.

    python -m tests.emulators [--real-engine] [--dir DIR]

Prints the `export` lines that point deployer at them (base URLs, API keys, the emulators' fast
timings), then serves until Ctrl-C, when every emulated worker, VM and engine is stopped.
Emulated GPUs run the stub engine (instant, answers "stub stub ...") unless --real-engine is
given, which runs the real vLLM on this CPU (the tiny model: `make model`). The emulators check
every request against the providers' published documents and print any mismatch on exit.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import tempfile
import threading
from pathlib import Path

from tests.emulators.lambda_cloud.server import LambdaEmulator
from tests.emulators.runpod.fixture import FAST_SETTINGS, make_emulator

LAMBDA_SPEED = 1000.0  # emulated seconds per real second: a VM boots in well under a second
LAMBDA_SETTINGS = {"DEPLOYER_LAMBDA_POLL_INTERVAL": "0.1", "DEPLOYER_LAMBDA_PROBE_INTERVAL": "0.3",
                   "DEPLOYER_LAMBDA_RETRY_BACKOFF": "0.05", "DEPLOYER_LAMBDA_RATE_INTERVAL": "0.1",
                   "DEPLOYER_LAMBDA_LAUNCH_INTERVAL": "1.2"}  # the emulator's clock is faster than Lambda's


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-engine", action="store_true", help="run the real vLLM for emulated GPUs")
    parser.add_argument("--dir", type=Path, default=None, help="where the emulators keep their files (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="deployer-emulators-"))
    real = True if args.real_engine else None
    runpod = make_emulator(workdir / "runpod", real_engine=real)
    lambda_cloud = LambdaEmulator(workdir / "lambda", speed=LAMBDA_SPEED, real_engine=real).start()
    env = {**runpod.env(), **FAST_SETTINGS, "DEPLOYER_LAMBDA_API_URL": lambda_cloud.base_url,
           "LAMBDA_API_KEY": lambda_cloud.api_key, "DEPLOYER_LAMBDA_KEYS_FILE": str(workdir / "no-lambda-keys"),
           **LAMBDA_SETTINGS}
    print(f"# RunPod and Lambda Cloud emulators are up (files in {workdir}). In another shell:")
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    print("# Ctrl-C (or SIGTERM) here stops them, and every emulated worker, VM and engine.", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        runpod.close()
        lambda_cloud.stop()
        for problem in [*runpod.violations, *lambda_cloud.violations]:
            print(f"contract violation: {problem}")


if __name__ == "__main__":
    main()
