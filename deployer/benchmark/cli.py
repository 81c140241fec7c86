"""`deployer bench NAME`: the command, its progress bar on stderr and its table on stdout.

`register(app)` adds the command to a Typer app; everything heavy is imported inside it. Bad
input (flags, an unknown name, --cold where no cold start exists) is an InputError: exit 2.
Ctrl-C prints the report of what finished (marked `interrupted`, not stored) and exits 130.
"""

from __future__ import annotations

from typing import Any

import typer

DEFAULTS = {"requests": 20, "concurrency": 4, "prompt_tokens": 128, "max_tokens": 64, "timeout_s": 300.0}


def register(app: typer.Typer) -> None:
    """Add `bench` to `app`."""
    from deployer.cli import handled

    @app.command("bench")
    @handled
    def bench(
        name: str = typer.Argument(..., help="Deployment name (see `deployer list`).", show_default=False),
        requests: int = typer.Option(DEFAULTS["requests"], "--requests", "-n", help="Requests to send in all."),
        concurrency: int = typer.Option(DEFAULTS["concurrency"], "--concurrency", "-c", help="Requests in flight at once."),
        prompt_tokens: int = typer.Option(DEFAULTS["prompt_tokens"], "--prompt-tokens", help="Prompt length in simple words (about one token each; the server's count is reported)."),
        max_tokens: int = typer.Option(DEFAULTS["max_tokens"], "--max-tokens", help="Tokens generated per request (end of sequence ignored, so exactly this many)."),
        cold: bool = typer.Option(False, "--cold", help="First measure one cold start (scale-to-zero providers wait for zero workers; local restarts its server)."),
        timeout: float = typer.Option(DEFAULTS["timeout_s"], "--timeout", help="Seconds one request may take."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else."),
    ) -> None:
        """Measure a live deployment through its OpenAI endpoint (latency, throughput, errors).

        TTFT, inter-token latency, end-to-end latency (p50/p90/p99), tokens/s, requests/s and
        errors by kind; with --cold, a cold start beside the predicted one. Results are stored
        for `deployer cost NAME --measured`."""
        from deployer.benchmark.load import LoadSpec

        spec = LoadSpec(requests=requests, concurrency=concurrency, prompt_tokens=prompt_tokens,
                        max_tokens=max_tokens, timeout_s=timeout)
        report = run(name, spec, cold=cold)
        from deployer.console import print_json, stdout_console

        if as_json:
            print_json(report)
        else:
            render(report, stdout_console())
        if report["interrupted"]:
            raise typer.Exit(130)


def validate(spec: Any) -> None:
    """Raise InputError for a flag out of range."""
    from deployer.errors import InputError

    checks = [
        (spec.requests >= 1, f"--requests must be at least 1, not {spec.requests}", "e.g. --requests 20"),
        (1 <= spec.concurrency <= 1024, f"--concurrency must be between 1 and 1024, not {spec.concurrency}",
         "e.g. --concurrency 4 (requests in flight at once)"),
        (spec.prompt_tokens >= 1, f"--prompt-tokens must be at least 1, not {spec.prompt_tokens}", "e.g. --prompt-tokens 128"),
        (spec.max_tokens >= 1, f"--max-tokens must be at least 1, not {spec.max_tokens}", "e.g. --max-tokens 64"),
        (spec.timeout_s > 0, f"--timeout must be more than 0 seconds, not {spec.timeout_s:g}", "e.g. --timeout 300"),
    ]
    for ok, message, hint in checks:
        if not ok:
            raise InputError(message, hint=hint)


def run(name: str, spec: Any, *, cold: bool) -> dict[str, Any]:
    """Resolve `name`, optionally measure a cold start, run the load, store a finished run.
    Returns the report; `interrupted` is true when Ctrl-C cut it short. Raises InputError for
    bad input, DeployerError when the deployment cannot be reached from here."""
    import asyncio
    import datetime

    from deployer.console import stderr_console
    from deployer.errors import InputError
    from deployer.orchestrator import Orchestrator
    from deployer.settings import Settings

    from . import cold as cold_mod
    from . import stats, store
    from .load import LoadRun

    validate(spec)
    orch = Orchestrator(Settings())
    rows = orch.state.rows(name) if orch.state_exists() else []
    if not rows:
        raise InputError(f"no deployment named {name!r}", hint="`deployer list` shows what exists")
    target = orch.target(name)
    deployment, endpoint = target.deployment, target.endpoint
    assert deployment.spec is not None  # target() refuses a deployment without a readable spec
    limit = deployment.spec.model.max_model_len
    if limit and spec.prompt_tokens + spec.max_tokens > limit:
        raise InputError(f"--prompt-tokens {spec.prompt_tokens} + --max-tokens {spec.max_tokens} exceed "
                         f"{name}'s max_model_len {limit}",
                         hint=f"keep the two under {limit} (prompts count a little more than their words)")
    if cold:
        cold_mod.check_supported(orch, target)
    row = next(r for r in rows if r["provider"] == deployment.provider)
    report: dict[str, Any] = {
        "name": name, "provider": deployment.provider, "model": endpoint.model, "url": endpoint.url,
        "spec_hash": row["spec_hash"],
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": spec.to_dict(), "interrupted": False, "cold": None,
    }
    console = stderr_console()
    console.print(f"bench {name} on {deployment.provider}: {spec.requests} requests, concurrency "
                  f"{min(spec.concurrency, spec.requests)}, {spec.prompt_tokens}-word prompts, {spec.max_tokens} tokens each")
    load = LoadRun(endpoint, spec)
    try:
        if cold:
            report["cold"] = cold_mod.measure(orch, target, spec, lambda m: console.print(f"[dim]…[/] {_escape(m)}"))
        with _ProgressBar(console, name, spec.requests) as bar:
            load.on_result = bar
            asyncio.run(load.run())
    except KeyboardInterrupt:
        report["interrupted"] = True
        console.print("\n[yellow]interrupted:[/] the report covers the requests that finished; it is not stored")
    report.update(stats.summarize(load.results, planned=spec.requests, duration_s=load.duration_s))
    report["stored_as"] = None if report["interrupted"] else store.save(orch.state, report)
    return report


class _ProgressBar:
    """A rich progress bar on stderr, advanced once per finished request (errors counted)."""

    def __init__(self, console: Any, name: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("errors {task.fields[errors]}"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(f"bench {name}", total=total, errors=0)
        self.errors = 0

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, result: Any) -> None:
        self.errors += 0 if result.ok else 1
        self.progress.update(self.task, advance=1, errors=self.errors)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# -- the table ------------------------------------------------------------------------------


def _num(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def render(report: dict[str, Any], out: Any) -> None:
    """Print the report as a table and a few lines on a rich Console."""
    from rich.markup import escape
    from rich.table import Table

    s, r = report["settings"], report["requests"]
    tokens, speed = report["tokens"], report["throughput"]
    state = " [yellow](interrupted: partial)[/]" if report["interrupted"] else ""
    out.print(f"[bold]{escape(report['name'])}[/] on {report['provider']} ({escape(report['url'])}, model "
              f"{escape(report['model'])}){state}")
    out.print(f"{r['ok']} of {r['planned']} requests ok ({r['failed']} failed, {r['unfinished']} unfinished), "
              f"concurrency {s['concurrency']}, {s['prompt_tokens']}-word prompts, {s['max_tokens']} tokens each, "
              f"{report['duration_s']:.2f} s")
    table = Table("metric", title_justify="left")
    for column in ("mean", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for label, key, scale, digits in (("TTFT (ms)", "ttft_s", 1000, 1), ("inter-token latency (ms)", "itl_s", 1000, 2),
                                      ("time per output token (ms)", "tpot_s", 1000, 2),
                                      ("end-to-end latency (s)", "e2e_s", 1, 3)):
        dist = report[key] or {}
        table.add_row(label, *(_num(dist.get(k), scale, digits) for k in ("mean", "p50", "p90", "p99", "max")))
    out.print(table)
    out.print(f"throughput: {_num(speed['requests_per_s'], digits=2)} requests/s, "
              f"{_num(speed['output_tokens_per_s'], digits=1)} output tokens/s, "
              f"{_num(speed['seconds_per_request'])} s per request at concurrency {s['concurrency']}")
    if tokens["chunks_equal_usage"]:
        agree = "one chunk per token"
    elif tokens["chunks_total"] < tokens["output_total"]:
        agree = (f"{tokens['chunks_total']} chunks: vLLM merged tokens into one chunk in {tokens['mismatched_count']} "
                 "request(s), so inter-token gaps there span several tokens; time per output token is exact")
    else:
        agree = f"[yellow]chunk counts differ from usage in {tokens['mismatched_count']} request(s)[/]"
    out.print(f"tokens: {tokens['output_total']} output ({_num(tokens['output_per_request_mean'], digits=1)} per request; "
              f"{agree}), prompt {_num(tokens['prompt_counted_mean'], digits=1)} per request (the server's count)")
    if report["errors"]:
        out.print("errors: " + ", ".join(f"{kind} x{n}" for kind, n in report["errors"].items()))
        for kind, detail in report["error_samples"].items():
            out.print(f"  [dim]{kind}: {escape(detail)}[/]")
    else:
        out.print("errors: none")
    cold = report["cold"]
    if cold:
        measured = f"{cold['measured_s']:.2f} s" if cold["measured_s"] is not None else \
            f"[red]failed[/] ({cold['error']}: {escape(cold['error_detail'] or '')})"
        out.print(f"cold start: {measured} (cold -> first token, {cold['attempts']} request(s) sent); "
                  f"{escape(cold['how'])}")
        predicted = cold["predicted"]
        if predicted:
            out.print(f"  predicted: {predicted['low_s']:.1f}-{predicted['high_s']:.1f} s (mid {predicted['mid_s']:.1f} s, "
                      f"floor {predicted['floor_s']:.1f} s): {escape(cold['predicted_note'])}")
        else:
            out.print(f"  predicted: none ({escape(cold['predicted_note'])})")
    if report["stored_as"]:
        out.print(f"[dim]stored as benchmark #{report['stored_as']}; `deployer cost {escape(report['name'])} --measured` "
                  "prices these figures[/]")
