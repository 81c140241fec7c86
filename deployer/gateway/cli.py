"""`deployer gateway run|check|status CONFIG`.

`register(app)` adds the group to a Typer app; everything heavy is imported inside the
commands, so `deployer --help` never loads the serving stack.
"""

from __future__ import annotations

from typing import Any

import typer

CONFIG = typer.Argument(..., help="Path of the gateway file (YAML).", show_default=False)
JSON = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")


def register(app: typer.Typer) -> None:
    """Add the `gateway` command group to `app`."""
    from deployer.cli import handled

    group = typer.Typer(name="gateway", no_args_is_help=True,
                        help="One OpenAI-compatible URL over several deployments (primary-overflow, failover, weighted).")

    @group.command("run")
    @handled
    def run(config: str = CONFIG) -> None:
        """Serve the gateway until Ctrl-C (or SIGTERM); in-flight requests get time to finish."""
        from deployer.settings import Settings

        _require_serving_stack()

        from .server import key_location, prepare, serve

        settings = Settings()
        prepared = prepare(config, settings)
        out = _out()
        cfg = prepared.config
        out.print(f"[bold green]✓[/] gateway [bold]{cfg.name}[/] listening on {cfg.local_url}")
        for route in cfg.routes:
            chain = ", ".join(_backend_words(prepared.gateway.backends[b.deployment]) for b in route.backends)
            out.print(f"  model {_escape(route.model)} ({route.policy}): {_escape(chain)}")
        location = key_location(cfg, settings)
        out.print(f"  key:   {_escape(location)}")
        if not cfg.auth.api_key_env:
            out.print(f"\n  export OPENAI_API_KEY=$(cat {_escape(location)})")
        out.print(f"  export OPENAI_BASE_URL={cfg.local_url}")
        out.print(f"  metrics: {cfg.local_url.removesuffix('/v1')}/metrics (same key); "
                  f"status: deployer gateway status {_escape(config)}", soft_wrap=True)
        out.file.flush()
        serve(prepared)

    @group.command("check")
    @handled
    def check(config: str = CONFIG, as_json: bool = JSON) -> None:
        """Check the file and resolve every backend from the state; serve nothing."""
        from deployer.settings import Settings

        _require_serving_stack()

        from .server import key_location, prepare

        settings = Settings()
        prepared = prepare(config, settings, bind=False)
        cfg = prepared.config
        doc = {
            "name": cfg.name, "url": cfg.local_url, "key": key_location(cfg, settings),
            "routes": [{"model": r.model, "policy": r.policy, "backends": [
                _backend_dict(prepared.gateway.backends[b.deployment], b.weight) for b in r.backends]}
                for r in cfg.routes],
        }
        if as_json:
            _json(doc)
            return
        from rich.table import Table

        table = Table("model", "policy", "backend", "provider", "url", "limit", "weight", "probe")
        for route in doc["routes"]:
            for b in route["backends"]:
                table.add_row(_escape(route["model"]), route["policy"], b["backend"], b["provider"], b["url"],
                              str(b["limit"]), "" if b["weight"] is None else f"{b['weight']:g}", b["probe"])
        out = _out()
        out.print(f"gateway [bold]{cfg.name}[/] would listen on {cfg.local_url}; key: {_escape(doc['key'])}")
        out.print(table)

    @group.command("status")
    @handled
    def status(config: str = CONFIG, as_json: bool = JSON) -> None:
        """What the running gateway reports on /metrics, per backend, as a table."""
        from deployer.settings import Settings

        _require_serving_stack()

        from .status import read_status

        doc = read_status(config, Settings())
        if as_json:
            _json(doc)
            return
        from rich.table import Table

        table = Table("backend", "provider", "models", "rotation", "in flight", "requests", "errors", "p50", "p99")
        for row in doc["backends"]:
            errors = sum(row["errors"].values())
            kinds = ", ".join(f"{k} {v}" for k, v in row["errors"].items() if v)
            table.add_row(row["backend"], row["provider"], _escape(", ".join(row["models"])),
                          "[green]in[/]" if row["healthy"] else "[red]out[/]",
                          f"{row['in_flight']}/{row['limit']}", str(row["requests"]),
                          f"{errors}" + (f" ({kinds})" if kinds else ""), _seconds(row["p50_s"]), _seconds(row["p99_s"]))
        out = _out()
        out.print(f"gateway [bold]{doc['name']}[/] at {doc['url']}")
        out.print(table)
        for model, codes in doc["responses"].items():
            out.print(f"  answers for {_escape(model)}: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))

    app.add_typer(group, name="gateway")


def _require_serving_stack() -> None:
    """Raise DeployerError naming what is missing when the `gateway` extra is not installed."""
    from importlib.util import find_spec

    from deployer.errors import DeployerError

    missing = [m for m in ("starlette", "uvicorn", "prometheus_client", "aiohttp") if find_spec(m) is None]
    if missing:
        raise DeployerError(f"deployer gateway needs {', '.join(missing)}, which is not installed",
                            hint="pip install 'deployer[gateway]'")


def _backend_dict(backend: Any, weight: float | None) -> dict[str, Any]:
    return {"backend": backend.name, "provider": backend.provider, "url": backend.endpoint.url,
            "model": backend.model, "limit": backend.limit, "weight": weight, "probe": backend.probe}


def _backend_words(backend: Any) -> str:
    return f"{backend.name} ({backend.provider}, limit {backend.limit}, probe {backend.probe})"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _out() -> Any:
    from deployer.console import stdout_console

    return stdout_console()


def _json(doc: Any) -> None:
    from deployer.console import print_json

    print_json(doc)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
