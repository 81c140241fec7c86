"""A fresh clone passes on its own: nothing the suite runs reads outside the repository.

The guard itself (tests/support/guarded_site) is proven here: it must notice an outside open in
pytest's own process and in every kind of subprocess the suite starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import OUTSIDE_OPENS, PATH_LOG
from tests.support.engine import CONTRACTS, REPO
from tests.support.guarded_site import path_guard

OUTSIDE = "/"  # exists everywhere, lies under no allowed root
THIS_FILE = Path(__file__).name
# spec text a test writes to a temp folder, where it resolves beside the spec file
SPEC_DATA = {("tests/test_spec.py", "../weights")}
CLIMB = re.compile(r"(?<![\w.])(?:\.\./)+[\w.-]+(?:/[\w.-]+)*")  # a relative path that starts by going up


def _run_python(code: str, log: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, path_guard.LOG_ENV: str(log)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_guard_notices_an_outside_open_in_this_process() -> None:
    OUTSIDE_OPENS.take()
    try:
        open(OUTSIDE)  # noqa: SIM115 - a directory: the open fails, after the audit event
    except IsADirectoryError:
        pass
    os.listdir(OUTSIDE)  # reading a directory's entries reads outside too
    noted = OUTSIDE_OPENS.take()  # taken here, so the autouse check does not fail this test
    assert f"opened {OUTSIDE}\n" in noted and f"listed {OUTSIDE}\n" in noted and str(PATH_LOG) != OUTSIDE


def test_the_guard_follows_every_python_subprocess(tmp_path: Path) -> None:
    """Started from any directory, a subprocess loads the guard through PYTHONPATH; what it opens
    inside the repo, the temp dir or the Python installation is fine, a missing file is fine."""
    log = tmp_path / "opened.log"
    code = ("import json, os, sys\n"
            f"open({str(REPO / 'pyproject.toml')!r}).close(); open({str(tmp_path / 'x')!r}, 'w').close()\n"
            "open(os.path.join(sys.base_prefix, 'lib', 'python3.11', 'os.py')).close()\n"
            "try: open('/no/such/deployer/file')\nexcept FileNotFoundError: pass\n"
            f"try: open({OUTSIDE!r})\nexcept IsADirectoryError: pass\n")
    done = _run_python(code, log, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"opened {OUTSIDE}"), lines


def test_the_guard_follows_grandchildren(tmp_path: Path) -> None:
    """Emulators start engines that start workers: the guard reaches every generation."""
    log = tmp_path / "opened.log"
    inner = f"try: open({OUTSIDE!r})\nexcept IsADirectoryError: pass\n"
    done = _run_python(f"import subprocess, sys; subprocess.run([sys.executable, '-c', {inner!r}], check=True)",
                       log, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert log.read_text().count(f"opened {OUTSIDE}\n") == 1


def test_pips_package_sources_are_the_environment(tmp_path: Path, monkeypatch) -> None:
    """`pip wheel` reads the folders pip is configured to take packages from, as it would an
    index: they are allowed, from the environment and from pip's config files; nothing else is."""
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nextra-index-url = file:///srv/pypi/simple https://pypi.org/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", "/srv/wheels")
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    sources = path_guard.package_sources()
    assert {"/srv/wheels/", "/srv/pypi/simple/"} <= set(sources)
    assert not path_guard.outside("/srv/wheels/setuptools.whl", sources)
    assert path_guard.outside("/srv/other", sources)


def test_home_is_a_temp_dir() -> None:
    """No user config (~/.runpod, ~/.modal.toml, ~/.lambda_cloud) or cache is read by a test."""
    home = Path(os.environ["HOME"]).resolve()
    assert Path(tempfile.gettempdir()).resolve() in home.parents


def test_contracts_carry_their_provenance() -> None:
    for name in ("runpod/openapi-v2.json", "lambda/openapi-1.10.0.json"):
        info = json.loads((CONTRACTS / name).read_text())["info"]
        about = info["x-deployer-contract"]
        assert about["document_version"] == info["version"] and about["as_of"] and about["source"]
        assert about["paths_kept"] < about["paths_in_source"]
    readme = (CONTRACTS / "README.md").read_text()
    for path in CONTRACTS.rglob("*.json"):
        assert f"`{path.relative_to(CONTRACTS)}`" in readme, f"{path} has no provenance row in the README"


def test_no_tracked_file_names_a_path_that_climbs_out_of_the_checkout() -> None:
    """No source, config, template or docstring names a relative path (`../x`) that leaves the
    checkout. A YAML file's paths are resolved from its folder (as a spec's model path is);
    everything else's from its folder and from the repository root, where the suite, the CLI and
    make run. Only the checkout's own files are read; that nothing outside is read while tests
    run is the guard's job (above)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:  # an exported tree (git archive) has no .git: scan the files on disk
        files = [p for p in REPO.rglob("*") if p.is_file() and not {".venv", ".cache", ".git"} & set(p.parts)]
    else:
        files = [REPO / line for line in tracked.stdout.splitlines()]
    root = REPO.resolve()
    offenders = []
    for file in files:
        if file.suffix not in (".py", ".yaml", ".yml", ".toml", ".json", ".j2", ".sh", "") or file.name == THIS_FILE:
            continue  # this file names paths out on purpose, to prove the pattern
        bases = [file.parent] + ([] if file.suffix in (".yaml", ".yml") else [REPO])
        for climb in CLIMB.findall(file.read_text(errors="replace")):
            if (str(file.relative_to(REPO)), climb) in SPEC_DATA:
                continue
            if any(not (base / climb).resolve().is_relative_to(root) for base in bases):
                offenders.append(f"{file.relative_to(REPO)}: {climb}")
    assert offenders == []


def test_the_climb_check_sees_a_path_out() -> None:
    """The pattern above finds what it must (and not the prose about `../` prefixes)."""
    text = 'x = "../../elsewhere/notes.md"; y = "./a/../b"; doc = "starts with /, ./, ../ or ~"'
    assert CLIMB.findall(text) == ["../../elsewhere/notes.md", "../b"]
