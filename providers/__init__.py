"""The backends `deployer` can deploy to, one package each.

Every backend package has two modules:
- `options.py`: `Options`, the pydantic model of its block under `providers.<name>` in the
  spec. It must import nothing heavy: the spec loader imports every backend's options.
- `adapter.py`: `Provider`, the implementation of `deployer.provider.Provider`. Heavy SDKs are
  imported inside its methods, never at module level.

The core finds backends only through this table.
"""

BACKENDS: dict[str, str] = {
    "local": "providers.local",
    "runpod": "providers.runpod",
    "lambda": "providers.lambda_cloud",
    "modal": "providers.modal",
}
