"""The VM's user_data: a #cloud-config that starts vLLM in Docker on first boot.

Rendered from templates/lambda-cloud-init.yaml.j2 (through deployer.templating). The server is
the pinned vllm/vllm-openai image running `vllm serve` with exactly the arguments of the shared
command builder, all GPUs, `--ipc=host`, restart policy `unless-stopped` (so it survives
crashes and reboots) and the Hugging Face cache on a host directory: the Lambda filesystem
when one is configured, else the VM's disk.

The VM's IP is public, and vLLM's own key check covers /v1 only: cloud-init writes deployer's
key guard to /opt/deployer (mounted read-only into the container, on its PYTHONPATH) and vLLM
loads it with `--middleware`, so every route but GET /health needs the key.

Secrets: the endpoint key (VLLM_API_KEY, read by vLLM and the guard) and the HF token are in a
0600 env file, never on a command line. They live only in the instance's metadata (root on the
VM can read them; Lambda's API never returns user_data). With `Secrets.redacted()` (plan) they
read "<redacted>".
"""

from __future__ import annotations

import json

from deployer import templating
from deployer.provider import Secrets, resource_name
from deployer.spec import Spec
from deployer.vllm_command import GUARD_FILE, guard_source, serve_argv

TEMPLATE = "lambda-cloud-init.yaml.j2"
CONTAINER_PORT = 8000  # vLLM inside the container; `providers.lambda.port` is the host side
CONTAINER_CACHE = "/root/.cache/huggingface"
VM_CACHE = "/home/ubuntu/.cache/huggingface"
ENV_FILE = "/etc/deployer/vllm.env"
GUARD_DIR = "/opt/deployer"  # the key guard's directory, on the VM and in the container
MAX_USER_DATA = 1_000_000  # Lambda: plain text, at most 1 MB


def filesystem_mount(name: str) -> str:
    """Where Lambda mounts a filesystem attached at launch by name (its default mount point)."""
    return f"/lambda/nfs/{name}"


def cache_dir(spec: Spec) -> str:
    fs = spec.options("lambda").filesystem
    return f"{filesystem_mount(fs)}/huggingface" if fs else VM_CACHE


def docker_run_argv(spec: Spec, secrets: Secrets) -> list[str]:
    """`docker run ... IMAGE <vllm serve args>` for this spec (the image's entrypoint is `vllm serve`)."""
    opts = spec.options("lambda")
    argv = [
        "docker", "run", "--detach",
        "--name", resource_name(spec.name),
        "--restart", "unless-stopped",
        "--gpus", "all",
        "--ipc=host",
        "--publish", f"{opts.port}:{CONTAINER_PORT}",
        "--volume", f"{cache_dir(spec)}:{CONTAINER_CACHE}",
        "--volume", f"{GUARD_DIR}:{GUARD_DIR}:ro",
        "--env", f"PYTHONPATH={GUARD_DIR}",
        "--env-file", ENV_FILE,
    ]
    return argv + [opts.image, *serve_argv(spec, host="0.0.0.0", port=CONTAINER_PORT, api_key=None, guard=True)]


def render_user_data(spec: Spec, secrets: Secrets) -> str:
    """The #cloud-config text. Pure. Raises ValueError if it would exceed Lambda's 1 MB limit, or
    if a secret holds a line break (it would end its line of the env file)."""
    env = {"VLLM_API_KEY": secrets.api_key}
    if secrets.hf_token:
        env["HF_TOKEN"] = secrets.hf_token
    broken = [name for name, value in env.items() if "\n" in value or "\r" in value]
    if broken:
        raise ValueError(f"the {' and '.join(broken)} value holds a line break, which an env file cannot carry")
    text = templating.render(
        TEMPLATE,
        deployment=spec.name,
        env_file=ENV_FILE,
        env=env,
        guard_path=f"{GUARD_DIR}/{GUARD_FILE}",
        guard_source=guard_source(),
        # Commands are YAML flow sequences of JSON strings: no shell, no quoting to get wrong.
        runtime_setup=json.dumps(["bash", "-c", _RUNTIME_SETUP]),
        make_cache=json.dumps(["mkdir", "-p", cache_dir(spec)]),
        docker_run=json.dumps(docker_run_argv(spec, secrets)),
    )
    if len(text.encode()) > MAX_USER_DATA:
        raise ValueError("the rendered user_data exceeds Lambda's 1 MB limit")
    return text


# Lambda Stack ships Docker and the NVIDIA driver; register the NVIDIA runtime (as dstack does)
# and wait for the daemon before `docker run --gpus` needs it.
_RUNTIME_SETUP = (
    "if command -v nvidia-ctk >/dev/null 2>&1; then nvidia-ctk runtime configure --runtime=docker"
    " && systemctl restart docker; fi; until docker info >/dev/null 2>&1; do sleep 2; done"
)
