"""A fresh clone passes on its own: nothing the suite runs reads outside the repository.

The guard itself (tests/support/guarded_site) is proven here: it must notice an outside open in
pytest's own process and in every kind of subprocess the suite starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import OUTSIDE_OPENS, PATH_LOG
from tests.support.engine import CONTRACTS, REPO
from tests.support.guarded_site import path_guard

OUTSIDE = "/"  # exists everywhere, lies under no allowed root


def _run_python(code: str, log: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, path_guard.LOG_ENV: str(log)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_guard_notices_an_outside_open_in_this_process() -> None:
    OUTSIDE_OPENS.take()
    try:
        open(OUTSIDE)  # noqa: SIM115 - a directory: the open fails, after the audit event
    except IsADirectoryError:
        pass
    noted = OUTSIDE_OPENS.take()  # taken here, so the autouse check does not fail this test
    assert f"opened {OUTSIDE}\n" in noted and str(PATH_LOG) != OUTSIDE


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


def test_no_tracked_file_names_a_folder_beside_the_repo() -> None:
    """No source, data file or docstring points into a folder that sits beside this checkout
    (a user's clone has none): for every sibling folder, "<folder>/<entry>" for each of its
    entries is searched for (e.g. a reference folder's `docs/NOTES.md`, relative or absolute).
    The folder listings are read, never a file in them. A clone alone in its folder has nothing
    beside it to name."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:  # an exported tree (git archive) has no .git: scan the files on disk
        files = [p for p in REPO.rglob("*") if p.is_file() and not {".venv", ".cache", ".git"} & set(p.parts)]
    else:
        files = [REPO / line for line in tracked.stdout.splitlines()]
    siblings = [p for p in REPO.parent.iterdir() if p.is_dir() and p.resolve() != REPO.resolve()]
    needles = [f"{folder.name}/{entry.name}" for folder in siblings for entry in folder.iterdir()]
    needles.append("DEPLOYER_SHARED_DIR")  # the variable that once pointed the suite at such a folder
    offenders = [f"{f.relative_to(REPO)}: {needle}" for f in files
                 if f.suffix in (".py", ".yaml", ".yml", ".toml", ".json", ".j2", ".sh", "") and f.name != Path(__file__).name
                 for needle in needles if needle in f.read_text(errors="replace")]
    assert offenders == []
