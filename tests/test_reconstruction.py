"""lpips_recon on a tiny linear generator, with lpips' random backbone (offline)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from harness.api import BuildContext, DataSpec, Generator, Options, to_uint8
from harness.errors import MetricUnavailable
from harness.manager import get_plugin_manager
from harness.run import Run
from harness_plugins.metrics.reconstruction import LPIPSReconstruction

pytest.importorskip("lpips")

SHAPE = (1, 16, 16)
Z_DIM, CLASSES = 8, 2
FAST = {"images": 16, "encoder_steps": 150, "latent_steps": 60, "batch": 32}


class LinearG(Generator):
    """x = tanh(A z + b_y): every image in its range is reproduced exactly by some (z, y)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.register_buffer("a", torch.randn(256, Z_DIM, generator=generator) / Z_DIM**0.5)
        self.offset = nn.Embedding(CLASSES, 256)
        nn.init.uniform_(self.offset.weight, -0.5, 0.5, generator=generator)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.a.T + self.offset(y)).view(-1, *SHAPE)


class Images:
    """A uint8 image dataset whose held-out part is given."""

    spec = DataSpec(SHAPE)

    def __init__(self, heldout: torch.Tensor | None) -> None:
        self.x = torch.randint(0, 256, (64, *SHAPE), dtype=torch.uint8)
        self.x_heldout = heldout


def make_run(heldout: torch.Tensor | None, conditional: bool = True) -> types.SimpleNamespace:
    pm = get_plugin_manager()
    prior_cls = pm.get("priors", "gaussian").load()
    dataset = Images(heldout)
    if conditional:
        conditioner = types.SimpleNamespace(
            conditions_networks=True, num_classes=CLASSES,
            sample_labels=lambda n, g: torch.randint(CLASSES, (n,), generator=g),
        )
    else:
        cond_cls = pm.get("conditioners", "none").load()
        context = BuildContext(dataset, "gaussian", Options(), 0)  # type: ignore[arg-type]
        conditioner = cond_cls(cond_cls.Options(), context)
    run = types.SimpleNamespace(
        eval_generator=LinearG(), prior=prior_cls(prior_cls.Options(), Z_DIM, CLASSES),
        conditioner=conditioner, dataset=dataset, device=torch.device("cpu"),
        config=types.SimpleNamespace(seed=0),
        net_labels=lambda labels: labels if conditional else torch.zeros_like(labels),
    )
    run.seeded = lambda seed: Run.seeded(run, seed)  # the harness's own RNG isolation
    return run


def producible(n: int = 16) -> torch.Tensor:
    """Images G makes exactly (up to uint8 rounding), with known z and class."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(n, Z_DIM, generator=generator)
    y = torch.randint(CLASSES, (n,), generator=generator)
    with torch.no_grad():
        return to_uint8(LinearG()(z, y))


@pytest.fixture(scope="module")
def metric() -> LPIPSReconstruction:
    return LPIPSReconstruction(LPIPSReconstruction.Options(pretrained=False, **FAST))


def test_producible_targets_reconstruct_far_better_than_noise(metric):
    exact = metric.compute(None, make_run(producible()))
    assert set(exact) == {"lpips_recon_alex_random", "lpips_recon_alex_random_init"}
    assert exact["lpips_recon_alex_random"] <= exact["lpips_recon_alex_random_init"]
    noise = metric.compute(None, make_run(heldout=None))  # falls back to the (noise) train set
    assert set(noise) == {"lpips_recon_alex_random_train", "lpips_recon_alex_random_train_init"}
    assert exact["lpips_recon_alex_random"] < 0.05 * noise["lpips_recon_alex_random_train"]


def test_deterministic_and_leaves_the_global_rng_alone(metric):
    run = make_run(producible(), conditional=False)
    state = torch.get_rng_state()
    first = metric.compute(None, run)
    assert torch.equal(torch.get_rng_state(), state)
    assert metric.compute(None, run) == first


def test_prior_gets_the_labels_when_the_networks_ignore_them():
    """GM-GAN: labels pick the prior's component; G and the encoder see class 0 only."""
    run = make_run(producible(), conditional=True)
    run.net_labels = torch.zeros_like
    run.conditioner.conditions_networks = False
    seen: dict[str, list[torch.Tensor]] = {"prior": [], "g": []}
    sample, forward = run.prior.sample, run.eval_generator.forward
    run.prior.sample = lambda n, labels: seen["prior"].append(labels) or sample(n, labels)
    run.eval_generator.forward = lambda z, y: seen["g"].append(y) or forward(z, y)
    options = {**FAST, "encoder_steps": 3, "latent_steps": 0, "pretrained": False}
    LPIPSReconstruction(LPIPSReconstruction.Options(**options)).compute(None, run)
    assert torch.cat(seen["prior"]).max() == CLASSES - 1
    assert torch.cat(seen["g"]).max() == 0


def test_missing_weights_name_the_option(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricUnavailable) as info:
        LPIPSReconstruction(LPIPSReconstruction.Options())
    message = str(info.value)
    assert "--metric-opt lpips_recon.weights=PATH" in message
    assert str(tmp_path) in message and "\n" not in message
    with pytest.raises(MetricUnavailable, match="lpips_recon.weights"):
        LPIPSReconstruction(LPIPSReconstruction.Options(weights=tmp_path / "absent.pth"))


def test_weights_file_is_loaded_into_the_backbone(metric, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    backbone = metric.perceptual().net.state_dict()  # lpips' slice<k>.<i>.*
    state = {f"features.{name.split('.', 1)[1]}": t + 1 for name, t in backbone.items()}
    path = Path(tmp_path) / "alexnet.pth"
    torch.save(state, path)
    loaded = LPIPSReconstruction(LPIPSReconstruction.Options(weights=path)).perceptual()
    for name, tensor in loaded.net.state_dict().items():
        assert torch.equal(tensor, backbone[name] + 1)
    with pytest.raises(ValidationError, match="pretrained"):
        LPIPSReconstruction.Options(pretrained=False, weights=path)


def test_supports_images_only():
    assert LPIPSReconstruction.supports(DataSpec(SHAPE))
    assert not LPIPSReconstruction.supports(DataSpec((2,)))
