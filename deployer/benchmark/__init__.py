"""`deployer bench NAME`: measure a live deployment through its OpenAI-compatible endpoint.

    load.py   the async streaming client: closed-loop load, one request's timings, errors by kind
    stats.py  percentiles and the report (plain data: the JSON of `bench --json`)
    cold.py   `--cold`: the provider makes the deployment cold, then first request -> first token,
              beside the capacity model's prediction
    store.py  results in the state database (`cost NAME --measured` reads them)
    cli.py    the command, its progress bar and table
"""
