"""Cost and capacity planning: `deployer cost`, and the capacity and cost figures of `plan`.

    catalog.py    prices: shipped (deployer/data/prices.yaml), live, overridden; with provenance
    live.py       live prices through each backend's optional `pricing` module
    formulas.py   the arithmetic (pure)
    modelsize.py  parameter counts, layer shapes (config.json, deployer/data/models.yaml)
    capacity.py   weights + KV cache vs GPU memory; cold-start ranges
    report.py     options, break-even, recommendation; `plan_summary` for `plan`
    cli.py        `register(app)` adds `deployer cost`
"""
