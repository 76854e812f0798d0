"""Golden runs: every existing composition's metrics and final weights, recorded once at a
known-good commit and compared bit for bit by ``test_golden.py`` after changes to the core.

Regenerate (only when a change is *meant* to alter results, and say so in the commit):
``python -m tests.golden tests/data/golden_runs.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from harness.cli import main

TINY = ["--no-progress", "--log-every", "5", "--checkpoint-every", "7"]
RING = [*TINY, "--steps", "20", "--eval-samples", "1000", "--dataset-opt", "size=1000"]
DIGITS = [*TINY, "--dataset", "digits", "--steps", "4", "--batch-size", "16",
          "--eval-samples", "200", "--metrics", "cluster_agreement",
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
    code = main(["run", *args, "--out", str(out)])
    assert code == 0, (args, code)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {"metrics": metrics, "weights": weights_digest(run_dir / "checkpoints" / "last.pt"),
            "losses": [{k: r[k] for k in ("step", "d_loss", "g_loss") if k in r}
                       for r in losses if "d_loss" in r]}


def environment() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


if __name__ == "__main__":
    torch.set_num_threads(2)
    records = {}
    for name, args in COMPOSITIONS.items():
        with tempfile.TemporaryDirectory() as tmp:
            records[name] = run_composition(args, Path(tmp))
        print(name, records[name]["metrics"], file=sys.stderr)
    Path(sys.argv[1]).write_text(
        json.dumps({"environment": environment(), "runs": records}, indent=1) + "\n"
    )
