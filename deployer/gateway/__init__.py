"""`deployer gateway`: one OpenAI-compatible URL over several deployments.

    routes.py    the gateway file (name, listen, routes with policies), validated like the spec
    backends.py  deployments resolved from the state: URL, key, limit, in-flight, rotation
    policy.py    primary-overflow / failover / weighted: the order a request tries backends in
    proxy.py     the ASGI app (Starlette): auth, OpenAI routes, relaying, failover, errors
    health.py    background probes through the shared endpoint client; following moved deployments
    metrics.py   Prometheus metrics (prometheus-client) and reading them back for `status`
    usage.py     per-backend traffic totals flushed to the state (priced by `deployer cost`)
    server.py    prepare (check, resolve, key, bind) and serve (uvicorn)
    cli.py       `register(app)` adds `deployer gateway run|check|status`

Only cli.py is imported at start-up, and it imports typer alone: the serving stack (starlette,
uvicorn, prometheus-client) is imported by the command that needs it.
"""
