"""Golden runs: every existing composition's metrics, logged losses and final weights,
recorded once at a known-good commit and compared by ``test_golden.py`` after changes to the
core.

Float rounding depends on the CPU's kernels (AVX-512, AVX2, ARM, or torch's plain ones
under ``ATEN_CPU_CAPABILITY=default``, and MKL's and oneDNN's own dispatch), and a GAN
amplifies a last-bit difference step by step. So a record holds two things:

- the values and the fingerprint of the kernels that produced them (``kernel_fingerprint``):
  on a machine with the same fingerprint the comparison is bit for bit, weights included;
- beside each value, the tolerance used on any other machine, derived from the metric's
  resolution (what one sample changes) and the run's measured sensitivity to rounding (the
  largest deviation over the recording machine's kernel variants, ``VARIANTS``):
  ``tolerance = max(SAMPLES * resolution, FACTOR * deviation)``; losses are compared with
  one relative tolerance, FACTOR times the largest relative deviation of any run.

Regenerate (only when a change is *meant* to alter results, and say so in the commit):
``python -m tests.golden tests/data/golden_runs.json`` (about two minutes on 2 cores: every
composition once natively and once per variant, each variant in its own process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from harness.cli import main

TINY = ["--no-progress", "--checkpoint-every", "7"]
RING = [*TINY, "--log-every", "5", "--steps", "20", "--eval-samples", "1000",
        "--dataset-opt", "size=1000"]
DIGITS = [*TINY, "--log-every", "2", "--dataset", "digits", "--steps", "4", "--batch-size",
          "16", "--eval-samples", "200", "--metrics", "cluster_agreement",
          "--metric-opt", "cluster_agreement.subset=200"]

COMPOSITIONS: dict[str, list[str]] = {
    "ring-none": [*RING, "--cond", "none"],
    "ring-random": [*RING, "--cond", "random", "--cond-opt", "k=8"],
    "ring-ground-truth-hinge": [*RING, "--cond", "ground_truth", "--loss", "hinge"],
    "ring-kmeans-recluster": [*RING, "--cond", "kmeans_d", "--cond-opt", "k=10",
                              "--cond-opt", "recluster_every=8", "--cond-opt", "subset=500"],
    "ring-online-uniform": [*RING, "--cond", "online_kmeans", "--prior", "uniform",
                            "--cond-opt", "k=10", "--cond-opt", "subset=500",
                            "--cond-opt", "step=count"],  # recorded before step=constant
    "grid-gmm-learned-ema": [*RING, "--dataset", "grid", "--prior", "gmm", "--cond", "gmm",
                             "--prior-opt", "num_components=5", "--prior-opt", "learned=true",
                             "--cond-opt", "samples_per_component=50", "--ema-decay", "0.9",
                             "--d-steps", "2"],
    "digits-dcgan-kmeans": [*DIGITS, "--backbone", "dcgan", "--backbone-opt", "width=8",
                            "--cond-opt", "k=5", "--cond-opt", "subset=200"],
    "digits-resnet-random": [*DIGITS, "--backbone", "resnet", "--backbone-opt", "width=8",
                             "--cond", "random", "--cond-opt", "k=3"],
    "digits-biggan-gmm-hinge": [*DIGITS, "--backbone", "biggan", "--backbone-opt", "width=4",
                                "--prior", "gmm", "--prior-opt", "num_components=3",
                                "--cond", "kmeans_d", "--cond-opt", "k=3",
                                "--cond-opt", "subset=200", "--loss", "hinge",
                                "--ema-decay", "0.99", "--d-steps", "2"],
}

THREADS = 2
"""Threads of every recorded run: a reduction may round differently per thread count."""

KNOBS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")
"""Environment variables that lower the kernels torch, MKL and oneDNN dispatch to."""

VARIANTS: dict[str, dict[str, str]] = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "blas-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "all-plain": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                  "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "one-thread": {"GOLDEN_THREADS": "1"},
}
"""Ways the recording machine rounds differently, standing in for other CPUs. Each knob is
ignored where it does not apply (MKL's on ARM), which only narrows the measured spread."""

SAMPLES = 5
"""A few samples' worth: a count on another CPU may differ by this many samples. Measured:
one on an AVX2 machine against AVX-512; four at once under plain ATen with AVX2 BLAS
(ring-kmeans-recluster's 4 high-quality samples: G maps neighbouring z close together, so
samples cross the 3-std threshold in groups)."""

FACTOR = 3
"""Tolerance over the largest deviation the variants showed."""


def resolution(metric: str, evaluated: int, scored: int) -> float:
    """What one sample changes in ``metric``: ``evaluated`` generated samples (modes_2d),
    ``scored`` real points (cluster_agreement). 0 for a metric with no known resolution
    (exact unless the variants showed it moving).

    ``rkl`` (nats, over n samples): moving one sample between bins changes
    sum_i p_i ln(p_i M) by at most (ln n + 1) / n (the increment of (c/n) ln(cM/n) lies
    between -ln(n/M)/n and (ln M + 1)/n). NMI and ARI: at most 3 / n, measured over random
    partitions (``test_golden.test_one_point_moves_nmi_and_ari_by_at_most_3_over_n``).
    """
    per_sample = {"hq_pct": 100.0 / evaluated, "modes": 1.0,
                  "rkl": (math.log(evaluated) + 1) / evaluated,
                  "cluster_acc": 1.0 / scored, "cluster_purity": 1.0 / scored,
                  "cluster_nmi": 3.0 / scored, "cluster_ari": 3.0 / scored}
    return per_sample.get(metric, 0.0)


def kernel_fingerprint() -> dict[str, str]:
    """What decides float rounding here: the torch build (and numpy, scipy, scikit-learn,
    which compute metrics), the architecture, the CPU (model and a digest of its feature
    flags, which MKL and oneDNN dispatch on), ATen's kernel level and any knob (``KNOBS``)
    set in the environment."""
    cpu = {"model": platform.processor(), "flags": ""}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "CPU part") and not cpu["flags"]:
                cpu["model"] = value.strip()
            elif key in ("flags", "Features"):
                cpu["flags"] = hashlib.sha256(value.strip().encode()).hexdigest()[:12]
                break
    except OSError:  # not Linux: the model alone
        pass
    import numpy
    import scipy
    import sklearn

    return {"torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
            "sklearn": sklearn.__version__, "machine": platform.machine(),
            "cpu": cpu["model"], "cpu_flags": cpu["flags"],
            "aten": torch.backends.cpu.get_cpu_capability(),
            **{knob: os.environ[knob] for knob in KNOBS if knob in os.environ}}


def weights_digest(checkpoint: Path) -> dict[str, str]:
    """sha256 of every network's state in the final checkpoint (G, D, EMA, prior)."""
    state = torch.load(checkpoint, weights_only=True)
    digests = {}
    for net in ("generator", "discriminator", "ema", "prior"):
        h = hashlib.sha256()
        for key, value in sorted((state[net] or {}).items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        digests[net] = h.hexdigest()[:16]
    return digests


def run_composition(args: list[str], out: Path) -> dict:
    """Train and evaluate one composition under ``out``: its metrics, the losses it logged
    and the digests of its final weights."""
    code = main(["run", *args, "--out", str(out)])
    assert code == 0, (args, code)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]
    subset = resolved["metrics"].get("cluster_agreement", {}).get("subset", 0)
    size = resolved["dataset"]["options"].get("size", subset)
    return {"metrics": metrics, "weights": weights_digest(run_dir / "checkpoints" / "last.pt"),
            "losses": [{k: r[k] for k in ("step", "d_loss", "g_loss") if k in r}
                       for r in losses if "d_loss" in r],
            "counts": {"evaluated": metrics["eval_samples"], "scored": min(subset, size)}}


def run_all(names: list[str] | None = None) -> dict[str, dict]:
    """Every composition (or ``names``), each in a fresh temporary directory."""
    records = {}
    for name in names or COMPOSITIONS:
        with tempfile.TemporaryDirectory() as tmp:
            records[name] = run_composition(COMPOSITIONS[name], Path(tmp))
        print(name, records[name]["metrics"], file=sys.stderr)
    return records


def relative_loss_deviation(got: list[dict], want: list[dict]) -> float:
    """Largest |got - want| / max(|want|, 1) over the logged d_loss and g_loss (relative,
    but absolute near 0, where a hinge loss passes; inf when the logged steps differ)."""
    if [r["step"] for r in got] != [r["step"] for r in want]:
        return math.inf
    return max((abs(a[k] - b[k]) / max(abs(b[k]), 1.0)
                for a, b in zip(got, want, strict=True) for k in ("d_loss", "g_loss")), default=0.0)


def tolerances(native: dict, variants: list[dict]) -> dict:
    """Each metric's resolution, its largest deviation over ``variants`` and the tolerance
    from both (module docstring)."""
    counts = native["counts"]
    table = {}
    for key, value in native["metrics"].items():
        step = resolution(key, counts["evaluated"], counts["scored"])
        deviation = max(abs(v["metrics"][key] - value) for v in variants)
        table[key] = {"resolution": step, "deviation": deviation,
                      "tolerance": max(SAMPLES * step, FACTOR * deviation)}
    return table


def compare(got: dict, want: dict, loss_tolerance: float) -> list[str]:
    """What differs beyond the recorded tolerances (an empty list: within them)."""
    problems = [f"metrics {sorted(got['metrics'])} != recorded {sorted(want['metrics'])}"] \
        if got["metrics"].keys() != want["metrics"].keys() else []
    for key, bound in want["tolerance"].items():
        if key in got["metrics"]:
            diff = abs(got["metrics"][key] - want["metrics"][key])
            if not diff <= bound["tolerance"]:
                problems.append(f"{key}: {got['metrics'][key]} vs recorded "
                                f"{want['metrics'][key]} (tolerance {bound['tolerance']:.3g})")
    deviation = relative_loss_deviation(got["losses"], want["losses"])
    if not deviation <= loss_tolerance:
        problems.append(f"losses: relative deviation {deviation:.3g} "
                        f"(tolerance {loss_tolerance:.3g})")
    return problems


def measure_variant(name: str, env: dict[str, str], out: Path) -> dict[str, dict]:
    """Every composition under one of ``VARIANTS``, in a process of its own (the kernel
    knobs are read when torch starts)."""
    command = [sys.executable, "-m", "tests.golden", "--measure", str(out)]
    subprocess.run(command, env={**os.environ, **env}, check=True,
                   cwd=Path(__file__).parent.parent)
    return json.loads(out.read_text())


def record(path: Path) -> None:
    """Record every composition natively, measure it under each variant, write ``path``."""
    runs = run_all()
    with tempfile.TemporaryDirectory() as tmp:
        measured = {name: measure_variant(name, env, Path(tmp) / f"{name}.json")
                    for name, env in VARIANTS.items()}
    loss_deviation = 0.0
    for name, run in runs.items():
        others = [m[name] for m in measured.values()]
        run["tolerance"] = tolerances(run, others)
        loss_deviation = max(loss_deviation, *(relative_loss_deviation(o["losses"], run["losses"])
                                               for o in others))
    path.write_text(json.dumps({
        "environment": kernel_fingerprint(),
        "rule": f"tolerance = max({SAMPLES} * resolution, {FACTOR} * deviation); losses: "
                f"{FACTOR} * the largest relative deviation; deviations over the variants",
        "variants": VARIANTS, "threads": THREADS,
        "loss_tolerance": FACTOR * loss_deviation, "runs": runs,
    }, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, nargs="?", help="where to record the golden runs")
    parser.add_argument("--measure", type=Path, help="only run every composition, write here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("GOLDEN_THREADS", THREADS)))
    if args.measure:
        args.measure.write_text(json.dumps(run_all()))
    elif args.path:
        record(args.path)
    else:
        parser.error("give the path to record to, or --measure PATH")
