"""Reconstruction of real images by GAN inversion, measured by LPIPS (Liu et al. 2020, 4.4).

An encoder (backbone F, latent head F_z, class head F_c) is trained on generated pairs to
recover z and the class of G(z, c). For each real image x, the class is chosen among F_c's
``candidates`` most likely classes by the objective at z = F_z(F(x)); then z is optimised
per image with Adam on ``|G(z, c) - x|_1 + feature_weight * ||F(G(z, c)) - F(x)||^2``
(the paper's objective, lambda_f = 5e-4). The metric is the mean LPIPS between x and
G(z*, c): lower is better. Targets are held-out real images when the dataset has them.
A generator whose output holds NaN or infinity (in the encoder's training pairs or in the
reconstructions) makes the metric fail with ``MetricError`` instead of averaging garbage.

LPIPS never downloads: its linear layers ship with the ``lpips`` package, and the ImageNet
backbone weights are read from torchvision's hub cache or from ``weights``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from harness.api import DataSpec, Metric, Options, Sampler, from_uint8
from harness.errors import MetricError, MetricUnavailable

if TYPE_CHECKING:
    from harness.run import Run

BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
"""torchvision's ImageNet weights (IMAGENET1K_V1) that ``lpips.LPIPS`` loads, by net."""


class ReconstructionOptions(Options):
    images: int = Field(100, ge=1, le=100_000, description="held-out real images reconstructed")
    encoder_steps: int = Field(500, ge=1, le=1_000_000, description="encoder training steps")
    latent_steps: int = Field(
        200, ge=0, le=1_000_000, description="per-image Adam steps on z (0: encoder only)"
    )
    encoder_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the encoder")
    latent_lr: float = Field(0.05, gt=0, description="Adam learning rate of the per-image z")
    batch: int = Field(
        64, ge=1, le=65_536, description="generated pairs per encoder step; images per chunk"
    )
    candidates: int = Field(
        10, ge=1, description="classes tried per image: the encoder classifier's most likely"
    )
    feature_weight: float = Field(
        5e-4, ge=0, description="lambda_f: weight of the encoder-feature loss in the objective"
    )
    lpips_weight: float = Field(0.0, ge=0, description="weight of an LPIPS term in the objective")
    net: Literal["alex", "vgg"] = Field("alex", description="LPIPS backbone")
    pretrained: bool = Field(
        True, description="ImageNet LPIPS backbone; false: random backbone (tests only)"
    )
    weights: Path | None = Field(
        None, description="torchvision ImageNet backbone weights file (default: the hub cache)"
    )
    min_size: int = Field(
        64, ge=32, description="images are upsampled (bilinear) to this side for LPIPS"
    )

    @model_validator(mode="after")
    def _weights_need_pretrained(self) -> ReconstructionOptions:
        if self.weights is not None and not self.pretrained:
            raise ValueError("weights is only used with pretrained=true")
        return self


def count_non_finite(x: torch.Tensor) -> int:
    """Number of items of ``x`` (n, ...) holding a NaN or an infinity."""
    return int((~torch.isfinite(x.flatten(1))).any(1).sum())


class Encoder(nn.Module):
    """F: image -> r (stride-2 convs down to 4x4, then a linear layer); F_z: r -> z and,
    for class-conditional G, F_c: r -> class logits. Small, so that CPU runs stay short."""

    def __init__(self, shape: tuple[int, ...], z_dim: int, num_classes: int, width: int = 16):
        super().__init__()
        channels, h, w = shape
        layers: list[nn.Module] = []
        while True:
            layers += [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            channels, h, w = width, h // 2, w // 2
            if min(h, w) <= 4:
                break
            width = min(2 * width, 256)
        layers += [nn.Flatten(), nn.Linear(channels * h * w, 256), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.to_z = nn.Linear(256, z_dim)
        self.to_class = nn.Linear(256, num_classes) if num_classes > 1 else None


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode without parameter gradients; both restored on exit."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.eval().requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        module.train(was_training)


class LPIPSReconstruction(Metric):
    """lpips_recon_{net}[_random][_train] (after optimisation) and ..._init (encoder only)."""

    Options = ReconstructionOptions
    better = {"lpips_recon_*": "lower"}
    options: ReconstructionOptions
    default = False  # minutes on a CPU: ask for it with --metrics lpips_recon

    def __init__(self, options: ReconstructionOptions) -> None:
        super().__init__(options)
        if importlib.util.find_spec("lpips") is None:
            raise MetricUnavailable("lpips_recon needs the lpips package: pip install lpips")
        self._backbone_file: Path | None = None
        if options.pretrained:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[options.net]
            self._backbone_file = options.weights or cached
            if not self._backbone_file.is_file():
                where = f"weights={options.weights}" if options.weights else str(cached)
                raise MetricUnavailable(
                    f"lpips_recon: no ImageNet {options.net} weights for LPIPS at {where} "
                    f"(nothing is downloaded); pass --metric-opt lpips_recon.weights=PATH "
                    f"to a copy of {BACKBONE_FILES[options.net]}"
                )
        self._lpips: nn.Module | None = None

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.is_image

    # ------------------------------------------------------------------ LPIPS
    def perceptual(self) -> nn.Module:
        """The LPIPS network, built once: shipped linear layers, backbone from the file."""
        if self._lpips is None:
            import lpips

            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=`
                torch.manual_seed(0)  # the random backbone, when not pretrained
                net = lpips.LPIPS(net=self.options.net, pnet_rand=True, verbose=False)
            if self._backbone_file is not None:
                self.load_backbone(net.net, self._backbone_file)
            self._lpips = net.eval().requires_grad_(False)
        return self._lpips

    @staticmethod
    def load_backbone(net: nn.Module, path: Path) -> None:
        """Copy torchvision's ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*``."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            own = {name: state[f"features.{name.split('.', 1)[1]}"] for name in net.state_dict()}
        except KeyError as exc:
            raise MetricUnavailable(
                f"lpips_recon: {path} is not a torchvision {path.name} ({exc} missing)"
            ) from None
        net.load_state_dict(own)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS per image (n,); images in [-1, 1]. Channels other than RGB are scored one
        at a time as grey images and averaged."""
        n, channels, h, w = a.shape
        if channels != 3:
            a = a.reshape(n * channels, 1, h, w).expand(-1, 3, -1, -1)
            b = b.reshape(n * channels, 1, h, w).expand(-1, 3, -1, -1)
        if min(h, w) < self.options.min_size:
            scale = self.options.min_size / min(h, w)
            a = F.interpolate(a, scale_factor=scale, mode="bilinear", align_corners=False)
            b = F.interpolate(b, scale_factor=scale, mode="bilinear", align_corners=False)
        return self.perceptual()(a, b).reshape(n, -1).mean(1)

    # ------------------------------------------------------------------ protocol
    def key(self, heldout: bool) -> str:
        opts = self.options
        suffix = ("" if opts.pretrained else "_random") + ("" if heldout else "_train")
        return f"lpips_recon_{opts.net}{suffix}"

    def targets(self, run: Run, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
        """``images`` real images in [-1, 1] (held-out ones when there are) and whether held out."""
        heldout = run.dataset.x_heldout
        pool = run.dataset.x if heldout is None else heldout
        chosen = pool[torch.randperm(len(pool), generator=generator)[: self.options.images]]
        x = from_uint8(chosen) if chosen.dtype == torch.uint8 else chosen.float()
        return x, heldout is not None

    def train_encoder(self, run: Run, g: nn.Module, generator: torch.Generator) -> Encoder:
        opts = self.options
        classes = run.conditioner.num_classes if run.conditioner.conditions_networks else 1
        shape = tuple(run.dataset.spec.shape)
        encoder = Encoder(shape, run.prior.z_dim, classes).to(run.device)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=opts.encoder_lr)
        for _ in range(opts.encoder_steps):
            labels = run.conditioner.sample_labels(opts.batch, generator).to(run.device)
            net_labels = run.net_labels(labels)  # the prior may still use ``labels`` (GM-GAN)
            with torch.no_grad():
                z = run.prior.sample(opts.batch, labels)
                x = g(z, net_labels)
            bad = count_non_finite(x)
            if bad:
                raise MetricError(
                    f"lpips_recon: {bad} of {len(x)} generated images of an encoder training "
                    "batch are non-finite"
                )
            r = encoder.features(x)
            loss = F.mse_loss(encoder.to_z(r), z)
            if encoder.to_class is not None:
                loss = loss + F.cross_entropy(encoder.to_class(r), net_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return encoder

    def objective(
        self, g: nn.Module, encoder: Encoder, z: torch.Tensor, labels: torch.Tensor,
        x: torch.Tensor, features: torch.Tensor,
    ) -> torch.Tensor:
        """Per-image inversion loss (n,): L1 + feature_weight * encoder-feature MSE (+ LPIPS)."""
        opts = self.options
        fake = g(z, labels)
        loss = (fake - x).abs().flatten(1).mean(1)
        loss = loss + opts.feature_weight * (encoder.features(fake) - features).square().sum(1)
        if opts.lpips_weight:
            loss = loss + opts.lpips_weight * self.distance(fake, x)
        return loss

    def invert(
        self, g: nn.Module, encoder: Encoder, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder z, optimised z, class) for a chunk of targets ``x``."""
        with torch.no_grad():
            features = encoder.features(x)
            z0 = encoder.to_z(features)
            if encoder.to_class is None:
                labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
            else:
                logits = encoder.to_class(features)
                k = min(self.options.candidates, logits.shape[1])
                tried = logits.topk(k, dim=1).indices  # (n, k)
                losses = self.objective(
                    g, encoder, z0.repeat_interleave(k, 0), tried.flatten(),
                    x.repeat_interleave(k, 0), features.repeat_interleave(k, 0),
                ).view(-1, k)
                labels = tried.gather(1, losses.argmin(1, keepdim=True)).squeeze(1)
        z = z0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=self.options.latent_lr)
        for _ in range(self.options.latent_steps):
            loss = self.objective(g, encoder, z, labels, x, features).sum()  # per-image steps
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return z0, z.detach(), labels

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        seed = run.config.seed
        # seed + 20: the encoder's init and prior.sample; the global RNG is restored after
        with run.seeded(seed + 20), frozen(run.eval_generator) as g:
            generator = torch.Generator().manual_seed(seed + 21)
            targets, heldout = self.targets(run, generator)
            encoder = self.train_encoder(run, g, generator)
            self.perceptual().to(run.device)
            init, final = [], []
            with frozen(encoder):
                for x in targets.split(self.options.batch):
                    x = x.to(run.device)
                    z0, z, labels = self.invert(g, encoder, x)
                    with torch.no_grad():
                        init.append(self.distance(g(z0, labels), x))
                        final.append(self.distance(g(z, labels), x))
        key = self.key(heldout)
        scores = {key: torch.cat(final), f"{key}_init": torch.cat(init)}
        for name, values in scores.items():
            bad = count_non_finite(values.unsqueeze(1))
            if bad:
                raise MetricError(
                    f"lpips_recon: {bad} of {len(values)} reconstructions are non-finite ({name})"
                )
        return {name: float(values.mean()) for name, values in scores.items()}
