"""A non-editable install ships both packages and the templates as package data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.engine import REPO


def test_wheel_carries_deployer_providers_and_templates(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("deployer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.name for p in (REPO / "templates").iterdir())
    assert templates and all(f"deployer/templates/{t}" in names for t in templates)
    assert "deployer/cli.py" in names and "providers/local/adapter.py" in names
    assert not any(n.startswith("tests/") for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "from deployer.templating import templates_dir; print(templates_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(site)}).stdout.strip()
    assert out == str(site / "deployer" / "templates")
