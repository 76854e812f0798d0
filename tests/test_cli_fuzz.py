"""Property-based: arbitrary strings and numbers in every ``harness run`` flag and in every
plugin option key never give a traceback: either the run is accepted (exit 0) or refused in
exactly one ``error:`` line with exit code 2, before anything is written.

Training is replaced by a stub (validation and building are what is fuzzed), so each
example costs a fraction of a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import build, seeds
from harness.cli import OPTION_FLAGS, RUN_FLAGS, main
from harness.config import COMPONENT_FIELDS
from harness.manager import get_plugin_manager

VALUED_FLAGS = [*RUN_FLAGS, "--metrics", "--config", "--resume", "--inception-weights"]
NASTY = ["", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1", "0", "1e23",
         str(2**64), "[]", "{}", "null", "true", "=", "a=b", "\x00", "ü", "../..", "/", "MLP"]
VALUES = st.one_of(
    st.sampled_from(NASTY),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=20),
)


def option_keys() -> list[tuple[str, str, str]]:
    """(component flag, plugin name, option key) of every plugin that has options (but
    image_folder's path: a fuzzed "/" would load every image on the machine; bad folders are
    covered by tests/test_datasets.py)."""
    pm = get_plugin_manager()
    keys = []
    for field, family in COMPONENT_FIELDS.items():
        for name, entry in pm.registry(family).items():
            keys += [(field, name, key) for key in entry.load().Options.model_fields
                     if (name, key) != ("image_folder", "path")]  # "/" would read every image
    for name, entry in pm.registry("metrics").items():
        keys += [("metric", name, key) for key in entry.load().Options.model_fields]
    return keys


@pytest.fixture
def invoke(tmp_path, monkeypatch, capfd):
    """``harness run ...`` in-process with training stubbed out; returns (code, stderr)."""
    monkeypatch.setattr(seeds, "execute_one", lambda run, resume: 0)
    monkeypatch.chdir(tmp_path)  # a fuzzed --out or --config is relative to it
    # a 2 GiB machine: legal but large sizes are refused by the memory estimates (exercising
    # them) instead of allocating gigabytes on the test machine
    monkeypatch.setattr(build, "available_memory", lambda: 2 * 2**30)
    monkeypatch.setenv("HARNESS_INCEPTION_WEIGHTS", "")
    threads = torch.get_num_threads()

    def run(args: list[str]) -> tuple[int, str]:
        try:
            code = main(["run", "--no-progress", "--out", str(tmp_path / "out"), *args])
        finally:
            torch.set_num_threads(threads)
            os.environ["HARNESS_INCEPTION_WEIGHTS"] = ""
        return code, capfd.readouterr().err

    return run


def check(code: int, err: str) -> None:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 0:
        assert not errors, err
    else:
        assert code == 2, err
        assert len(errors) == 1, err
        assert all(line.startswith(("error:", "warning:", "note:", "run directory:"))
                   for line in err.splitlines() if line.strip()), err


FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(flag=st.sampled_from(VALUED_FLAGS), value=VALUES)
def test_any_value_of_any_run_flag_is_accepted_or_one_line(invoke, flag, value):
    check(*invoke([f"{flag}={value}"]))


@FUZZ
@given(target=st.sampled_from(option_keys()), value=VALUES)
def test_any_value_of_any_plugin_option_is_accepted_or_one_line(invoke, target, value):
    field, name, key = target
    if field == "metric":
        args = ["--metrics", name, "--metric-opt", f"{name}.{key}={value}",
                "--dataset", "stacked_digits" if name != "modes_2d" else "ring"]
    else:
        args = [f"--{field}", name, f"--{field}-opt", f"{key}={value}"]
        if field == "backbone" and name != "mlp":
            args += ["--dataset", "digits", "--metrics", "cluster_agreement"]
    check(*invoke(args))


@FUZZ
@given(settings_=st.dictionaries(st.sampled_from(sorted(RUN_FLAGS)), VALUES, max_size=3),
       suffix=st.sampled_from([".toml", ".json"]))
def test_any_config_file_is_accepted_or_one_line(invoke, tmp_path, settings_, suffix):
    path = Path(tmp_path) / f"config{suffix}"
    body = {RUN_FLAGS[flag][0]: value for flag, value in settings_.items()}
    if suffix == ".json":
        path.write_text(json.dumps({"config": body}))
    else:
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items()))
    check(*invoke(["--config", str(path)]))


def test_option_flags_cover_every_component():
    assert set(OPTION_FLAGS) == set(COMPONENT_FIELDS)
