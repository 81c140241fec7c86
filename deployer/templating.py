"""Render the Jinja2 text templates in `templates/` (package data `deployer/templates` in a wheel).

Rendering is pure: a template sees only the values passed in. Undefined names are errors, so a
template never silently renders an empty flag.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Any


def templates_dir() -> Path:
    """`deployer/templates` in an installed wheel, else the repository's `templates/`."""
    packaged = Path(__file__).resolve().parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "templates"


@cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = shlex.quote
    env.filters["shjoin"] = shlex.join
    return env


def render(template: str, **context: Any) -> str:
    """The text of `template` rendered with `context`. Raises jinja2 errors on bad templates."""
    return _environment().get_template(template).render(**context)
