"""YAML loading that remembers lines, and validation errors phrased for people.

Messages read `FILE:LINE: key.path: what is wrong (did you mean ...?)`.
"""

from __future__ import annotations

import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InputError

Path_ = tuple[Any, ...]


def read_yaml_file(path: Path, *, missing_hint: str) -> tuple[Any, dict[Path_, int]]:
    """Read and parse a YAML file; return the data and its key path -> line map. Raises
    InputError for a missing file (with `missing_hint`), an unreadable one, or invalid YAML."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file", hint=missing_hint) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    return load_yaml_with_lines(text, str(path))


def load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML text; return the data and a map from key path to 1-based line.

    Raises InputError for invalid YAML or a key given twice in one mapping.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{where}: invalid YAML: {problem}") from None
    lines: dict[Path_, int] = {}
    if root is not None:
        _walk(root, (), lines, source)
    return data, lines


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise InputError(
                    f"{source}:{key_node.start_mark.line + 1}: {_dotted(path + (key,))}: key given twice"
                )
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, path + (index,), lines, source)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _model_at(model: type[BaseModel], path: Path_) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `path`, when there is one."""
    current: Any = model
    for part in path:
        if isinstance(part, int) and typing.get_origin(current) is list:  # an item of list[Model]
            current = _unwrap(typing.get_args(current)[0])
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")) and len(args) == 1:
        return args[0]
    return annotation


def describe_validation_error(
    exc: ValidationError, source: str, lines: dict[Path_, int], model: type[BaseModel]
) -> str:
    """One line per problem (at most 8), each with file, line, key path and a hint."""
    out = []
    for err in exc.errors()[:8]:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        where = _where(source, lines, loc)
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            close = get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else (f"; allowed: {', '.join(allowed)}" if allowed else "")
            out.append(f"{where}: {_dotted(loc)}: unknown key{hint}")
        elif err["type"] == "missing":
            out.append(f"{where}: {_dotted(loc)}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(f"{where}: {_dotted(loc)}: {msg}")
    if len(exc.errors()) > 8:
        out.append(f"... and {len(exc.errors()) - 8} more")
    return "\n".join(out)


def locate(source: str, lines: dict[Path_, int], loc: Path_) -> str:
    """`FILE:LINE: key.path`, for a problem found after validation (the line of `loc`, or of the
    nearest enclosing key the YAML has)."""
    return f"{_where(source, lines, loc)}: {_dotted(loc)}"


def _where(source: str, lines: dict[Path_, int], loc: Path_) -> str:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return f"{source}:{lines[loc[:cut]]}"
    return source
