"""The spec: good files load, bad files give one clear message with file, key, line and hint."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from deployer.errors import InputError
from deployer.spec import json_schema, load_spec, validate_spec
from tests.support.engine import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_matches_the_schema(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name and spec.provider
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nmodel:\n  id: org/m\n  max_modle_len: 10\n")
    with pytest.raises(InputError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}:4: model.max_modle_len: unknown key (did you mean 'max_model_len'?)"


def test_bad_value_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nmodel: {id: org/m}\nscaling:\n  min_replicas: 3\n  max_replicas: 1\n")
    with pytest.raises(InputError) as err:
        load_spec(path)
    assert str(err.value) == f"{path}:3: scaling: min_replicas (3) is above max_replicas (1)"


def test_unknown_gpu_gets_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nmodel: {id: org/m}\nresources:\n  gpu: h100\n")
    with pytest.raises(InputError, match=r"spec.yaml:4: resources.gpu: unknown GPU 'h100' \(did you mean 'H100'\?\)"):
        load_spec(path)


def test_missing_required_key(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"spec.yaml:1: model: required key is missing"):
        load_spec(write(tmp_path, "name: demo\n"))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"spec.yaml:3: invalid YAML: mapping values are not allowed here"):
        load_spec(write(tmp_path, "name: demo\nmodel:\n  id: a: b\n"))


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"spec.yaml:3: name: key given twice"):
        load_spec(write(tmp_path, "name: a\nmodel: {id: org/m}\nname: b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("engine_args", "message"),
    [({"api-key": "x"}, "'api-key' is set by auth"), ({"--enforce-eager": True}, "not a vLLM flag name"),
     ({"tensor-parallel-size": 2}, "set by resources.count")],
)
def test_engine_args_cannot_shadow_spec_fields(engine_args: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        validate_spec({"name": "demo", "model": {"id": "org/m", "engine_args": engine_args}})


def test_provider_override_and_unknown_provider(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\nprovider: local\nmodel: {id: org/m}\n")
    assert load_spec(path, provider="runpod").provider == "runpod"
    with pytest.raises(InputError, match=r"unknown provider 'runpd' \(did you mean 'runpod'\?\)"):
        load_spec(path, provider="runpd")


def test_relative_model_path_is_resolved_against_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "spec.yaml"
    path.write_text("name: demo\nmodel: {id: ../weights}\n")
    assert load_spec(path).model.id == str(tmp_path / "weights")
    assert load_spec(write(tmp_path, "name: demo\nmodel: {id: org/model}\n")).model.id == "org/model"


def test_fingerprint_ignores_other_providers_blocks() -> None:
    base = {"name": "demo", "model": {"id": "org/m"}}
    a = validate_spec(base)
    b = validate_spec({**base, "providers": {"modal": {}}})
    c = validate_spec({**base, "scaling": {"max_replicas": 2}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_bad_names_are_refused() -> None:
    for bad in ("A", "x", "has_underscore", "-lead", "a" * 33):
        with pytest.raises(InputError, match="name"):
            validate_spec({"name": bad, "model": {"id": "org/m"}})
