"""slcGAN's clustering network (``--cond clustering_net``, Noroozi 2020): soft conditions,
the terms of Eq. 3-6 / Algorithm 1 against a small stand-in training step, which network
each term moves, augmentation, state, errors, and end-to-end runs (with exact resume)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from harness.api import (
    BuildContext,
    DataSpec,
    Discriminator,
    Options,
    Scored,
    class_score,
)
from harness.errors import ConfigError
from harness.manager import get_plugin_manager
from harness_plugins.conditioners.clustering_net import (
    ClusteringNet,
    ClusteringNetOptions,
    ViewAugmentation,
    consistency,
)
from harness_plugins.datasets.images import (
    Digits,
    DigitsOptions,
    StackedDigits,
    StackedDigitsOptions,
)
from harness_plugins.datasets.toy2d import Ring, RingOptions
from harness_plugins.losses.adversarial import Hinge, NonSaturating
from tests.conftest import assert_resume_is_exact, only_run

K = 10
BATCH = 16
NO_AUGMENTATION = {"crop_scale": 1.0, "jitter": 0.0, "flip": False}


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(DigitsOptions(), seed=0)


def conditioner(dataset, seed: int = 0, **options) -> ClusteringNet:
    opts = ClusteringNetOptions(**{"k": K, "width": 8, **options})
    return ClusteringNet(opts, BuildContext(dataset, "gaussian", Options(), seed))


def biggan(shape=(1, 32, 32), num_classes: int = K, seed: int = 0):
    cls = get_plugin_manager().get("backbones", "biggan").load()
    torch.manual_seed(seed)
    return cls(cls.Options(width=4)).build(DataSpec(shape), num_classes, 16)


class NoUnaryD(Discriminator):
    """A class-aware D without a unary score (like resnet's and dcgan's)."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, num_classes))
        self.feature_dim = num_classes

    def forward(self, x):
        logits = self.net(x)
        return logits, logits


class ClassBlindD(Discriminator):
    """D whose every logit is 0: the score of (x, p) does not depend on p at all, so C's
    adversarial term has exactly zero gradient."""

    feature_dim = 1

    def forward(self, x):
        return x.flatten(1)[:, :1].mul(0).expand(-1, K), x.flatten(1)[:, :1]


class FakeStep:
    """A stand-in for the trainer's ``harness.api.Step``: its own data stream, G and D."""

    def __init__(self, dataset, d, g=None, loss=None, seed: int = 0) -> None:
        self.run = SimpleNamespace(
            loss=loss or Hinge(Options()), net_labels=lambda y: y,
            config=SimpleNamespace(backbone="test"),
        )
        self.dataset, self.d, self.g = dataset, d, g
        self.rng = torch.Generator().manual_seed(seed)

    def real_batch(self):
        index = torch.randint(len(self.dataset), (BATCH,), generator=self.rng)
        return index, self.dataset.batch(index)

    def fake_batch(self, n):
        labels = torch.randint(K, (n,), generator=self.rng)
        return self.g(torch.randn(n, 16, generator=self.rng), labels), labels

    def discriminate(self, x, labels, index=None):
        logits, features = self.d(x)
        return Scored(x, labels, logits, features, self.d, index)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights_moved(before: dict[str, torch.Tensor], net: nn.Module) -> bool:
    return any(not torch.equal(before[k], p) for k, p in net.state_dict().items()
               if k.endswith(("original", "bias")))


# ----------------------------------------------------------------------------- class_score
def test_class_score_of_one_hot_vectors_equals_the_integer_path():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=generator) * 100
    labels = torch.randint(7, (64,), generator=generator)
    one_hot = nn.functional.one_hot(labels, 7).float()
    assert torch.equal(class_score(logits, one_hot), class_score(logits, labels))


def test_class_score_on_the_biggan_projection_d(digits):
    _, d = biggan()
    d.eval()  # spectral norm without power iterations: every weight access is the same
    x = digits.batch(torch.arange(BATCH))
    with torch.no_grad():
        logits, h = d(x)
        labels = torch.arange(BATCH) % K
        one_hot = nn.functional.one_hot(labels, K).float()
        assert torch.equal(class_score(logits, one_hot), class_score(logits, labels))
        # a soft condition p: psi(h) + <sum_k p_k e_k, h>, the projection of E p
        p = torch.softmax(torch.randn(BATCH, K, generator=torch.Generator().manual_seed(1)), 1)
        projected = d.unary(h) + (h * (p @ d.embed.weight)).sum(1)
        torch.testing.assert_close(class_score(logits, p), projected)
        assert torch.equal(d.unary(h), d.psi(h).squeeze(1))


# ----------------------------------------------------------------------------- building
def test_c_is_initialised_apart_from_the_global_rng(digits):
    state = torch.get_rng_state()
    a = conditioner(digits, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # G and D initialise as without C
    assert same(snapshot(a.net), snapshot(conditioner(digits, seed=3).net))
    assert not same(snapshot(a.net), snapshot(conditioner(digits, seed=4).net))
    convs = [m for m in a.net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)  # spectral norm
    assert sum(isinstance(m, nn.BatchNorm2d) for m in a.net.modules()) == 6
    assert a.num_classes == K
    assert torch.equal(a.class_weights(), torch.full((K,), 1 / K))


def test_c_tells_images_apart_at_initialisation(digits):
    """C(x) depends on x from the first step (BatchNorm): without it the spectrally
    normalised CNN gave every digit the same near-uniform p (logits varying 0.013 across
    images), and MI and adversarial gradients never moved C off that point."""
    cond = conditioner(digits)
    index = torch.arange(64)
    p = cond.labels_for_real(index, torch.zeros(64, 1), digits.batch(index))
    assert p.log().std(0).mean() > 0.5


def test_resnet18_for_small_images():
    stacked = StackedDigits(StackedDigitsOptions(size=64, heldout_size=1), seed=0)
    cond = conditioner(stacked, net="resnet18", width=None)
    net = cond.net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert net.conv1.in_channels == 3 and isinstance(net.maxpool, nn.Identity)
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 21 and all(hasattr(m, "parametrizations") for m in layers)
    before = snapshot(net)
    losses = cond.train_own(FakeStep(stacked, NoUnaryD3()))
    assert weights_moved(before, net) and all(torch.isfinite(v) for v in losses.values())
    assert cond.partition(None, torch.arange(5)).shape == (5,)


class NoUnaryD3(NoUnaryD):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, K))


def test_flat_data_and_bad_options_are_refused_in_one_line(digits):
    with pytest.raises(ConfigError, match=r"image data.*\(2,\).*valid") as info:
        conditioner(Ring(RingOptions(size=100), seed=0))
    assert "\n" not in str(info.value)
    for bad in ({"k": 1}, {"net": "vgg"}, {"lambda_adv": 0}, {"betas": (0.5, 1.0)},
                {"crop_scale": 0}, {"net": "resnet18", "width": 8}):
        with pytest.raises(ValidationError):
            ClusteringNetOptions(**bad)


def test_cli_refuses_k_below_2_and_flat_data(cli, tmp_path):
    for args, pattern in (
        (["--dataset", "digits", "--backbone", "dcgan", "--metrics", "cluster_agreement",
          "--cond-opt", "k=1"], "k=1"),
        (["--dataset", "ring"], "needs image data"),
    ):
        result = cli("run", "--cond", "clustering_net", *args, "--out", tmp_path)
        errors = [line for line in result.err.splitlines() if line.startswith("error:")]
        assert result.code == 2 and len(errors) == 1 and pattern in errors[0], result.err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- real labels
def test_labels_for_real_are_probability_rows_without_gradients(digits):
    cond = conditioner(digits)
    index = torch.arange(BATCH)
    x = digits.batch(index).requires_grad_()
    p = cond.labels_for_real(index, torch.zeros(BATCH, 3), x)
    assert p.shape == (BATCH, K) and p.dtype == torch.float32 and not p.requires_grad
    torch.testing.assert_close(p.sum(1), torch.ones(BATCH))
    assert (p >= 0).all() and cond.net.training


def test_partition_is_the_argmax_of_c_in_eval_mode_and_changes_nothing(digits):
    cond = conditioner(digits)
    index = torch.arange(600)
    before = snapshot(cond.net)
    labels = cond.partition(None, index)
    assert labels.shape == (600,) and labels.dtype == torch.long
    assert same(before, snapshot(cond.net)) and cond.net.training  # mode restored
    cond.net.eval()
    with torch.no_grad():
        expected = cond.net(digits.batch(index)).argmax(1)
    assert torch.equal(labels, expected)
    assert torch.equal(cond.assign(index[:7], torch.zeros(7, 2)), expected[:7])


# ----------------------------------------------------------------------------- G's terms
def test_mi_term_falls_when_g_and_c_agree_and_moves_g_only(digits):
    """A G of one learnable image per class, trained on the MI term alone: C comes to
    classify its class-c images as c (the term falls); the same images under shuffled
    labels score higher. C receives no gradient and none of its state changes."""
    cond = conditioner(digits)
    c_state = snapshot(cond.net)
    start = digits.batch(torch.zeros(K, dtype=torch.long)).clamp(-0.99, 0.99).atanh()
    images = nn.Parameter(start)
    optimizer = torch.optim.Adam([images], lr=0.05)
    labels = torch.arange(K).repeat(4)
    step = FakeStep(digits, NoUnaryD())

    def mi(permutation=None):
        shown = labels if permutation is None else permutation[labels]
        x = torch.tanh(images)[shown]
        logits, features = step.d(x)
        terms = cond.g_terms(Scored(x, labels, logits, features, step.d), step)
        assert set(terms) == {"g_mi"}  # no unary score in this D
        return terms["g_mi"]

    first = float(mi().detach())
    for _ in range(30):
        loss = mi()
        optimizer.zero_grad()
        loss.backward()
        assert images.grad is not None and images.grad.abs().sum() > 0
        assert all(p.grad is None for p in cond.net.parameters())
        optimizer.step()
    agreeing = float(mi().detach())
    shuffled = float(mi(torch.roll(torch.arange(K), 1)).detach())
    assert agreeing < first - 0.2 and agreeing < shuffled - 0.2, (first, agreeing, shuffled)
    assert same(c_state, snapshot(cond.net)) and cond.net.training


def test_g_terms_weighting_and_gradients_with_biggan(digits):
    g, d = biggan()
    d.eval()
    cond = conditioner(digits, lambda_mi=3.0, lambda_adv=2.0)
    step = FakeStep(digits, d, g)
    x, labels = step.fake_batch(BATCH)
    fake = step.discriminate(x, labels)
    terms = cond.g_terms(fake, step)
    assert set(terms) == {"g_unary", "g_mi"}
    assert torch.equal(terms["g_unary"], -d.psi(fake.features).squeeze(1).mean())
    cond.net.eval()
    with torch.no_grad():
        ce = nn.functional.cross_entropy(cond.net(x), labels)
    torch.testing.assert_close(terms["g_mi"].detach(), 1.5 * ce)  # (l2 / l1) CE
    (step.run.loss.generator(fake.score) + sum(terms.values())).backward()
    assert all(p.grad is None for p in cond.net.parameters())
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)
    assert "g_mi" not in conditioner(digits, lambda_mi=0).g_terms(fake, step)


# ----------------------------------------------------------------------------- D's terms
@pytest.mark.parametrize("loss", [Hinge(Options()), NonSaturating(Options())])
def test_d_terms_add_the_unary_term_when_d_has_one(digits, loss, capsys):
    g, d = biggan()
    d.eval()  # psi's spectral norm is the same at every call
    step = FakeStep(digits, d, g, loss=loss)
    cond = conditioner(digits)
    index, x = step.real_batch()
    real = step.discriminate(x, cond.labels_for_real(index, torch.zeros(BATCH, 1), x), index)
    with torch.no_grad():
        fake = step.discriminate(*step.fake_batch(BATCH))
    terms = cond.d_terms(real, fake, step)
    expected = loss.discriminator(d.psi(real.features).squeeze(1), d.psi(fake.features).squeeze(1))
    assert set(terms) == {"d_unary"} and torch.equal(terms["d_unary"], expected)
    assert capsys.readouterr().err == ""

    plain = FakeStep(digits, NoUnaryD(), g, loss=loss)
    real = plain.discriminate(x, real.labels, index)
    fake = plain.discriminate(fake.x, fake.labels)
    assert cond.d_terms(real, fake, plain) == {}
    assert cond.d_terms(real, fake, plain) == {}
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "no unary score" in err


# ----------------------------------------------------------------------------- C's update
def test_consistency_is_zero_for_identical_views_and_positive_otherwise(digits):
    log_p = torch.log_softmax(torch.randn(8, K), 1)
    assert consistency(log_p, log_p).item() == 0.0
    assert consistency(log_p, log_p.roll(1, 0)).item() > 0
    # its gradient w.r.t. log p is Eq. 5's cross-entropy's
    a = log_p.clone().requires_grad_()
    b = log_p.clone().requires_grad_()
    q = torch.softmax(torch.randn(8, K), 1)
    consistency(a, q.log()).backward()
    (-(q * b).sum(1).mean()).backward()
    torch.testing.assert_close(a.grad, b.grad)

    d = NoUnaryD()
    assert conditioner(digits, **NO_AUGMENTATION).train_own(FakeStep(digits, d))["c_aug"] == 0
    assert conditioner(digits).train_own(FakeStep(digits, d))["c_aug"] > 0


def test_train_own_moves_c_and_nothing_else(digits):
    g, d = biggan()
    step = FakeStep(digits, d, g)
    cond = conditioner(digits)
    c_before, d_before = snapshot(cond.net), snapshot(d)
    losses = cond.train_own(step)
    assert set(losses) == {"c_adv", "c_aug"}
    assert all(v.ndim == 0 and not v.requires_grad for v in losses.values())
    assert weights_moved(c_before, cond.net)
    assert all(p.grad is None for p in d.parameters())  # D is a fixed critic here
    # D's weights are untouched (its spectral-norm vectors advance: D ran in train mode)
    assert all(torch.equal(d_before[k], v) for k, v in d.state_dict().items()
               if not k.endswith(("_u", "_v")))


def test_c_adversarial_term_is_the_mean_real_score_for_hinge(digits):
    """Line 27: with the hinge loss, C minimises mean s_r of D on (x, softmax(C(x)))."""
    g, d = biggan()
    d.eval()
    step = FakeStep(digits, d, g)
    cond = conditioner(digits, **NO_AUGMENTATION)
    index, x = FakeStep(digits, d, g).real_batch()  # the batch train_own will draw
    twin = copy.deepcopy(cond.net)  # C's first forward in train_own, same power iteration
    with torch.no_grad():
        p = torch.softmax(twin.train()(x), 1)
        expected = class_score(d(x)[0], p).mean()
    torch.testing.assert_close(cond.train_own(step)["c_adv"], expected)


def test_each_c_term_alone_moves_c(digits):
    """Adversarial term alone (l3 = 0); the consistency term alone (a class-blind D, whose
    score ignores p: that the adversarial term then gives exactly no update is checked)."""
    g, d = biggan()
    adv_only = conditioner(digits, lambda_aug=0.0)
    before = snapshot(adv_only.net)
    adv_only.train_own(FakeStep(digits, d, g))
    assert weights_moved(before, adv_only.net)

    blind = ClassBlindD()
    nothing = conditioner(digits, lambda_aug=0.0)
    before = snapshot(nothing.net)
    assert nothing.train_own(FakeStep(digits, blind))["c_adv"] == 0
    assert not weights_moved(before, nothing.net)

    aug_only = conditioner(digits)
    before = snapshot(aug_only.net)
    assert aug_only.train_own(FakeStep(digits, blind))["c_aug"] > 0
    assert weights_moved(before, aug_only.net)


# ----------------------------------------------------------------------------- augmentation
def test_view_augmentation():
    stacked = StackedDigits(StackedDigitsOptions(size=64, heldout_size=1), seed=0)
    x = stacked.batch(torch.arange(64))
    assert ViewAugmentation(1.0, 0.0, False, True).is_identity
    for augment in (ViewAugmentation(0.5, 0.5, True, True), ViewAugmentation(0.3, 0.0, False,
                                                                             False),
                    ViewAugmentation(1.0, 0.8, False, True), ViewAugmentation(1.0, 0, True, True)):
        assert not augment.is_identity
        torch.manual_seed(5)
        y = augment(x)
        torch.manual_seed(5)
        assert torch.equal(augment(x), y)  # the global RNG decides: resumes are exact
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= -1 and y.max() <= 1 and (y - x).abs().mean() > 0.01
    flipped = ViewAugmentation(1.0, 0, True, False)(x)
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(2)) for a, b in zip(flipped, x,
                                                                                 strict=True))
    # digits: no flips by default, and jitter does not mix the channels (three digits)
    digits_cond = conditioner(stacked)
    assert not digits_cond.augment.flip and not digits_cond.augment.colour
    assert conditioner(stacked, flip=True).augment.flip


# ----------------------------------------------------------------------------- state
def test_state_dict_resumes_c_and_its_optimiser_exactly(digits):
    g, d = biggan()
    d.eval()  # the same critic for both updates
    a = conditioner(digits)
    step = FakeStep(digits, d, g)
    a.train_own(step)
    state = copy.deepcopy(a.state_dict())  # as a checkpoint would hold it
    b = conditioner(digits, seed=9)
    b.load_state_dict(state)
    assert same(snapshot(a.net), snapshot(b.net))
    rng = step.rng.get_state()
    torch.manual_seed(1)
    a.train_own(step)
    step.rng.set_state(rng)
    torch.manual_seed(1)
    b.train_own(step)
    assert same(snapshot(a.net), snapshot(b.net))
    keys = set(a.state_dict()["net"])
    assert any(k.endswith("_u") for k in keys) and any(k.endswith("original") for k in keys)


# ----------------------------------------------------------------------------- end to end
DIGITS_RUN = [
    "run", "--cond", "clustering_net", "--cond-opt", "k=10", "--cond-opt", "width=8",
    "--dataset", "digits", "--loss", "hinge", "--steps", "4", "--batch-size", "16",
    "--metrics", "cluster_agreement", "--metric-opt", "cluster_agreement.subset=300",
    "--eval-samples", "100", "--no-progress", "--log-every", "1", "--checkpoint-every", "2",
]


@pytest.mark.parametrize("backbone", ["biggan", "resnet", "dcgan"])
def test_end_to_end_trains_and_scores_c_partition(cli, tmp_path, backbone):
    width = 4 if backbone == "biggan" else 8
    result = cli(*DIGITS_RUN, "--backbone", backbone, "--backbone-opt", f"width={width}",
                 "--out", tmp_path)
    assert result.code == 0, result.err
    run_dir = only_run(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["cluster_acc"] <= 1 and "cluster_nmi" in metrics
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "d_loss" in r]
    assert len(losses) == 4
    unary = {"d_unary", "g_unary"} if backbone == "biggan" else set()
    assert {"c_adv", "c_aug", "g_mi"} | unary <= set(losses[0])
    assert unary or not {"d_unary", "g_unary"} & set(losses[0])
    assert ("no unary score" in result.err) == (backbone != "biggan")
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {"net", "optimizer"} <= set(state["conditioner"])


def test_resume_is_exact(cli, pm, tmp_path):
    args = [*DIGITS_RUN, "--backbone", "biggan", "--backbone-opt", "width=4",
            "--d-steps", "2"]
    run_dir = assert_resume_is_exact(cli, pm, tmp_path, args, stop_at=2)
    a, b = (torch.load(only_run(tmp_path / d) / "checkpoints" / "last.pt", weights_only=True)
            for d in ("straight", "resumed"))
    assert same(a["conditioner"]["net"], b["conditioner"]["net"])
    assert run_dir.exists()
