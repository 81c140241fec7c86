"""Property-based bad input: spec files and CLI arguments only ever produce clean errors."""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from deployer.errors import InputError
from deployer.spec import load_spec
from tests.support.engine import REPO

VALID = yaml.safe_load((REPO / "configs" / "local-tiny.yaml").read_text())
KEYS = ["name", "provider", "model", "id", "resources", "gpu", "count", "scaling", "min_replicas",
        "max_replicas", "idle_timeout", "startup", "auth", "providers", "local", "runpod", "engine_args", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["H100", "local", "modal", "-1", "1e9", "~", "[]"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def mutate(data: dict, path: list[str], value: object) -> dict:
    out = dict(data)
    if len(path) == 1:
        out[path[0]] = value
    else:
        child = out.get(path[0])
        out[path[0]] = mutate(child if isinstance(child, dict) else {}, path[1:], value)
    return out


def only_clean_errors(path: Path) -> None:
    try:
        load_spec(path)
    except InputError as exc:
        assert str(path) in str(exc) and "Traceback" not in str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), value=values)
def test_mutated_specs_fail_cleanly_or_load(tmp_path: Path, path: list[str], value: object) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(mutate(VALID, path, value)))
    only_clean_errors(spec)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=string.printable + "\u00e9\u2603\x00", max_size=200))
def test_arbitrary_text_fails_cleanly(tmp_path: Path, text: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text, errors="surrogateescape")
    only_clean_errors(spec)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(st.sampled_from(["plan", "deploy", "destroy", "status", "logs", "gc", "--json", "--provider",
                                      "modal", "nope", "configs/local-tiny.yaml", "/nonexistent.yaml", "-p", "--yes",
                                      "--follow", "UPPER", "", "--bogus"]), min_size=1, max_size=4))
def test_cli_arguments_never_traceback(home: Path, args: list[str]) -> None:
    if args[0] == "deploy" or ("logs" in args and "--follow" in args):
        args = ["plan", *args[1:]]  # nothing here may start a real deployment or block
    proc = subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True, cwd=REPO,
                          env={"DEPLOYER_HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, (args, proc.stderr[-1000:])
    assert proc.returncode in (0, 1, 2), (args, proc.returncode, proc.stderr[-500:])
