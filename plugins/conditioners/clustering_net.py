"""slcGAN (Noroozi 2020, "Self-labeled Conditional GANs"): a clustering network C gives the
labels of real images and is trained against D together with G (``--cond clustering_net``).

The three-player game of §3.2 and Algorithm 1, as this conditioner implements it through the
harness's training step (``harness.api.StepTerms``):

- real pairs: D scores ``(x, p(y|x))`` with ``p = softmax(C(x))`` (Eq. 3); for the projection D
  of the backbones ``class_score`` gives ``sum_k p_k logit_k``, its score for the soft condition
  p. Fake pairs: ``(G(z, c), onehot(c))`` with c uniform (``class_weights``).
- D (Algorithm 1 lines 12-15): the trainer's adversarial loss on the joint score, plus
  BigBiGAN's unary term on D's image-only score (``d_unary``, "Architecture and adversarial
  losses") when the discriminator has one (``Discriminator.unary``: the ``biggan`` projection D
  does; ``resnet`` and ``dcgan`` do not, and their runs have the joint term only, with no
  ``d_unary`` / ``g_unary`` keys in the log and a one-time note on stderr).
- G (lines 18-21): the trainer's adversarial loss, the unary term (``g_unary``), and the
  mutual-information term of Eq. 4 (``g_mi`` = CE(C(G(z, c)), c)) that updates G only.
- C (lines 22-28, ``train_own``): on a fresh real batch, C's adversarial term (line 27: C moves
  the real pair towards "fake" for D, ``loss.generator(-score)``, i.e. ``mean(s_r)`` for the
  hinge loss) and the multiple-view consistency term of Eq. 5 (line 28) between C's
  predictions on x and on an augmented view x_t.

Weighting (Eq. 6, ``min_{G,C} max_D  l1 L_adv + l2 L_mi(G) + l3 L_aug(C)``): the trainer gives
D's and G's adversarial terms weight 1, which is Eq. 6 divided by l1 for D and G. Adam's update
does not change when a network's whole loss is multiplied by a positive constant (up to its
epsilon), so dividing by l1 is exact in effect: G minimises ``adv + (l2 / l1) L_mi`` and D
``adv``. C has its own optimiser and minimises Eq. 6's own terms, ``l1 L_adv + l3 L_aug``.
Hence ``lambda_adv`` must be positive: without the adversarial term Eq. 6 has no game.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from harness.api import BuildContext, Conditioner, Models, Options, Scored, Step, class_score
from harness.errors import ConfigError, describe

NAME = "clustering_net"
SEED_OFFSET = 6
"""C is initialised under ``seed + 6`` in a forked RNG (other offsets: data 4, labels 5)."""
CNN_WIDTH = 16
"""Channel multiplier of the default C, for CPU runs (C costs about 4x a width-16 DCGAN D
per image; the SNGAN CIFAR layout has 64 at GPU scale)."""


class ClusteringNetOptions(Options):
    k: int = Field(
        50, ge=2, le=100_000,
        description="K, number of pseudo-classes (clusters) C predicts; paper: 10-2000",
    )
    net: Literal["cnn", "resnet18"] = Field(
        "cnn",
        description="C: 'cnn' (small SNGAN-style CNN, spectral norm, BatchNorm) or "
        "'resnet18' (the paper's, torchvision's adapted to small images, spectral norm)",
    )
    width: int | None = Field(
        None, ge=1, le=256,
        description=f"channel multiplier of net=cnn (default {CNN_WIDTH}: 16-32-64 channels, "
        "for CPU runs)",
    )
    lambda_adv: float = Field(
        1.0, gt=0, le=1000, description="l1 of Eq. 6: weight of the adversarial loss (paper 1)"
    )
    lambda_mi: float = Field(
        1.0, ge=0, le=1000,
        description="l2 of Eq. 6: weight of the mutual-information loss of G, Eq. 4 (paper 1)",
    )
    lambda_aug: float = Field(
        1.0, ge=0, le=1000,
        description="l3 of Eq. 6: weight of C's multiple-view consistency loss, Eq. 5 (paper 1)",
    )
    lr: float = Field(1e-4, gt=0, le=1, description="C's learning rate (paper 1e-4)")
    betas: tuple[float, float] | None = Field(
        None, description="C's Adam betas, each in [0, 1); default: the run's betas of D"
    )
    crop_scale: float = Field(
        0.5, gt=0, le=1,
        description="consistency view: smallest area fraction of the random resized crop "
        "(aspect ratio in [3/4, 4/3]); 1: no crop",
    )
    jitter: float = Field(
        0.5, ge=0, le=1,
        description="consistency view: colour jitter strength s (SimCLR's: brightness, "
        "contrast, saturation 0.8s, hue 0.2s; saturation and hue only on RGB images that are "
        "not digit data); 0: none",
    )
    flip: bool | None = Field(
        None,
        description="consistency view: random horizontal flips; default (null): on, but off "
        "for digit data, where a mirrored digit is no digit",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _width_is_for_cnn(self) -> ClusteringNetOptions:
        if self.width is not None and self.net != "cnn":
            raise ValueError(
                f"width={self.width} applies to net='cnn' only, not net={self.net!r} "
                "(valid: leave width unset, or net=cnn)"
            )
        return self


# ----------------------------------------------------------------------------- networks
class ConvClassifier(nn.Sequential):
    """SNGAN's CNN discriminator layout with K outputs: conv3-conv4/2 pairs of width w, 2w,
    4w channels, each conv followed by BatchNorm and LeakyReLU(0.1), global sum pooling,
    linear to K. Spectral norm on every conv and linear (``build_network``). Images of any
    side >= 8.

    BatchNorm as in the paper's ResNet-18 C (§4, "Implementation details"): without it the
    spectrally normalised stack passes almost none of the input through at initialisation
    (on digits the logits vary 0.015 across images against 0.19 across classes, from the
    biases), so C(x) is one near-uniform vector for every x, the MI term of Eq. 4 has no
    gradient to give G, and the three-player game never leaves that fixed point."""

    def __init__(self, channels: int, k: int, width: int) -> None:
        layers: list[nn.Module] = []
        a = channels
        for b in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.1),
                       nn.Conv2d(b, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.1)]
            a = b
        super().__init__(*layers, SumPool(), nn.Linear(a, k))


class SumPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((2, 3))


def resnet18(channels: int, k: int) -> nn.Module:
    """torchvision's ResNet-18 (random init, K outputs) for small images, as for CIFAR: a 3x3
    stride-1 first conv from ``channels`` inputs and no max-pool (He et al.'s BatchNorm kept)."""
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=k)
    net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


def build_network(options: ClusteringNetOptions, channels: int) -> nn.Module:
    """C with spectral norm (``torch.nn.utils.parametrizations``) on every conv and linear."""
    if options.net == "resnet18":
        net = resnet18(channels, options.k)
    else:
        net = ConvClassifier(channels, options.k, options.width or CNN_WIDTH)
    for layer in list(net.modules()):
        if isinstance(layer, nn.Conv2d | nn.Linear):
            spectral_norm(layer)
    return net


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """``net`` as a fixed function inside the block: eval mode (no BatchNorm statistics or
    spectral-norm power iteration is updated) and parameters without ``requires_grad`` (a
    loss built inside gets no gradient for them, only for the inputs). Restored after."""
    mode = net.training
    flags = [p.requires_grad for p in net.parameters()]
    net.eval()
    net.requires_grad_(False)
    try:
        yield
    finally:
        net.train(mode)
        for p, flag in zip(net.parameters(), flags, strict=True):
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- losses
def consistency(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Eq. 5 / Algorithm 1 line 28 as KL(q || p), averaged over the batch (a scalar >= 0).

    ``log_p`` (n, K): C's log-probabilities on the images x, with gradients; ``log_q`` (n, K):
    on their augmented views x_t, the fixed target (detached here). KL(q || p) = CE(q, p) -
    H(q) differs from Eq. 5's cross-entropy by H(q), which does not depend on p, so the
    gradients w.r.t. p are equal; unlike the cross-entropy it is exactly 0 when the views
    agree. Line 28 read literally also differentiates through q, which adds the minimisation
    of H(q): on digits (K = 10, 1500 steps) that drove C to 3 confident clusters within 250
    steps, ACC 0.53 at the end against 0.73 with the detached target (one cluster within 100
    steps for a C without BatchNorm).
    """
    log_q = log_q.detach()
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def mutual_information(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 4 / Algorithm 1 line 21: the cross-entropy -log p(y = c | G(z, c)), averaged.

    ``logits`` (n, K) of C on G's samples; ``labels`` the conditions c: (n,) long ids or
    (n, K) float probability vectors (soft cross-entropy)."""
    if labels.is_floating_point():
        return -(labels * F.log_softmax(logits, 1)).sum(1).mean()
    return F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------- augmentation
class ViewAugmentation:
    """The random view x_t = T(x) of Eq. 5 ("cropping, color jittering, and flipping"), on a
    batch (n, C, H, W) of float images in [-1, 1]; same shape, dtype, device and range.

    Per sample: a random resized crop (area fraction ~ U[crop_scale, 1], log aspect ratio
    ~ U[log 3/4, log 4/3], both sides capped at the image's, uniform position; bilinear
    resampling to the full size), a horizontal flip with probability 1/2 (``flip``), then
    colour jitter of strength s in the fixed order brightness, contrast, saturation, hue
    (factors ~ U[1 - 0.8s, 1 + 0.8s], hue shift ~ U[-0.2s, 0.2s] of a turn, applied as a
    rotation around the grey axis as in StyleGAN2-ADA; torchvision's formulas otherwise;
    saturation and hue only when ``colour`` is set, for RGB images).

    Vectorised over the batch (torchvision's per-image transforms cost about 4 ms per RGB
    image with hue, a second per batch of 256 on a CPU). Every random number comes from the
    global torch CPU RNG, so a resumed run draws the same views, on any device.
    """

    def __init__(self, crop_scale: float, jitter: float, flip: bool, colour: bool) -> None:
        self.crop_scale, self.jitter, self.flip, self.colour = crop_scale, jitter, flip, colour

    @property
    def is_identity(self) -> bool:
        return self.crop_scale >= 1 and self.jitter == 0 and not self.flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        draws = torch.rand(n, 9)  # one row of draws per image, whatever is enabled
        y = x.add(1).mul_(0.5)  # [0, 1], as colour jitter expects
        if self.crop_scale < 1:
            y = self.crop(y, draws[:, :4].to(x.device))
        if self.flip:
            y = torch.where((draws[:, 4] < 0.5).to(x.device)[:, None, None, None], y.flip(3), y)
        if self.jitter > 0:
            y = self.colour_jitter(y, draws[:, 5:].to(x.device))
        return y.mul(2).sub_(1)

    def crop(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        area = self.crop_scale + (1 - self.crop_scale) * u[:, 0]
        log_ratio = math.log(3 / 4) + math.log(16 / 9) * u[:, 1]
        width = (area * log_ratio.exp()).sqrt().clamp(max=1)  # fractions of the side
        height = (area / log_ratio.exp()).sqrt().clamp(max=1)
        cx = (2 * u[:, 2] - 1) * (1 - width)  # centre in [-1 + w, 1 - w]
        cy = (2 * u[:, 3] - 1) * (1 - height)
        theta = torch.zeros(len(y), 2, 3, dtype=y.dtype, device=y.device)
        theta[:, 0, 0], theta[:, 0, 2] = width, cx
        theta[:, 1, 1], theta[:, 1, 2] = height, cy
        grid = F.affine_grid(theta, list(y.shape), align_corners=False)
        return F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def colour_jitter(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        s = self.jitter
        factor = 1 + 0.8 * s * (2 * u[:, :3] - 1)
        brightness, contrast, saturation = (f[:, None, None, None] for f in factor.unbind(1))
        y = (y * brightness).clamp_(0, 1)
        grey = grayscale(y) if y.shape[1] == 3 else y
        mean = grey.mean((1, 2, 3), keepdim=True)
        y = (contrast * y + (1 - contrast) * mean).clamp_(0, 1)
        if not (self.colour and y.shape[1] == 3):
            return y
        y = (saturation * y + (1 - saturation) * grayscale(y)).clamp_(0, 1)
        return hue_rotation(y, 0.2 * s * (2 * u[:, 3] - 1))


def grayscale(y: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images (n, 3, H, W) -> (n, 1, H, W), as torchvision's."""
    r, g, b = y.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def hue_rotation(y: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each RGB image's colours around the grey axis by ``turns`` (n,) of a full turn
    (Rodrigues' formula; StyleGAN2-ADA's hue rotation); clamped to [0, 1]."""
    angle = 2 * math.pi * turns
    axis = torch.full((3,), 3**-0.5, dtype=y.dtype, device=y.device)
    outer = axis[:, None] * axis[None, :]
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=y.dtype, device=y.device)
    cross = cross * 3**-0.5
    eye = torch.eye(3, dtype=y.dtype, device=y.device)
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    rotation = cos * eye + sin * cross + (1 - cos) * outer  # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", rotation, y).clamp_(0, 1)


# ----------------------------------------------------------------------------- conditioner
class ClusteringNet(Conditioner):
    """slcGAN's clustering network C: soft labels ``softmax(C(x))`` for real images, uniform
    hard labels for fake ones, C trained once per iteration after G (see the module's doc).

    C lives on ``context.device``; it is initialised under its own forked RNG (``seed + 6``),
    so G's and D's initialisation is the same as with any other conditioner. C's mode: train
    mode while it labels real batches and trains (its BatchNorm uses the batch's statistics
    and updates its running ones; spectral norm runs one power iteration per call); eval
    mode, frozen, for the MI term on G's samples (nothing of C changes there, so C's
    statistics come from real images only); eval mode for ``assign`` /
    ``partition``.

    Raises ``ConfigError`` (one line) for data that is not images (C, H, W), on which C's
    network cannot run, or with fewer examples than ``k``.
    """

    Options = ClusteringNetOptions
    run_defaults = {"d_steps": 2}  # Algorithm 1 / §4: D is updated twice per G step

    def __init__(self, options: ClusteringNetOptions, context: BuildContext) -> None:
        super().__init__(options, context)
        spec = context.dataset.spec
        if not spec.is_image:
            raise ConfigError(
                f"--cond {NAME} needs image data (C, H, W); dataset shape is "
                f"{tuple(spec.shape)} (valid: an image dataset such as digits, or for flat "
                "data --cond kmeans_d)"
            )
        n = len(context.dataset)
        if options.k > n:
            raise ConfigError(f"invalid cond {NAME!r} option k={options.k}: more pseudo-classes "
                              f"than the dataset's {n} examples (valid: k <= {n})")
        self.device = context.device
        domain_is_digits = spec.domain == "digits"
        flip = not domain_is_digits if options.flip is None else options.flip
        self.augment = ViewAugmentation(
            options.crop_scale, options.jitter, flip, colour=not domain_is_digits
        )
        # CPU generator only (torch.manual_seed would also seed CUDA, lazily, outside the fork)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(context.seed + SEED_OFFSET)
            net = build_network(options, spec.shape[0])
        self.net = net.to(self.device)
        self.check_network()
        self.params = list(self.net.parameters())
        self.optimizer = context.optimizer(self.params, options.lr, options.betas)
        self.noted_no_unary = False

    def check_network(self) -> None:
        """C on two real examples in eval mode (no buffer or RNG changes): an image size C
        cannot process is a one-line ``ConfigError`` before the run starts."""
        shape = tuple(self.context.dataset.spec.shape)
        n = min(2, len(self.context.dataset))
        try:
            logits = self.logits_eval(torch.arange(n))
            if tuple(logits.shape) != (n, self.options.k):
                raise ValueError(f"C returned logits of shape {tuple(logits.shape)}")
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"--cond {NAME}: net={self.options.net!r} does not work on images of shape "
                f"{shape}: {describe(exc)[:200]} (valid: images of side 8 or more)"
            ) from None

    @property
    def num_classes(self) -> int:
        return self.options.k

    def class_weights(self) -> torch.Tensor:
        """p_c: uniform over the K pseudo-classes (§3.2), (K,) float on the CPU."""
        return torch.full((self.options.k,), 1.0 / self.options.k)

    # ------------------------------------------------------------------ real labels
    @torch.no_grad()
    def labels_for_real(
        self, index: torch.Tensor, features: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """p(y|x) = softmax(C(x)) (Eq. 3; Algorithm 1 line 12): (n, K) float32 rows summing to
        1, on ``features``' device, without gradients. C in train mode (see the class)."""
        self.net.train()
        return torch.softmax(self.net(x.detach().to(self.device)).float(), 1).to(features.device)

    @torch.no_grad()
    def logits_eval(self, index: torch.Tensor) -> torch.Tensor:
        """C's logits (n, K) on the real examples at ``index``, eval mode, in chunks."""
        dataset = self.context.dataset
        _, height, width = dataset.spec.shape
        chunk = max(16, 2**19 // (height * width))  # 512 images of 32x32
        mode = self.net.training
        self.net.eval()
        try:
            return torch.cat([
                self.net(dataset.batch(part).to(self.device)).float()
                for part in index.cpu().split(chunk)
            ]) if len(index) else torch.empty(0, self.options.k, device=self.device)
        finally:
            self.net.train(mode)

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """argmax_k C(x)_k of the real examples at ``index`` (n,) long on ``features``' device;
        C in eval mode, no gradients, nothing of C changes."""
        return self.logits_eval(index).argmax(1).to(features.device)

    def partition(self, models: Models, index: torch.Tensor) -> torch.Tensor:
        """C's partition (argmax, eval mode) for ``cluster_agreement``; D is not used."""
        return self.logits_eval(index).argmax(1).cpu()

    # ------------------------------------------------------------------ step terms
    def d_terms(self, real: Scored, fake: Scored, step: Step) -> dict[str, torch.Tensor]:
        """BigBiGAN's unary term of D (Algorithm 1 lines 14-15, the u terms): the run's loss
        on D's image-only scores, ``{"d_unary": loss.discriminator(u_r, u_f)}``; ``{}`` when
        D has no unary score (the joint term, the trainer's, is then D's whole loss)."""
        real_u, fake_u = real.unary(), fake.unary()
        if real_u is None or fake_u is None:
            self.note_no_unary(step)
            return {}
        return {"d_unary": step.run.loss.discriminator(real_u, fake_u)}

    def g_terms(self, fake: Scored, step: Step) -> dict[str, torch.Tensor]:
        """G's unary term (line 20, the u term: ``g_unary = loss.generator(u_f)``, when D has
        one) and the MI term of Eq. 4 (line 21): ``g_mi = (l2 / l1) CE(C(G(z, c)), c)``.

        C is frozen for the MI term (eval mode, no ``requires_grad``): its parameters get no
        gradient from it ("we obtained better performance by training this loss only for G"),
        only G does, through ``fake.x``. ``g_mi`` is left out when ``lambda_mi`` is 0.
        """
        terms: dict[str, torch.Tensor] = {}
        fake_u = fake.unary()
        if fake_u is not None:
            terms["g_unary"] = step.run.loss.generator(fake_u)
        else:
            self.note_no_unary(step)
        o = self.options
        if o.lambda_mi > 0:
            with frozen(self.net):
                logits = self.net(fake.x.to(self.device)).float()
            labels = fake.labels.to(logits.device)
            terms["g_mi"] = (o.lambda_mi / o.lambda_adv) * mutual_information(logits, labels)
        return terms

    def train_own(self, step: Step) -> dict[str, torch.Tensor]:
        """One update of C (Algorithm 1 lines 22-28) on a fresh real batch x:

        - ``c_adv`` (line 27): D's score s_r of the pair (x, p), p = softmax(C(x)), through the
          run's loss as if the pair were fake for D: ``loss.generator(-s_r)`` (the hinge loss
          gives mean(s_r)). D is a fixed critic here: it runs without a graph and C's gradient
          reaches its score only through p (``class_score``), so D gets no gradient.
        - ``c_aug`` (line 28, Eq. 5): ``consistency`` between C's predictions on x (p) and on
          an augmented view x_t (q, the target).

        C minimises ``l1 c_adv + l3 c_aug`` with its optimiser (its gradients zeroed first).
        Returns both terms, unweighted and detached.
        """
        index, x = step.real_batch()
        x = x.detach().to(self.device)
        self.net.train()
        log_p = F.log_softmax(self.net(x).float(), 1)
        if self.augment.is_identity:
            log_q = log_p.detach()
        else:
            with torch.no_grad():
                log_q = F.log_softmax(self.net(self.augment(x)).float(), 1)
        p = log_p.exp()
        with torch.no_grad():
            scored = step.discriminate(x, p.detach(), index)
        score = class_score(scored.logits.detach(), p.to(scored.logits.device))
        c_adv = step.run.loss.generator(-score)
        c_aug = consistency(log_p, log_q)
        o = self.options
        loss = o.lambda_adv * c_adv + o.lambda_aug * c_aug
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.params)
        self.optimizer.step()
        return {"c_adv": c_adv.detach(), "c_aug": c_aug.detach()}

    def note_no_unary(self, step: Step) -> None:
        if not self.noted_no_unary:
            self.noted_no_unary = True
            backbone = getattr(getattr(step.run, "config", None), "backbone", "this backbone")
            print(f"note: --cond {NAME}: the discriminator of {backbone!r} has no unary "
                  "score, so BigBiGAN's unary term is left out (joint term only)",
                  file=sys.stderr)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """C's weights (with spectral norm's power-iteration vectors and BatchNorm
        statistics) and its optimiser's state."""
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
