"""Start-up: ``--help`` and ``--version`` of every command, and listing the components,
import no heavy library (torch takes seconds to import on a loaded machine)."""

import json
import os
import subprocess
import sys

HEAVY = ("torch", "numpy", "pandas", "matplotlib", "sklearn", "scipy")

HELP_OF_EVERY_COMMAND = """
import contextlib, io, json, sys
from harness.cli import build_parser, main
commands = build_parser()._subparsers._group_actions[0].choices
codes = {}
for argv in (["--version"], ["--help"], *([name, "--help"] for name in commands)):
    with contextlib.redirect_stdout(io.StringIO()):
        codes[" ".join(argv)] = main(argv)
print(json.dumps({"codes": codes, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""

LIST_COMPONENTS = """
import contextlib, io, json, sys
from harness.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["plugins"])
print(json.dumps({"code": code, "out": out.getvalue(),
                  "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its JSON output."""
    result = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=120, check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_help_and_version_of_every_command_import_nothing_heavy():
    result = python(HELP_OF_EVERY_COMMAND)
    assert result["heavy"] == []
    assert set(result["codes"].values()) == {0}
    assert {"--version", "--help", "run --help", "plugins --help"} <= set(result["codes"])


def test_listing_the_plugins_imports_nothing_heavy():
    # every built-in plugin module, lifecycle ones included, imports torch only where used
    result = python(LIST_COMPONENTS)
    assert result["heavy"] == [] and result["code"] == 0
    assert "kmeans_d" in result["out"] and "fid_inception" in result["out"]
    assert "figures" in result["out"] and "tensorboard" in result["out"]
