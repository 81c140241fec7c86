"""Validation of control-plane traffic against RunPod's own OpenAPI document (openapi-core).

`ContractChecker.request(...)` and `.response(...)` return a list of problems (empty: valid). The
emulator records every problem as a violation, which fails the test that caused it. Beyond what
openapi-core checks, a query parameter the operation does not declare is a problem too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import PathNotFound
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.support.engine import CONTRACTS

SPEC_PATH = CONTRACTS / "runpod" / "openapi-v2.json"
HOST_URL = "https://api.runpod.io"  # the document's server; paths carry /v2


@cache
def document() -> dict[str, Any]:
    return json.loads(Path(SPEC_PATH).read_text())


@cache
def _openapi() -> OpenAPI:
    config = Config(extra_media_type_deserializers={
        "application/problem+json": json.loads,
        "text/event-stream": lambda data: data.decode() if isinstance(data, bytes) else data,
    })
    return OpenAPI.from_dict(document(), config=config)


@dataclass
class _Request:
    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters


@dataclass
class _Response:
    status_code: int
    content_type: str
    headers: Headers
    data: bytes | None


def _request(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes | None) -> _Request:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "") if body else ""
    params = RequestParameters(query=ImmutableMultiDict(list(query.items())), header=Headers(headers),
                               cookie=ImmutableMultiDict())
    return _Request(HOST_URL, path, method.lower(), body or None, content_type.lower(), params)


def _describe(errors: list[Exception]) -> list[str]:
    out = []
    for error in errors:
        cause = error.__cause__
        detail = getattr(cause, "schema_errors", None)
        if detail:
            out += [f"{error.__class__.__name__}: {e.message} at {list(e.absolute_path)}" for e in detail]
        else:
            out.append(f"{error.__class__.__name__}: {error} {cause or ''}".strip())
    return out


def operation(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """(path template, operation object) for a request, or None when the document lacks it."""
    doc = document()
    parts = path.rstrip("/").split("/")
    for template, item in doc["paths"].items():
        tparts = template.split("/")
        if len(tparts) == len(parts) and all(t.startswith("{") or t == p for t, p in zip(tparts, parts)):
            op = item.get(method.lower())
            if op is not None:
                return template, op
    return None


def _declared_query(template: str, op: dict[str, Any]) -> set[str]:
    doc = document()
    names = set()
    for param in [*doc["paths"][template].get("parameters", []), *op.get("parameters", [])]:
        if "$ref" in param:
            param = doc["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
        if param.get("in") == "query":
            names.add(param["name"])
    return names


class ContractChecker:
    """Checks requests received and responses sent by the control plane."""

    def request(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                body: bytes | None) -> list[str]:
        found = operation(method, path)
        if found is None:
            return [f"{method} {path} is not in openapi-v2.json"]
        problems = [f"query parameter {name!r} is not declared for {method} {found[0]}"
                    for name in query if name not in _declared_query(*found)]
        try:
            result = _openapi().unmarshal_request(_request(method, path, query, headers, body))
        except PathNotFound:
            return [f"{method} {path} is not in openapi-v2.json"]
        return problems + _describe(list(result.errors))

    def response(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes | None,
                 status: int, response_headers: dict[str, str], data: bytes) -> list[str]:
        if operation(method, path) is None:
            return []  # already reported on the request
        content_type = response_headers.get("Content-Type", "")
        response = _Response(status, content_type.lower() if data else "", Headers(response_headers), data or None)
        result = _openapi().unmarshal_response(_request(method, path, query, headers, body), response)
        return _describe(list(result.errors))

    @staticmethod
    def security_only(problems: list[str]) -> bool:
        """Whether the only request problem is missing credentials (answered with a 401)."""
        return bool(problems) and all(p.startswith("SecurityValidationError") for p in problems)
