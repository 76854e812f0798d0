"""What a plain (non-editable) install gets: the wheel carries every built-in plugin package
and the registry of published tables that ``--compare`` reads."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_install_compares_with_published_numbers(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheel"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "harness/registry.toml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import harness, harness.suites as s; print(harness.__file__); "
            "print(sorted(s.registry_suites()['liu2020-table1'].published))")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    where, datasets = result.stdout.splitlines()
    assert where.startswith(str(site))
    assert datasets == "['grid', 'ring']"
