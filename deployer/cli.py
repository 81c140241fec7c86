"""The `deployer` command line.

Exit codes: 0 done, 1 the operation failed, 2 bad input. With --json a command prints exactly one
JSON document on stdout (errors too: {"error": ..., "exit_code": ...}); progress goes to stderr.
Only typer is imported at start-up; each command imports what it needs, so `--help` is instant.
"""

from __future__ import annotations

import functools
import inspect
import json as jsonlib
import sys
from collections.abc import Callable
from typing import Any, Optional

import typer

app = typer.Typer(
    name="deployer",
    help="Turn one YAML spec into a running, OpenAI-compatible vLLM endpoint "
    "(local, Modal, RunPod serverless, Lambda Cloud).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONFIG = typer.Argument(..., help="Path of the deployment spec (YAML).", show_default=False)
PROVIDER = typer.Option(None, "--provider", "-p", help="Deploy to this provider instead of the file's `provider:`.")
JSON = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")


def _stderr() -> Any:
    from .console import stderr_console

    return stderr_console()


def _emit_json(doc: Any) -> None:
    from .console import print_json

    print_json(doc)


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn deployer errors into a message and an exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import DeployerError

        as_json = bool(kwargs.get("as_json"))
        try:
            return fn(*args, **kwargs)
        except DeployerError as exc:
            if as_json:
                _emit_json({"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code})
            _stderr().print(f"[bold red]error:[/] {_escape(exc.message)}")
            if exc.hint:
                _stderr().print(f"  [dim]hint:[/] {_escape(exc.hint)}")
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug: say so briefly, keep the traceback in a file
            path = _crash_log()
            _stderr().print(f"[bold red]internal error:[/] {exc.__class__.__name__}: {_escape(str(exc)[:300])}")
            _stderr().print(f"  [dim]this is a bug in deployer; the traceback is in {path}[/]")
            if as_json:
                _emit_json({"error": f"internal error: {exc.__class__.__name__}", "exit_code": 1})
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            name = kwargs.get("name") or _loaded.get("name") or "NAME"
            _stderr().print(
                "\n[yellow]interrupted.[/] Everything created so far is recorded in the state. "
                f"Run the same command again to resume, or `deployer destroy {name}` to remove it."
            )
            raise typer.Exit(130) from None

    return wrapper


def _crash_log() -> str:
    import traceback

    try:
        path = _settings().path("logs", "crash.log")
        with open(path, "a") as handle:
            traceback.print_exc(file=handle)
        return str(path)
    except Exception:  # noqa: BLE001 - reporting must not fail
        return "(could not write the crash log)"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _settings() -> Any:
    from .settings import Settings

    return Settings()


class ProgressLine:
    """One live line on stderr while a long operation runs (a spinner on a terminal; elsewhere
    each new message once, repeats suppressed). Use as a context manager."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = _stderr()
        self.quiet = quiet
        self._status: Any = None
        self._last = ""

    def __enter__(self) -> ProgressLine:
        if self.console.is_terminal and not self.quiet:
            self._status = self.console.status("starting")
            self._status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()

    def __call__(self, message: str) -> None:
        if message == self._last:
            return
        self._last = message
        if self._status is not None:
            self._status.update(_escape(message))
        elif not self.quiet:
            self.console.print(f"[dim]…[/] {_escape(message)}")


def _orchestrator(progress: Any = None) -> Any:
    from .orchestrator import Orchestrator

    return Orchestrator(_settings(), progress=progress or (lambda _msg: None))


_loaded: dict[str, str] = {}  # the spec this invocation works on, for messages


def _load(config: str, provider: Optional[str]) -> Any:
    from .spec import load_spec

    spec = load_spec(config, provider=provider)
    _loaded["name"] = spec.name
    return spec


@app.command()
@handled
def plan(config: str = CONFIG, provider: Optional[str] = PROVIDER, as_json: bool = JSON) -> None:
    """Show exactly what `deploy` would send and write; change nothing."""
    spec = _load(config, provider)
    result = _orchestrator().plan(spec)
    doc = result.to_dict()
    extras = _plan_extras(spec)
    doc.update(extras)
    if as_json:
        _emit_json(doc)
        return
    out = _out()
    out.print(f"[bold]{spec.name}[/] on [bold]{spec.provider}[/]: {result.action}")
    for note in result.artifacts.notes:
        out.print(f"  [dim]note:[/] {_escape(note)}")
    for req in result.artifacts.requests:
        out.print(f"\n[cyan]{req.method} {_escape(req.url)}[/]")
        if req.json is not None:
            out.print(jsonlib.dumps(req.json, indent=2), markup=False)
    for path, text in result.artifacts.files.items():
        out.print(f"\n[cyan]file {_escape(path)}[/]")
        out.print(text.rstrip("\n"), markup=False)
    if extras:
        from .costing.cli import render_plan_extras

        out.print()
        render_plan_extras(extras, out)


def _plan_extras(spec: Any) -> dict[str, Any]:
    """Capacity and cost figures for `plan`, when the costing package is present."""
    try:
        from .costing import report
    except ImportError:
        return {}
    extras: dict[str, Any] = {}
    cap = _check_capacity(spec)
    if cap is not None:
        extras["capacity"] = cap.to_dict() if hasattr(cap, "to_dict") else cap
    summary = report.plan_summary(spec, _settings())
    if summary:
        extras["cost"] = summary
    return extras


def _check_capacity(spec: Any) -> Any:
    """The capacity report (None without a GPU); raises InputError when the model cannot fit."""
    try:
        from .costing import capacity
    except ImportError:
        return None
    return capacity.check(spec)


@app.command()
@handled
def deploy(config: str = CONFIG, provider: Optional[str] = PROVIDER, as_json: bool = JSON) -> None:
    """Create or update the deployment, wait until it answers, print its URL."""
    spec = _load(config, provider)
    _check_capacity(spec)  # refuses what cannot fit before anything is created (no cost figures needed)
    with ProgressLine() as progress:
        orch = _orchestrator(progress)
        result = orch.deploy(spec)
    if as_json:
        _emit_json(result.to_dict())
        return
    from .keys import key_location

    out = _out()
    verb = {"unchanged": "is unchanged and ready", "created": "is ready", "updated": "was updated and is ready",
            "moved": f"moved to {result.provider} and is ready"}[result.action]
    out.print(f"[bold green]✓[/] [bold]{result.name}[/] {verb} on {result.provider}")
    out.print(f"  url:   {result.url}")
    out.print(f"  model: {result.model}")
    out.print(f"  key:   {_escape(result.key_source)}")
    if spec.auth.api_key_env is None and "deployment's API key" in result.key_source:
        out.print(f"\n  export OPENAI_API_KEY=$(cat {key_location(spec, orch.settings)})")
    out.print(f"  export OPENAI_BASE_URL={result.url}")
    out.print(
        f"  curl $OPENAI_BASE_URL/chat/completions -H \"Authorization: Bearer $OPENAI_API_KEY\" "
        f"-H 'Content-Type: application/json' -d '{{\"model\": \"{result.model}\", "
        f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'"
    )
    out.print(f"\n  remove it with: deployer destroy {result.name}")


def _out() -> Any:
    from .console import stdout_console

    return stdout_console()


@app.command()
@handled
def destroy(name: str = typer.Argument(..., help="Deployment name."), as_json: bool = JSON) -> None:
    """Tear the deployment down everywhere it is recorded and verify nothing is left. Idempotent."""
    with ProgressLine() as progress:
        removed = _orchestrator(progress).destroy(name)
    if as_json:
        _emit_json({"name": name, "destroyed": removed, "status": "destroyed" if removed else "absent"})
        return
    if removed:
        _out().print(f"[bold green]✓[/] {name} destroyed on {', '.join(removed)}; verified gone")
    else:
        _out().print(f"nothing recorded under {name!r}; nothing to destroy")


@app.command()
@handled
def status(name: Optional[str] = typer.Argument(None, help="Deployment name (default: all)."), as_json: bool = JSON) -> None:
    """Each deployment's state as its provider reports it now."""
    rows = _orchestrator().status(name)
    if name and not rows:
        from .errors import DeployerError

        raise DeployerError(f"no deployment named {name!r}", hint="`deployer list` shows what exists")
    if as_json:
        _emit_json(rows if name is None else rows)
        return
    from rich.table import Table

    table = Table("name", "provider", "state", "url", "details")
    for row in rows:
        details = ", ".join(f"{k}={v}" for k, v in row["details"].items() if v is not None)
        state = f"{row['state']} [yellow](ghost: `deployer gc --yes` forgets it)[/]" if row["ghost"] else row["state"]
        table.add_row(row["name"], row["provider"], state, row["url"] or "", _escape(details))
    _out().print(table)


@app.command("list")
@handled
def list_(as_json: bool = JSON) -> None:
    """What the state records (no provider is called)."""
    rows = _orchestrator().list()
    if as_json:
        _emit_json(rows)
        return
    import datetime

    from rich.table import Table

    table = Table("name", "provider", "status", "url", "updated")
    for row in rows:
        when = datetime.datetime.fromtimestamp(row["updated_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(row["name"], row["provider"], row["status"], row["url"] or "", when)
    _out().print(table)


@app.command()
@handled
def logs(
    name: str = typer.Argument(..., help="Deployment name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
) -> None:
    """Print the serving logs of a deployment."""
    for line in _orchestrator().logs(name, follow):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


@app.command()
@handled
def gc(
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="Only this provider."),
    yes: bool = typer.Option(False, "--yes", help="Destroy orphans and forget ghosts."),
    as_json: bool = JSON,
) -> None:
    """Find what bills without being recorded (orphans) and records of what is gone (ghosts)."""
    from . import registry

    if provider is not None and provider not in registry.names():
        from .errors import InputError

        raise InputError(f"unknown provider {provider!r}", hint=f"one of: {', '.join(registry.names())}")
    with ProgressLine() as progress:
        report = _orchestrator(progress).gc(provider, apply=yes)
    if as_json:
        _emit_json({**report, "applied": yes})
        return
    from rich.table import Table

    table = Table("group", "provider", "what", "deployment")
    for entry in report["orphans"]:
        table.add_row("[red]orphan[/]", entry["provider"], f"{entry['kind']} {entry['id']}", entry["deployment"] or "?")
    for entry in report["ghosts"]:
        left = ", ".join(f"{x['kind']} {x['id']}" for x in entry["left"])
        table.add_row("[yellow]ghost[/]", entry["provider"], f"(gone; left: {left})" if left else "(gone)",
                      entry["deployment"])
    for entry in report["healthy"]:
        table.add_row("[green]healthy[/]", entry["provider"], f"{entry['kind']} {entry['id']}", entry["deployment"] or "?")
    for entry in report["shared"]:
        table.add_row("[dim]shared[/]", entry["provider"], f"{entry['kind']} {entry['id']}", "(kept: shared cache)")
    out = _out()
    out.print(table)
    for entry in report["skipped"]:
        out.print(f"[dim]skipped {entry['provider']}: {entry['reason']}[/]")
    if report["orphans"] or report["ghosts"]:
        out.print("destroyed the orphans and forgot the ghosts" if yes else "run `deployer gc --yes` to destroy orphans and forget ghosts")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editors)."""
    from .spec import json_schema

    _emit_json(json_schema())


def _register_optional_commands() -> None:
    """Commands kept in their own packages; registering one imports only typer."""
    from .benchmark.cli import register as register_bench
    from .costing.cli import register as register_cost
    from .gateway.cli import register as register_gateway

    for register in (register_cost, register_bench, register_gateway):
        register(app)


def _reflow_help(group: typer.Typer) -> None:
    """Let docstrings wrap in the source: typer keeps their single line breaks in `--help`, so
    each paragraph of a command's docstring becomes one line that the terminal wraps."""
    for info in group.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            paragraphs = inspect.cleandoc(info.callback.__doc__).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


def main() -> None:
    _register_optional_commands()
    _reflow_help(app)
    app()


if __name__ == "__main__":
    main()
