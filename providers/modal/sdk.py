"""The Modal SDK calls deployer makes, each translating Modal's exceptions into ProviderError.

`import modal` happens inside these functions only (it costs about 0.3 s and is an optional
extra). Every call takes an explicit `client` from `open_client`, which is closed afterwards,
so deploy, status and destroy in one process never share a stale connection, and nothing
keeps a connection open when the operation is over. All calls honour MODAL_SERVER_URL,
MODAL_TOKEN_ID/SECRET (or ~/.modal.toml) and the environment passed in.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from deployer.errors import InputError, MissingCredentialsError, ProviderError

from . import settings as modal_settings

PROVIDER = "modal"
AUTH_HINT = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"


def _modal() -> Any:
    try:
        import modal
        import modal.exception
        import modal.experimental
        import modal.runner
    except ImportError:
        raise InputError(
            "the Modal provider needs the `modal` package", hint="pip install 'deployer[modal]' (modal>=1.6.4,<1.7)"
        ) from None
    return modal


def translate(exc: BaseException, doing: str) -> ProviderError:
    """A Modal SDK exception as a ProviderError saying what failed and what to do."""
    kind = type(exc).__name__
    text = str(exc).strip() or kind
    hints = {
        "AuthError": AUTH_HINT,
        "PermissionDeniedError": "check that the token's workspace may deploy to this environment",
        "ConnectionError": f"check the network and MODAL_SERVER_URL (now {modal_settings.server_url()})",
        "NotFoundError": "check providers.modal.environment and the names in the spec",
        "InvalidError": "check the spec's providers.modal block and resources",
        "ResourceExhaustedError": "Modal refused for a quota or rate limit; wait, or raise the workspace limits",
    }
    return ProviderError(PROVIDER, f"{doing} failed: {text}", code=kind, hint=hints.get(kind))


def is_not_found(exc: BaseException) -> bool:
    return type(exc).__name__ == "NotFoundError"


@contextmanager
def open_client() -> Iterator[Any]:
    """A Modal client with the configured token; closed on exit. Raises MissingCredentialsError without one."""
    modal = _modal()
    token = modal_settings.token()
    if token is None:
        raise MissingCredentialsError(PROVIDER, "Modal credentials found", blank=modal_settings.blank_tokens(),
                                      hint=AUTH_HINT)
    try:
        client = modal.Client.from_credentials(*token)
    except modal.exception.Error as exc:
        raise translate(exc, "connecting to Modal") from None
    try:
        yield client
    finally:
        client.close()


def upsert_secret(client: Any, name: str, env: dict[str, str], environment: str | None) -> None:
    """Create the named Secret, or overwrite its keys when it exists. Idempotent."""
    modal = _modal()
    try:
        modal.Secret.objects.create(name, env, environment_name=environment, client=client)
    except modal.exception.AlreadyExistsError:
        try:
            modal.Secret.from_name(name, environment_name=environment, client=client).update(env)
        except modal.exception.Error as exc:
            raise translate(exc, f"updating the Modal Secret {name!r}") from None
    except modal.exception.Error as exc:
        raise translate(exc, f"creating the Modal Secret {name!r}") from None


def delete_secret(client: Any, name: str, environment: str | None) -> None:
    """Delete the named Secret; a missing one counts as deleted."""
    modal = _modal()
    try:
        modal.Secret.objects.delete(name, allow_missing=True, environment_name=environment, client=client)
    except modal.exception.Error as exc:
        if not is_not_found(exc):
            raise translate(exc, f"deleting the Modal Secret {name!r}") from None


def load_app(path: Path, module_name: str) -> Any:
    """Import the generated app file and return its `app`. Raises ProviderError if it does not import."""
    _modal()
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # Modal finds a function's module through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken generated file is a bug, reported in Modal's terms
        sys.modules.pop(module_name, None)
        raise ProviderError(PROVIDER, f"the generated app {path} does not import: {exc}") from None
    return module.app


def forget_app(module_name: str) -> None:
    sys.modules.pop(module_name, None)


def deploy(client: Any, app: Any, name: str, environment: str | None) -> str:
    """Deploy `app` as `name` (creating it, or updating the deployed app of that name). Returns the app id."""
    modal = _modal()
    try:
        result = modal.runner.deploy_app(app, name=name, environment_name=environment, client=client)
    except modal.exception.Error as exc:
        raise translate(exc, f"deploying the Modal app {name!r}") from None
    return result.app_id


def web_url(client: Any, app_name: str, environment: str | None, *, cls: str | None, function: str) -> str:
    """The web URL of `function` (a method of `cls` when given) of the deployed app."""
    modal = _modal()
    try:
        if cls:
            obj = modal.Cls.from_name(app_name, cls, environment_name=environment, client=client)()
            url = getattr(obj, function).get_web_url()
        else:
            fn = modal.Function.from_name(app_name, function, environment_name=environment, client=client)
            url = fn.get_web_url()
    except modal.exception.Error as exc:
        raise translate(exc, f"looking up the web URL of {app_name!r}") from None
    if not url:
        raise ProviderError(PROVIDER, f"the deployed app {app_name!r} has no web URL for {function!r}")
    return url


@dataclass
class AppState:
    app_id: str
    deployed: bool
    stopped_at: datetime | None
    version: int | None
    deployed_at: datetime | None
    containers: int


def app_state(client: Any, app_id: str, environment: str | None) -> AppState | None:
    """The app's lifecycle and running containers; None when Modal does not know the id."""
    modal = _modal()
    try:
        life = modal.experimental.get_app_lifecycle(app_id, client=client)
        deployed = {a.app_id: a for a in modal.experimental.list_deployed_apps(environment or "", client=client)}
    except modal.exception.Error as exc:
        if is_not_found(exc):
            return None
        raise translate(exc, f"reading the state of the Modal app {app_id}") from None
    info = deployed.get(app_id)
    return AppState(app_id=app_id, deployed=info is not None and life.stopped_at is None, stopped_at=life.stopped_at,
                    version=life.version, deployed_at=life.deployed_at, containers=info.containers if info else 0)


def lookup_app_id(client: Any, name_or_id: str, environment: str | None) -> str | None:
    """The id of the deployed app called `name_or_id` (or that id, if Modal knows it); None if none."""
    modal = _modal()
    try:
        return modal.App.lookup(name_or_id, environment_name=environment, client=client).app_id
    except modal.exception.Error as exc:
        if is_not_found(exc):
            return None
        raise translate(exc, f"looking up the Modal app {name_or_id!r}") from None


def stop_app(client: Any, name_or_id: str, environment: str | None) -> bool:
    """Stop the app; False when Modal does not know it (already gone)."""
    modal = _modal()
    try:
        app = modal.App.lookup(name_or_id, environment_name=environment, client=client)
        app.stop(client=client)
    except modal.exception.Error as exc:
        if is_not_found(exc):
            return False
        raise translate(exc, f"stopping the Modal app {name_or_id!r}") from None
    return True


def deployed_apps(client: Any, environment: str | None) -> list[Any]:
    modal = _modal()
    try:
        return modal.experimental.list_deployed_apps(environment or "", client=client)
    except modal.exception.Error as exc:
        raise translate(exc, "listing Modal apps") from None


def secret_names(client: Any, environment: str | None) -> list[str]:
    modal = _modal()
    try:
        return [s.name for s in modal.Secret.objects.list(environment_name=environment or "", client=client)]
    except modal.exception.Error as exc:
        raise translate(exc, "listing Modal Secrets") from None


def volume_names(client: Any, environment: str | None) -> list[str]:
    modal = _modal()
    try:
        return [v.name for v in modal.Volume.objects.list(environment_name=environment or "", client=client)]
    except modal.exception.Error as exc:
        raise translate(exc, "listing Modal Volumes") from None


def log_tail(client: Any, app_id: str, environment: str | None, entries: int) -> list[tuple[datetime, str]]:
    """The app's most recent log entries, oldest first: (timestamp, message without newline)."""
    modal = _modal()
    try:
        app = modal.App.lookup(app_id, environment_name=environment, client=client)
        return [(e.timestamp, e.message.rstrip("\n")) for e in app.logs.tail(entries)]
    except modal.exception.Error as exc:
        raise translate(exc, f"reading the logs of the Modal app {app_id}") from None
