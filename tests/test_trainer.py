"""The training loop with real components: losses, learned priors, hooks and timings."""

import pytest
import torch

from harness.build import build_run
from harness.config import make_config
from harness.trainer import Trainer
from harness_plugins.losses.adversarial import Hinge, NonSaturating


def build(pm, **values):
    base = {"steps": 5, "progress": False, "eval_samples": 500, "dataset_options": {"size": 500}}
    return build_run(make_config({**base, **values}), pm)


def test_losses_on_known_logits():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    bce, hinge = NonSaturating(NonSaturating.Options()), Hinge(Hinge.Options())
    softplus = torch.nn.functional.softplus
    assert bce.discriminator(real, fake) == pytest.approx(
        float(softplus(-real).mean() + softplus(fake).mean())
    )
    assert bce.generator(fake) == pytest.approx(float(softplus(-fake).mean()))
    assert hinge.discriminator(real, fake) == pytest.approx((0 + 2 + 1.5 + 0) / 2)
    assert hinge.generator(fake) == pytest.approx(1.25)


def test_learned_mixture_prior_trains_with_the_generator(pm):
    run = build(pm, prior="gmm", cond="gmm",
                prior_options={"learned": True, "num_components": 3})
    before = run.prior.means.detach().clone()
    trainer = Trainer(run)
    trainer.setup()
    trainer.train()
    assert not torch.equal(run.prior.means, before)
    assert run.generator.embedding.num_embeddings == 1  # G unconditional under cond=gmm
    assert run.conditioner.num_classes == 3


def test_static_mixture_prior_is_untouched_by_training(pm):
    run = build(pm, prior="gmm", cond="gmm", prior_options={"num_components": 3})
    before = run.prior.means.clone()
    trainer = Trainer(run)
    trainer.setup()
    trainer.train()
    assert torch.equal(run.prior.means, before)


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_both_losses_train_and_evaluate(pm, loss):
    run = build(pm, loss=loss, cond="random", cond_options={"k": 4}, d_steps=2)
    trainer = Trainer(run)
    trainer.setup()
    trainer.train()
    metrics = trainer.evaluate()
    assert 0 <= metrics["hq_pct"] <= 100 and metrics["modes"] <= 8
    assert run.discriminator.head.out_features == 4
    assert run.timings["ms_per_step"] > 0


def test_evaluation_samples_follow_class_weights(pm):
    run = build(pm, cond="ground_truth")
    x, y = Trainer(run).sample(4000)
    assert x.shape == (4000, 2) and y.shape == (4000,)
    freq = torch.bincount(y, minlength=8).double() / 4000
    assert torch.allclose(freq, run.conditioner.class_weights(), atol=0.03)
