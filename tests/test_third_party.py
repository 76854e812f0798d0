"""A third-party plugin package, pip-installed, found through its entry point and used."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
from pathlib import Path

import torch
from pydantic import Field

from harness import hookimpl
from harness.api import Options, Prior, Regularizer


class ShiftedOptions(Options):
    shift: float = Field(0.0, description="mean of every coordinate")


class ShiftedGaussian(Prior):
    """N(shift, I): an example third-party prior."""

    Options = ShiftedOptions

    def sample(self, n, labels=None, scale=1.0):
        return self.options.shift + scale * torch.randn(n, self.z_dim)


@hookimpl
def harness_priors():
    return {"shifted_gaussian": ShiftedGaussian}


class DriftOptions(Options):
    epsilon: float = Field(0.001, gt=0, le=1, description="weight of the drift penalty")


class Drift(Regularizer):
    """ProGAN's drift penalty epsilon * E[D(x_real)^2] (Karras et al. 2018)."""

    Options = DriftOptions

    def d_terms(self, real, fake, step):
        return {"d_drift": self.options.epsilon * real.score.pow(2).mean()}


@hookimpl
def harness_regularizers():
    return {"drift": Drift}


@hookimpl
def harness_run_finished(run, metrics):
    Path(run.directory, "example-plugin-saw.json").write_text(str(sorted(metrics)))
'''


def write_package(root: Path, name: str, module_source: str) -> Path:
    package = root / name
    module = name.replace("-", "_")
    (package / module).mkdir(parents=True)
    (package / module / "__init__.py").write_text(module_source)
    (package / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.3.0"

        [project.entry-points."harness.plugins"]
        {module} = "{module}"
    """))
    return package


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("third-party")
    target = root / "site"
    for package in (
        write_package(root, "harness-example-plugin", PLUGIN),
        write_package(root, "harness-broken-plugin", "import missing_dependency_xyz\n"),
    ):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--target", str(target), str(package)],
            check=True, capture_output=True, timeout=300,
        )
    return target


def harness(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    command = [str(Path(sys.executable).with_name("harness")), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_installed_plugin_is_listed_with_its_package(site):
    result = harness(site, "plugins", "--verbose")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "shifted_gaussian" in x)
    assert "harness-example-plugin 0.3.0" in line
    assert "--prior-opt shift=<float> (default 0.0)" in result.stdout
    # the broken package is reported by name, and everything else still works
    assert (
        'warning: plugin "harness_broken_plugin" (harness-broken-plugin 0.3.0) skipped: '
        "error importing harness_broken_plugin: ModuleNotFoundError: "
        "No module named 'missing_dependency_xyz'"
    ) in result.stderr.splitlines()
    assert "kmeans_d" in result.stdout


def test_a_run_uses_the_third_party_component(site, tmp_path):
    result = harness(
        site, "run", "--prior", "shifted_gaussian", "--prior-opt", "shift=0.5", "--cond", "none",
        "--steps", "10", "--eval-samples", "500", "--dataset-opt", "size=500", "--no-progress",
        "--out", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.iterdir()
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]["prior"]
    assert resolved == {
        "name": "shifted_gaussian",
        "options": {"shift": 0.5},
        "provider": "harness_example_plugin (harness-example-plugin 0.3.0)",
    }
    assert "rkl" in (run_dir / "example-plugin-saw.json").read_text()


def test_a_third_party_regularizer_adds_its_term_to_d(site, tmp_path):
    result = harness(
        site, "run", "--reg", "drift", "--reg-opt", "epsilon=0.01", "--cond", "none",
        "--steps", "10", "--log-every", "5", "--eval-samples", "500", "--dataset-opt",
        "size=500", "--no-progress", "--out", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.iterdir()
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]["reg"]
    assert resolved["provider"] == "harness_example_plugin (harness-example-plugin 0.3.0)"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    drift = [r["d_drift"] for r in records if "d_loss" in r]
    assert len(drift) == 2 and all(value > 0 for value in drift)
