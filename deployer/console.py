"""Rich consoles for the CLI: stdout for results, stderr for progress and errors.

Long lines are never folded or cut: on a terminal rich uses its width; piped, a wide virtual
width keeps tables whole and error messages (file:line: key: ...) on one line each.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PIPED_WIDTH = 200


def stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def print_json(doc: Any) -> None:
    """`doc` as the one JSON document a --json command prints on stdout."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
