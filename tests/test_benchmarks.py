"""benchmarks/bench_gpu.py: its timing and budget logic, the no-CUDA failure, a CPU smoke run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_gpu  # noqa: E402  (a script beside its siblings, not a package)


def test_budget_gives_each_case_its_share_then_skips():
    budget = bench_gpu.Budget(seconds=10.0, case_s=3.0, cases=2)
    assert budget.next_case("a") == pytest.approx(2.5, abs=0.05)  # 10 s / 2 cases / 2
    budget.deadline -= 10.0  # time's up
    assert budget.next_case("b") is None
    assert budget.skipped == ["b"]


def test_measure_warms_up_then_times_whole_blocks():
    steps: list[int] = []
    settings = bench_gpu.Settings(quick=True)
    result = bench_gpu.measure(steps.append, bench_gpu.Clock(torch.device("cpu")), settings,
                               seconds=0.0)
    assert steps[: result["warmup_steps"]] == [1] * result["warmup_steps"]
    timed = steps[result["warmup_steps"]:]
    assert timed == [result["block"]] * 3  # at least three blocks, even with no time left
    assert result["timed_steps"] == sum(timed) <= bench_gpu.MAX_TIMED_STEPS
    assert result["ms_per_step"] == sorted(result["blocks_ms_per_step"])[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_no_cuda_fails_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err and "--device cpu" in err


@pytest.mark.slow
def test_quick_cpu_run_measures_every_case(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--quick", "--json",
                    str(out)], check=True, capture_output=True, timeout=600)
    results = json.loads(out.read_text())
    assert results["skipped"] == []
    assert [(r["backbone"], r["batch"]) for r in results["images"]] == [
        (b, n) for b in bench_gpu.IMAGE_BACKBONES for n in (8, 16)]
    assert [r["n"] for r in results["seeds"]] == [1, 1, 2]
    cells = results["table1"]["cells"]
    assert len(cells) == 8 and all(c["vectorised"] for c in cells)
    assert all(c["images_per_s"] > 0 for c in results["images"])
    assert results["table1"]["projected_total_s"] == pytest.approx(
        sum(c["projected_s"] for c in cells))
