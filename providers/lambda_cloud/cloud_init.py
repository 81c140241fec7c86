"""The VM's user_data: a #cloud-config that starts vLLM in Docker on first boot.

Rendered from templates/lambda-cloud-init.yaml.j2 (through deployer.templating). The server is
the pinned vllm/vllm-openai image running `vllm serve` with exactly the arguments of the shared
command builder, `--api-key`, all GPUs, `--ipc=host`, restart policy `unless-stopped` (so it
survives crashes and reboots) and the Hugging Face cache on a host directory: the Lambda
filesystem when one is configured, else the VM's disk.

Secrets: the endpoint key is on the vLLM command line and the HF token in a 0600 env file. Both
live only in the instance's metadata (root on the VM can read them; Lambda's API never returns
user_data). With `Secrets.redacted()` (plan) they read "<redacted>".
"""

from __future__ import annotations

import json

from deployer import templating
from deployer.provider import Secrets, resource_name
from deployer.spec import Spec
from deployer.vllm_command import serve_argv

TEMPLATE = "lambda-cloud-init.yaml.j2"
CONTAINER_PORT = 8000  # vLLM inside the container; `providers.lambda.port` is the host side
CONTAINER_CACHE = "/root/.cache/huggingface"
VM_CACHE = "/home/ubuntu/.cache/huggingface"
ENV_FILE = "/etc/deployer/vllm.env"
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
    ]
    if secrets.hf_token:
        argv += ["--env-file", ENV_FILE]
    return argv + [opts.image, *serve_argv(spec, host="0.0.0.0", port=CONTAINER_PORT, api_key=secrets.api_key)]


def render_user_data(spec: Spec, secrets: Secrets) -> str:
    """The #cloud-config text. Pure. Raises ValueError if it would exceed Lambda's 1 MB limit."""
    env = {"HF_TOKEN": secrets.hf_token} if secrets.hf_token else {}
    text = templating.render(
        TEMPLATE,
        deployment=spec.name,
        env_file=ENV_FILE,
        env=env,
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
