"""An emulated Lambda VM: it runs what the adapter's user_data tells it to, as cloud-init would.

Boot reads the `#cloud-config`, writes `write_files` into the VM's own directory (its root
filesystem, `EmulatedVm.root`), walks `runcmd`, and emulates the one `docker run` of the
vllm/vllm-openai image: the arguments after the image become `vllm serve <args>` for
`tests.support.engine.launch_vllm`, bound on the VM's own loopback IP and the host side of the
`-p` mapping, so the adapter's http://IP:PORT/v1 leads to it unchanged. Paths the container
sees through PYTHONPATH resolve like docker's bind mounts (`-v SRC:DST`: DST is the VM's SRC;
elsewhere the image's own filesystem, which holds nothing the user_data wrote). Anything a
real VM would trip over leaves the server unreachable, with the reason in `problems`: no
`--gpus`, a port mapping that misses vLLM's port, vLLM listening on 127.0.0.1 inside the
container, an env file nobody wrote, a firewall that does not open the port. The container's
restart policy is honoured when the engine exits.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.engine import EngineProcess, free_port, launch_vllm

IMAGE_REPO = "vllm/vllm-openai"
VLLM_DEFAULT_PORT = 8000

_VALUE_OPTS = {
    "--name", "--restart", "--gpus", "-p", "--publish", "-v", "--volume", "--env-file", "-e", "--env",
    "--shm-size", "--ipc", "--runtime", "--network", "--mount", "--entrypoint", "--ulimit", "--log-driver",
    "--log-opt", "--user", "-u", "--workdir", "-w", "--label", "-l",
}
_FLAG_OPTS = {"-d", "--detach", "--rm", "-i", "-t", "-it", "--interactive", "--tty", "--privileged", "--init"}


class BootError(Exception):
    """The user_data cannot start a server (cloud-init or docker would fail)."""


@dataclass
class DockerRun:
    image: str
    serve_args: list[str]
    options: dict[str, list[str]] = field(default_factory=dict)

    def values(self, *names: str) -> list[str]:
        return [v for n in names for v in self.options.get(n, [])]


@dataclass
class CloudConfig:
    write_files: dict[str, str]
    runcmd: list[list[str]]


def parse_cloud_config(text: str) -> CloudConfig:
    """The parts of a #cloud-config the emulator acts on. Raises BootError on what cloud-init rejects."""
    if not text.startswith("#cloud-config"):
        raise BootError("user_data does not start with #cloud-config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BootError(f"user_data is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BootError("user_data is not a cloud-config mapping")
    files = {}
    for item in data.get("write_files") or []:
        if not isinstance(item, dict) or "path" not in item:
            raise BootError(f"write_files entry without a path: {item!r}")
        files[item["path"]] = str(item.get("content", ""))
    runcmd = []
    for item in data.get("runcmd") or []:
        if isinstance(item, str):
            runcmd.append(shlex.split(item))
        elif isinstance(item, list) and all(isinstance(x, (str, int, float)) for x in item):
            runcmd.append([str(x) for x in item])
        else:
            raise BootError(f"runcmd entry is neither a string nor a list of strings: {item!r}")
    return CloudConfig(files, runcmd)


def parse_docker_run(argv: list[str]) -> DockerRun:
    """`docker run [options] IMAGE [args]` as docker reads it. Raises BootError for unknown flags."""
    if argv[:2] != ["docker", "run"]:
        raise BootError(f"not a docker run command: {argv[:2]}")
    options: dict[str, list[str]] = {}
    i = 2
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if name in _FLAG_OPTS and not eq:
            options.setdefault(name, []).append("true")
        elif name in _VALUE_OPTS:
            if eq:
                value = inline
            else:
                if i + 1 >= len(argv):
                    raise BootError(f"docker: flag needs an argument: {arg}")
                i += 1
                value = argv[i]
            options.setdefault(name, []).append(value)
        else:
            raise BootError(f"docker: unknown flag: {arg}")
        i += 1
    if i >= len(argv):
        raise BootError("docker run without an image")
    return DockerRun(image=argv[i], serve_args=argv[i + 1:], options=options)


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def read_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


@dataclass
class BootPlan:
    """What the VM will run: the engine's argv and where it listens, or why it cannot."""

    docker: DockerRun
    host_port: int | None  # the published host port that leads to vLLM, None when none does
    env: dict[str, str]
    problems: list[str]
    notes: list[str]
    files: dict[str, str] = field(default_factory=dict)  # write_files: VM path -> content


def plan_boot(user_data: str, *, mounts: dict[str, str]) -> BootPlan:
    """Read user_data into a BootPlan. `mounts` maps attached filesystem names to mount points.
    Raises BootError when there is nothing to run at all."""
    config = parse_cloud_config(user_data)
    runs = [cmd for cmd in config.runcmd if cmd[:2] == ["docker", "run"]]
    if len(runs) != 1:
        raise BootError(f"expected exactly one `docker run` in runcmd, found {len(runs)}")
    docker = parse_docker_run(runs[0])
    problems: list[str] = []
    notes: list[str] = []
    repo, _, tag = docker.image.partition(":")
    if repo != IMAGE_REPO:
        problems.append(f"image {docker.image!r} is not {IMAGE_REPO}")
    if not tag or tag == "latest":
        problems.append(f"image {docker.image!r} is not pinned")
    if docker.values("--gpus") != ["all"] and not docker.values("--runtime"):
        problems.append("the container has no GPU access (--gpus all): vLLM cannot start")
    if not docker.values("--restart"):
        notes.append("no restart policy: the server stays down after a crash or reboot")
    if docker.values("--ipc") != ["host"] and not docker.values("--shm-size"):
        notes.append("no --ipc=host or --shm-size: tensor parallel workers lack shared memory")
    env: dict[str, str] = {}
    for path in docker.values("--env-file"):
        if path not in config.write_files:
            problems.append(f"docker: open {path}: no such file or directory (not in write_files)")
        else:
            env.update(read_env_file(config.write_files[path]))
    for pair in docker.values("-e", "--env"):
        key, _, value = pair.partition("=")
        env[key] = value
    for volume in docker.values("-v", "--volume"):
        source = volume.split(":", 1)[0]
        if source.startswith("/lambda/nfs/"):
            fs = source.split("/")[3]
            if mounts.get(fs) is None:
                notes.append(f"volume {source} is not on an attached filesystem: the cache lands on the boot disk")
    container_port = int(flag_value(docker.serve_args, "--port") or VLLM_DEFAULT_PORT)
    host = flag_value(docker.serve_args, "--host")
    if host in ("127.0.0.1", "localhost"):
        problems.append(f"vLLM listens on {host} inside the container: unreachable through -p")
    host_port = None
    for mapping in docker.values("-p", "--publish"):
        parts = mapping.split(":")
        if len(parts) == 2 and parts[1].split("/")[0] == str(container_port):
            host_port = int(parts[0])
    if host_port is None:
        problems.append(f"no -p mapping leads to vLLM's port {container_port}")
    return BootPlan(docker, host_port, env, problems, notes, files=config.write_files)


def container_path(docker: DockerRun, path: str, *, vm_root: Path, image_root: Path) -> Path:
    """Where `path` inside the container is on this machine: below a bind mount (`-v SRC:DST`)
    it is the VM's SRC (under `vm_root`); anywhere else the image's filesystem (`image_root`)."""
    for volume in docker.values("-v", "--volume"):
        source, _, rest = volume.partition(":")
        target = rest.split(":", 1)[0]
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return vm_root / (source + path[len(target):]).lstrip("/")
    return image_root / path.lstrip("/")


class EmulatedVm:
    """The guest of one instance: boot, restart policy, shutdown. Not thread-safe by itself
    (the cloud calls it under its lock)."""

    MAX_RESTARTS = 5

    def __init__(self, ip: str, workdir: Path, *, real_engine: bool | None, extra_env: dict[str, str]) -> None:
        self.ip = ip
        self.workdir = workdir
        self.real_engine = real_engine
        self.extra_env = extra_env
        self.plan: BootPlan | None = None
        self.problems: list[str] = []
        self.engine: EngineProcess | None = None
        self.restarts = 0
        self._restart_at: float | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "engine.log"

    @property
    def root(self) -> Path:
        """The VM's filesystem: where cloud-init's write_files land."""
        return self.workdir / "rootfs"

    def boot(self, user_data: str, *, mounts: dict[str, str], port_open: Any) -> None:
        """Run the user_data. `port_open(port) -> bool` says whether the firewall lets the
        test client (127.0.0.1) reach a host port."""
        try:
            self.plan = plan_boot(user_data, mounts=mounts)
        except BootError as exc:
            self.problems.append(str(exc))
            return
        self.problems += self.plan.problems
        for path, content in self.plan.files.items():  # cloud-init writes files before runcmd
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        if self.plan.problems:
            return
        assert self.plan.host_port is not None
        if not port_open(self.plan.host_port):
            self.problems.append(f"the firewall does not open tcp/{self.plan.host_port} to the client")
        self._start()

    def _start(self) -> None:
        assert self.plan is not None and self.plan.host_port is not None
        reachable = not self.problems
        port = self.plan.host_port if reachable else free_port()  # blocked: listens where nobody looks
        self.engine = launch_vllm(
            self.plan.docker.serve_args, host=self.ip, port=port,
            env={**self._container_env(), **self.extra_env}, log_path=self.log_path, real=self.real_engine,
        )

    def _container_env(self) -> dict[str, str]:
        """The container's environment, with PYTHONPATH's container paths resolved on this machine."""
        assert self.plan is not None
        env = dict(self.plan.env)
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = ":".join(
                str(container_path(self.plan.docker, entry, vm_root=self.root, image_root=self.workdir / "image"))
                for entry in env["PYTHONPATH"].split(":"))
        return env

    def tick(self, now: float) -> None:
        """Apply the container's restart policy to an engine that exited."""
        if self.engine is None or self.engine.alive() or self.plan is None:
            return
        if self.plan.docker.values("--restart") in ([], ["no"]) or self.restarts >= self.MAX_RESTARTS:
            return
        if self._restart_at is None:
            self._restart_at = now + 1.0
        elif now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self._start()

    def reboot(self) -> None:
        """A restart of the machine: the container comes back only with a restart policy."""
        self.stop()
        if self.plan is not None and self.plan.docker.values("--restart") not in ([], ["no"]) and not self.plan.problems:
            self._start()

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
