"""Regenerate a provider contract from the provider's full published OpenAPI document.

    python -m tests.contracts.refresh runpod  PATH/openapi-v2.json     [--as-of YYYY-MM-DD]
    python -m tests.contracts.refresh lambda  PATH/openapi-1.10.0.json [--as-of YYYY-MM-DD]

The emulators validate every request and response against the contract written here. A contract
is the provider's document cut down to the paths deployer's adapters call (each path item whole,
so "path exists with another method" still answers 405) and every component those paths reach
through `$ref`; prose (descriptions, summaries, examples) is dropped, schemas are kept exactly.
Provenance goes into `info["x-deployer-contract"]` and tests/contracts/README.md lists it.

Run it when a provider publishes a new version, then run the suite: an adapter that no longer
matches the provider fails its emulator tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


CONTRACTS: dict[str, dict[str, Any]] = {
    "runpod": {
        "output": HERE / "runpod" / "openapi-v2.json",
        "source": "RunPod REST API v2 OpenAPI document, linked from docs.runpod.io/api-reference-v2/overview "
                  "(base https://api.runpod.io/v2)",
        "paths": [
            "/v2/serverless", "/v2/serverless/{id}", "/v2/serverless/{id}/workers",
            "/v2/serverless/{id}/workers/{workerId}/logs",
            "/v2/templates", "/v2/templates/{id}",
            "/v2/catalog/gpus", "/v2/catalog/gpus/{id}",
        ],
    },
    "lambda": {
        "output": HERE / "lambda" / "openapi-1.10.0.json",
        "source": "Lambda Cloud API OpenAPI document, published with docs-api.lambda.ai/api/cloud "
                  "(base https://cloud.lambda.ai/api/v1)",
        "paths": [
            "/api/v1/instance-types", "/api/v1/regions", "/api/v1/images",
            "/api/v1/instance-operations/launch", "/api/v1/instance-operations/terminate",
            "/api/v1/instance-operations/restart",
            "/api/v1/instances", "/api/v1/instances/{id}",
            "/api/v1/ssh-keys", "/api/v1/ssh-keys/{id}",
            "/api/v1/firewall-rulesets", "/api/v1/firewall-rulesets/global", "/api/v1/firewall-rulesets/{id}",
            "/api/v1/file-systems", "/api/v1/filesystems", "/api/v1/filesystems/{id}",
        ],
    },
}

# Annotation keywords: they carry prose, never a constraint the emulators check.
PROSE = frozenset({"description", "summary", "example", "examples", "externalDocs", "x-codeSamples"})
# Mappings whose keys are names chosen by the document (a property called "description" is data).
NAMED = frozenset({"properties", "patternProperties", "$defs", "schemas", "responses", "parameters", "headers",
                   "securitySchemes", "content", "paths", "mapping", "variables", "requestBodies"})


def strip_prose(node: Any, *, named: bool = False, responses: bool = False, response: bool = False) -> Any:
    """`node` without annotation keywords. Keys of name-keyed mappings are kept whatever they are,
    and so is a Response object's `description` (OpenAPI requires one)."""
    if isinstance(node, list):
        return [strip_prose(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if named:  # `key` is a name: `value` is what it names (a Response object under "responses")
            out[key] = strip_prose(value, response=responses)
        elif key in PROSE and not (response and key == "description"):
            continue
        else:
            out[key] = strip_prose(value, named=key in NAMED, responses=key == "responses")
    return out


def refs(node: Any) -> set[str]:
    """Every local `$ref` target ("#/components/...") inside `node`."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            found.add(ref)
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def cut(doc: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The document reduced to `paths` and the components they reach (transitively), security
    schemes included. Raises KeyError naming a path the document lacks."""
    missing = [p for p in paths if p not in doc["paths"]]
    if missing:
        raise KeyError(f"the document has no {', '.join(missing)}: did the provider move them?")
    kept_paths = {p: doc["paths"][p] for p in paths}
    todo = refs(kept_paths) | {f"#/components/securitySchemes/{n}" for n in doc["components"].get("securitySchemes", {})}
    seen: set[str] = set()
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        todo |= refs(_resolve(doc, ref))
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(seen):
        _, _, section, name = ref.split("/", 3)
        components.setdefault(section, {})[name] = doc["components"][section][name]
    out = {key: doc[key] for key in ("openapi", "servers", "security") if key in doc}
    out["info"] = {"title": doc["info"]["title"], "version": doc["info"]["version"]}
    out["paths"] = kept_paths
    out["components"] = components
    return strip_prose(out)


def refresh(provider: str, source: Path, as_of: str) -> Path:
    """Write the contract of `provider` from the full document at `source`; returns its path."""
    config = CONTRACTS[provider]
    full = json.loads(source.read_text())
    contract = cut(full, config["paths"])
    contract["info"]["x-deployer-contract"] = {
        "source": config["source"],
        "document_version": full["info"]["version"],
        "as_of": as_of,
        "generated_by": "python -m tests.contracts.refresh " + provider,
        "paths_kept": len(config["paths"]),
        "paths_in_source": len(full["paths"]),
    }
    output: Path = config["output"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(contract, indent=1, sort_keys=False) + "\n")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.contracts.refresh", description=__doc__.split("\n\n")[0])
    parser.add_argument("provider", choices=sorted(CONTRACTS))
    parser.add_argument("source", type=Path, help="the provider's full OpenAPI document (JSON)")
    parser.add_argument("--as-of", default=datetime.date.today().isoformat(), help="when the document was taken")
    args = parser.parse_args(argv)
    try:
        path = refresh(args.provider, args.source, args.as_of)
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
