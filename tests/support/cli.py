"""One `deployer` CLI invocation's result, for every test that runs the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class CliResult:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return (f"CliResult({' '.join(self.args)!r}, code={self.code}, "
                f"out={self.out[-1500:]!r}, err={self.err[-1500:]!r})")
