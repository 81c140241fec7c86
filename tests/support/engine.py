"""Start "the engine" for emulated GPU hosts: real vLLM on this CPU, or a fast stub.

Emulators (RunPod workers, Lambda VMs, Modal functions) call `launch_vllm` with the argv that
follows `vllm serve` exactly as the adapter produced it (model first, then flags). The launch
behaves like a port mapping on a GPU host: `--host`/`--port` are rewritten to 127.0.0.1 and a
loopback port; nothing else is changed, so a wrong flag fails.

Which engine: `real=True` (tests marked `engine`), else DEPLOYER_TEST_ENGINE=real|stub (default
stub). The stub validates every flag against the real vLLM parser's flag table (dumped once from
the installed vllm into .cache/) and needs the model directory to exist.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
TINY_MODEL = CACHE / "tiny-model"
FLAGS_FILE = CACHE / "vllm-flags.json"
IN_PROCESS_ENGINE = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
"""Run vLLM's engine core inside the API server process (vLLM's own switch). The suite sets it
for every process it starts, local deployments included: each separate engine process would
import torch again, doubling a start on this 2-core machine."""
CONTRACTS = REPO / "tests" / "contracts"
"""The providers' documents the suite checks against, each with its provenance (README there)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def tiny_model() -> Path:
    """The project's tiny model (built on first use)."""
    from deployer.tinymodel import build

    return build(TINY_MODEL)


def vllm_flag_table() -> dict:
    """{option string: {"takes_value": bool, "choices": [...] | None, "negatable": bool}}, from the installed vLLM."""
    if FLAGS_FILE.exists():
        return json.loads(FLAGS_FILE.read_text())
    CACHE.mkdir(exist_ok=True)
    code = r"""
import argparse, json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.launchers.cli_args import make_arg_parser
p = make_arg_parser(FlexibleArgumentParser())
out = {}
for a in p._actions:
    for s in a.option_strings:
        out[s] = {"takes_value": a.nargs != 0, "choices": list(a.choices) if a.choices else None,
                  "negatable": isinstance(a, argparse.BooleanOptionalAction)}
json.dump(out, sys.stdout)
"""
    text = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300
    ).stdout
    tmp = FLAGS_FILE.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(FLAGS_FILE)
    return json.loads(text)


def use_real(real: bool | None) -> bool:
    if real is not None:
        return real
    return os.environ.get("DEPLOYER_TEST_ENGINE", "stub") == "real"


def _rewrite_listen(argv: list[str], host: str, port: int) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in ("--host", "--port"):
            skip = True
            continue
        if arg.startswith(("--host=", "--port=")):
            continue
        out.append(arg)
    return out + ["--host", host, "--port", str(port)]


@dataclass
class EngineProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path
    real: bool
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """Stop the engine's process group; idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def wait_healthy(self, timeout: float = 180) -> bool:
        """Block until GET /health answers 200, the process dies, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def launch_vllm(
    serve_args: list[str],
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    log_path: Path,
    real: bool | None = None,
) -> EngineProcess:
    """Start the engine for `vllm serve <serve_args>` on `host`:`port` (default: 127.0.0.1 and a
    free port). `host` may be any 127.x.y.z address, so emulated VMs can each have their own IP.

    Does not wait for readiness. The real engine gets this CPU's settings the way a GPU host's
    hardware would differ: `VLLM_CPU_KVCACHE_SPACE=1`, and `--gpu-memory-utilization 0.3` unless
    the command sets it (on CPU it is the share of RAM; the GPU default 0.92 fails here). A
    one-GPU command also gets the in-process engine (IN_PROCESS_ENGINE): serving is the same, a
    start takes about 20 s here instead of about 40 s, since vLLM's engine and worker processes
    each import torch again.
    """
    port = port or free_port()
    real = use_real(real)
    argv = _rewrite_listen(list(serve_args), host, port)
    proc_env = {**os.environ, **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if real:
        model, flags = argv[0], argv[1:]
        if "--gpu-memory-utilization" not in flags:
            flags += ["--gpu-memory-utilization", "0.3"]
        if not any(f.startswith(("--tensor-parallel-size", "--distributed-executor-backend")) for f in flags):
            flags += ["--distributed-executor-backend", "uni"]
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *flags]
        proc_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        proc_env.update({k: v for k, v in IN_PROCESS_ENGINE.items() if k not in (env or {})})
    else:
        vllm_flag_table()  # make sure the table exists before the stub needs it
        cmd = [sys.executable, "-m", "tests.support.stub_engine", *argv]
        proc_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), proc_env.get("PYTHONPATH")]))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=proc_env, cwd=REPO, start_new_session=True,
        )
    return EngineProcess(proc=proc, port=port, log_path=log_path, real=real, host=host)
