"""Every existing composition trains and evaluates exactly as at the recorded commit: the
same metrics, losses and final weights, bit for bit (``tests/golden.py`` records them)."""

import json
from pathlib import Path

import pytest
import torch

from tests.golden import COMPOSITIONS, environment, run_composition

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_runs.json").read_text())
SAME_MACHINE = GOLDEN["environment"] == environment()


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_composition_reproduces_its_recorded_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as recorded: reductions may round differently per thread count
    try:
        got = run_composition(COMPOSITIONS[name], tmp_path / "out")
    finally:
        torch.set_num_threads(threads)
    want = GOLDEN["runs"][name]
    if SAME_MACHINE:  # same torch build and CPU kernels: bit-identical
        assert got == want
    else:  # other kernels round differently; the numbers must still agree closely
        assert got["metrics"].keys() == want["metrics"].keys()
        for key, value in want["metrics"].items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
