"""Lambda's own OpenAPI 1.10.0 document as the emulator's referee.

Every request the emulator receives and every response it sends is validated here with
jsonschema (OpenAPI 3.1 schemas are JSON Schema 2020-12). Objects are made strict: a property
the document does not declare is an error, so a misspelt field in an adapter request, or an
invented field in an emulator response, fails the test instead of passing silently.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from tests.support.engine import CONTRACTS

SPEC_PATH = CONTRACTS / "lambda" / "openapi-1.10.0.json"
PREFIX = "/api/v1"

# Statuses Lambda answers without documenting them per operation (429 rate limits, 5xx from
# upstream providers): the documented global error envelope.
ERROR_ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "suggestion": {"type": "string"}},
        }
    },
}


def _format_checker() -> FormatChecker:
    checker = FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if isinstance(value, str):
            datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    @checker.checks("ipv4network", raises=ValueError)
    def _ipv4network(value: object) -> bool:
        if isinstance(value, str):
            ipaddress.IPv4Network(value, strict=False)
        return True

    return checker


def _strict(node: Any) -> Any:
    """Add `additionalProperties: false` to every object schema that lists its properties."""
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # e.g. /instances/{id} (without the /api/v1 prefix)
    pattern: re.Pattern[str]
    operation: dict[str, Any]


class OpenApi:
    """Routes and validators from the document. Methods return a list of problems (empty: valid)."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        raw = json.loads(path.read_text())
        self.doc = _strict(copy.deepcopy(raw))
        self.info = raw["info"]
        self._checker = _format_checker()
        self.routes: list[Route] = []
        for template, item in self.doc["paths"].items():
            if not template.startswith(PREFIX):
                continue
            short = template[len(PREFIX):]
            regex = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(short)) + "$")
            for method, op in item.items():
                if method in ("get", "post", "put", "patch", "delete"):
                    self.routes.append(Route(method.upper(), short, regex, op))
        # literal paths before templated ones (/firewall-rulesets/global before /{id})
        self.routes.sort(key=lambda r: "{" in r.template)

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, path params, path exists with another method)."""
        other = False
        for route in self.routes:
            found = route.pattern.match(path)
            if found:
                if route.method == method:
                    return route, found.groupdict(), False
                other = True
        return None, {}, other

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        # Refs in the document are "#/components/...": give the schema the components at its root.
        return Draft202012Validator({**schema, "components": self.doc["components"]}, format_checker=self._checker)

    def _problems(self, schema: dict[str, Any], instance: Any, what: str) -> list[str]:
        errors = sorted(self._validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"{what}: {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]

    def request_problems(self, route: Route, body: Any) -> list[str]:
        spec = route.operation.get("requestBody")
        if spec is None:
            return [] if body is None else [f"{route.method} {route.template} takes no request body"]
        if body is None:
            return [f"{route.method} {route.template}: request body required"] if spec.get("required") else []
        schema = spec["content"]["application/json"]["schema"]
        return self._problems(schema, body, f"request {route.method} {route.template}")

    def response_problems(self, route: Route | None, status: int, body: Any) -> list[str]:
        where = f"response {status} to {route.method} {route.template}" if route else f"response {status}"
        documented = route.operation["responses"].get(str(status)) if route else None
        if documented is None:
            if status == 429 or status >= 500 or route is None:
                return self._problems(ERROR_ENVELOPE, body, where)
            return [f"{where}: status {status} is not documented for this operation"]
        return self._problems(documented["content"]["application/json"]["schema"], body, where)

    def schema_of(self, name: str) -> dict[str, Any]:
        return self.doc["components"]["schemas"][name]


@cache
def openapi() -> OpenApi:
    """The parsed document (shared: it is read-only)."""
    return OpenApi()
