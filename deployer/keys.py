"""Where the endpoint API key and the HF token come from.

The endpoint key is either read from the environment variable the spec names (`auth.api_key_env`)
or generated once per deployment and kept in `DEPLOYER_HOME/keys/<name>.key` (mode 0600). It is
never written to state, logs or output: the CLI shows where it is, not what it is.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as _secrets
from pathlib import Path

from .errors import InputError
from .provider import Secrets
from .settings import Settings
from .spec import Spec

MIN_KEY_LENGTH = 16  # a shorter endpoint key is refused: the endpoint would be as good as open


def key_path(settings: Settings, name: str) -> Path:
    return settings.home / "keys" / f"{name}.key"


def key_location(spec: Spec, settings: Settings) -> str:
    """Where the key lives, in words a user can act on (no secret)."""
    if spec.auth.api_key_env:
        return f"env ${spec.auth.api_key_env}"
    return str(key_path(settings, spec.name))


def endpoint_key(spec: Spec, settings: Settings, *, create: bool) -> str | None:
    """The endpoint key. With `create`, a missing generated key is made (0600, atomically).

    Raises InputError when the spec names an environment variable that is not set.
    """
    if spec.auth.api_key_env:
        return env_key(spec.auth.api_key_env)
    return generated_key(key_path(settings, spec.name), create=create)


def env_key(variable: str) -> str:
    """The key in environment variable `variable`. Raises InputError when it is unset, shorter
    than MIN_KEY_LENGTH or padded with spaces (an endpoint behind it would be as good as open)."""
    value = os.environ.get(variable)
    if not value:
        raise InputError(
            f"auth.api_key_env names ${variable}, which is not set",
            hint=f"export {variable}=... or remove auth.api_key_env to have a key generated",
        )
    if len(value) < MIN_KEY_LENGTH or value != value.strip():
        raise InputError(
            f"${variable} is too weak to protect an endpoint (at least {MIN_KEY_LENGTH} "
            "characters, no surrounding spaces)",
            hint="use a long random key, or remove auth.api_key_env to have one generated",
        )
    return value


def generated_key(path: Path, *, create: bool) -> str | None:
    """The key kept in `path`; with `create`, a missing one is made: `dpk-` + 32 random bytes,
    written 0600 under a 0700 directory. Idempotent and safe against a concurrent creator: the
    first writer wins and every caller returns the same key. None when absent and not `create`."""
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("dpk-" + _secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)  # first writer wins; a concurrent creator reads the same key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def existing_key(spec: Spec | None, settings: Settings) -> str | None:
    """The endpoint key of a recorded deployment if it is at hand (never creates one): None
    without a spec, a generated key file, or the variable `auth.api_key_env` names."""
    if spec is None:
        return None
    try:
        return endpoint_key(spec, settings, create=False)
    except InputError:
        return None


def forget_generated_key(settings: Settings, name: str) -> None:
    key_path(settings, name).unlink(missing_ok=True)


def hf_token(spec: Spec) -> str | None:
    return os.environ.get(spec.secrets.hf_token_env) or None


def deploy_secrets(spec: Spec, settings: Settings) -> Secrets:
    """The real secrets for `apply` (creates the generated key if needed)."""
    return Secrets(api_key=endpoint_key(spec, settings, create=True) or "", hf_token=hf_token(spec))


def plan_secrets(spec: Spec) -> Secrets:
    """Placeholders for `render` in plan: nothing secret, same shape."""
    return Secrets.redacted(has_hf_token=hf_token(spec) is not None)


def secrets_digest(secrets: Secrets, settings: Settings) -> str:
    """A keyed digest of the secret values, stored in state so that a rotated key or token makes
    the next deploy apply again. The HMAC key is a random salt in DEPLOYER_HOME/keys/.salt (0600),
    so the digest cannot be tested against guesses without it."""
    salt_path = settings.home / "keys" / ".salt"
    if not salt_path.exists():
        salt_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(salt_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(_secrets.token_bytes(32))
        except FileExistsError:
            pass
    message = f"{secrets.api_key}\0{secrets.hf_token or ''}".encode()
    return hmac.new(salt_path.read_bytes(), message, hashlib.sha256).hexdigest()[:16]
