"""The CLI as users run it: a subprocess, its exit codes, its stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from tests.support.engine import REPO

LOCAL_TINY = str(REPO / "configs" / "local-tiny.yaml")


def test_help_lists_every_command(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("plan", "deploy", "status", "list", "destroy", "logs", "schema"):
        assert command in result.out


def test_help_flows_docstring_paragraphs_as_the_terminal_wraps(cli) -> None:
    wide = cli("cost", "--help", env={"COLUMNS": "220"})
    assert wide.code == 0
    lines = [line.strip() for line in wide.out.splitlines()]
    assert "Cost per request and per month on every provider that can host the spec's GPUs." in lines
    assert ("Also the break-even with always-on, and a recommendation. Prices: shipped (dated), live with a "
            "provider key, or overridden by --pricing.") in lines


def test_plan_json_is_one_document_with_the_artifacts(cli, home: Path) -> None:
    result = cli("plan", LOCAL_TINY, "--json")
    assert result.code == 0, result
    doc = json.loads(result.out)
    assert {"name", "provider", "spec", "artifacts"} <= set(doc)
    assert doc["name"] == "tiny" and doc["provider"] == "local"
    assert set(doc["artifacts"]) == {"files", "requests"}
    script = doc["artifacts"]["files"]["local/tiny/serve.sh"]
    assert "--served-model-name tiny" in script and "--max-model-len 256" in script
    # the key guard vLLM loads (its own check covers /v1 only), imported from beside the script
    assert "--middleware deployer_vllm_guard.RequireKey" in script and "PYTHONPATH=" in script
    assert "class RequireKey" in doc["artifacts"]["files"]["local/tiny/deployer_vllm_guard.py"]
    assert not (home / "keys").exists()  # plan writes nothing, so no key exists to leak


def test_provider_flag_overrides_the_file(cli) -> None:
    result = cli("plan", LOCAL_TINY, "--provider", "nope", "--json")
    assert result.code == 2
    assert json.loads(result.out)["exit_code"] == 2
    assert "unknown provider 'nope'" in result.err and "Traceback" not in result.err


def test_bad_input_exits_2_with_one_message(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: tiny\nmodel:\n  id: org/m\nscalling: {}\n")
    result = cli("deploy", str(bad))
    assert result.code == 2
    assert f"{bad}:4: scalling: unknown key (did you mean 'scaling'?)" in " ".join(result.err.split())
    assert "Traceback" not in result.err and result.out == ""
    missing = cli("plan", str(tmp_path / "missing.yaml"))
    assert missing.code == 2 and "no such file" in missing.err


def test_status_of_an_unknown_name_fails_cleanly(cli) -> None:
    result = cli("status", "ghost")
    assert result.code == 1 and "no deployment named 'ghost'" in result.err


def test_destroy_of_an_unknown_name_is_a_no_op(cli) -> None:
    result = cli("destroy", "ghost", "--json")
    assert result.code == 0 and result.json() == {"name": "ghost", "destroyed": [], "status": "absent"}


def test_schema_is_a_json_schema_that_accepts_the_configs(cli) -> None:
    result = cli("schema")
    schema = json.loads(result.out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "providers" in schema["properties"]


def test_help_plan_and_status_do_not_import_heavy_sdks(home: Path) -> None:
    code = (
        "import sys\n"
        "from deployer.cli import main\n"
        "sys.argv = ['deployer'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(','.join(m for m in ('modal', 'runpod', 'vllm', 'torch', 'grpclib') if m in sys.modules), file=sys.stderr)\n"
    )
    plans = [["plan", str(path)] for path in sorted((REPO / "configs").glob("*.yaml"))]
    for args in (["--help"], *plans, ["status"], ["list"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                              env={"DEPLOYER_HOME": str(home), "PATH": "/usr/bin:/bin"})
        assert proc.stderr.strip().splitlines()[-1:] in ([], [""]), (args, proc.stderr[-500:])


def test_a_weak_endpoint_key_is_refused_before_anything_is_created(cli, home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "weak.yaml"
    spec.write_text(f"name: weak\nmodel: {{id: {REPO / '.cache' / 'tiny-model'}}}\nauth: {{api_key_env: WEAK_KEY}}\n")
    result = cli("deploy", str(spec), env={"WEAK_KEY": "short"})
    assert result.code == 2
    assert "$WEAK_KEY is too weak to protect an endpoint" in result.err
    assert not (home / "state.db").exists() or cli("list", "--json").json() == []
