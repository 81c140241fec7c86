"""How RunPod's vLLM worker (runpod/worker-v1-vllm v2.25.2) turns its container env into `vllm serve` args.

Written from the worker's documented behaviour (github.com/runpod-workers/worker-vllm,
docs/configuration.md), independently of deployer's own builder, so that a wrong env
var in the adapter becomes a wrong flag here and fails the engine:

1. Generic scan: an env var whose name is the UPPER_SNAKE form of a `vllm serve` flag becomes
   that flag (MAX_MODEL_LEN=4096 -> --max-model-len 4096). Boolean flags take true/false-like
   values: a `--flag/--no-flag` pair emits one of the two, a plain switch is emitted or omitted.
   An empty value is ignored; an unparseable boolean stops the worker.
2. Aliases win over the scan: MODEL_NAME -> --model, MODEL_REVISION -> --revision,
   TOKENIZER_NAME -> --tokenizer, OPENAI_SERVED_MODEL_NAME_OVERRIDE -> --served-model-name,
   CUSTOM_CHAT_TEMPLATE -> --chat-template, VLLM_CONFIG_FILE -> --config.
3. VLLM_EXTRA_ARGS is split like a shell would and appended last.
HOST, PORT, API_KEY, MODEL, CONFIG and HELP are reserved and ignored: the worker pins host and
port itself and never sets an API key (RunPod authenticates callers at the platform).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from tests.support.engine import vllm_flag_table

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}
RESERVED = {"HOST", "PORT", "API_KEY", "MODEL", "CONFIG", "HELP"}
ALIASES = {
    "MODEL_NAME": "--model",
    "MODEL_REVISION": "--revision",
    "TOKENIZER_NAME": "--tokenizer",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "--served-model-name",
    "CUSTOM_CHAT_TEMPLATE": "--chat-template",
    "VLLM_CONFIG_FILE": "--config",
}
ZERO_IS_UNSET = {"--max-num-batched-tokens"}
WORKER_PORT = "8000"


class WorkerConfigError(Exception):
    """The worker would stop at start-up (e.g. ENFORCE_EAGER=maybe)."""


def _flag_for(env_name: str, table: Mapping[str, dict]) -> str | None:
    flag = "--" + env_name.lower().replace("_", "-")
    if flag.startswith("--no-") or flag not in table:
        return None
    return flag


def _boolean(env_name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise WorkerConfigError(f"invalid boolean value {raw!r} for {env_name}")


def vllm_serve_args(env: Mapping[str, str]) -> list[str]:
    """The argv the worker runs after `vllm serve` (model first, as `vllm serve MODEL ...`).

    Raises WorkerConfigError where the worker itself would exit at start-up."""
    table = vllm_flag_table()
    flags: dict[str, str | None] = {}

    def put(env_name: str, flag: str, raw: str) -> None:
        value = raw.strip()
        if not value:
            return
        spec = table.get(flag, {})
        if spec.get("takes_value", True):
            if flag in ZERO_IS_UNSET and value == "0":
                return
            flags[flag] = value
            return
        truthy = _boolean(env_name, raw)
        if spec.get("negatable"):
            flags.pop(flag, None)
            flags.pop("--no-" + flag[2:], None)
            flags[flag if truthy else "--no-" + flag[2:]] = None
        elif truthy:
            flags[flag] = None
        else:
            flags.pop(flag, None)

    for env_name in sorted(env):
        if env_name in RESERVED or env_name in ALIASES:
            continue
        flag = _flag_for(env_name, table)
        if flag:
            put(env_name, flag, env[env_name])
    for env_name, flag in ALIASES.items():
        if env_name in env:
            put(env_name, flag, env[env_name])

    model = flags.pop("--model", None)
    argv = [model] if model else []
    for flag, value in flags.items():
        argv.append(flag)
        if value is not None:
            argv.append(value)
    argv += ["--host", "127.0.0.1", "--port", WORKER_PORT]
    argv += shlex.split(env.get("VLLM_EXTRA_ARGS", ""))
    return argv


def max_concurrency(env: Mapping[str, str]) -> int:
    """Jobs one worker takes at once (MAX_CONCURRENCY, default 30)."""
    try:
        return max(1, int(env.get("MAX_CONCURRENCY", "30")))
    except ValueError as exc:
        raise WorkerConfigError(f"MAX_CONCURRENCY={env.get('MAX_CONCURRENCY')!r} is not a number") from exc


def default_model(env: Mapping[str, str]) -> str | None:
    """The model the worker fills in when a request names none."""
    served = env.get("OPENAI_SERVED_MODEL_NAME_OVERRIDE") or env.get("SERVED_MODEL_NAME")
    return served.split(",")[0].strip() if served else env.get("MODEL_NAME")
