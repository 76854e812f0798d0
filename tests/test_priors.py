"""Latent priors: shapes, label-to-component tying, learned vs. static GMM parameters."""

import torch

from harness.api import Options
from harness_plugins.priors.gmm import GaussianMixture, GaussianMixtureOptions
from harness_plugins.priors.simple import Gaussian, Uniform, UniformOptions


def test_simple_priors():
    torch.manual_seed(0)
    z = Gaussian(Options(), z_dim=3, num_classes=1).sample(20_000)
    assert z.shape == (20_000, 3) and abs(float(z.std()) - 1) < 0.02
    u = Uniform(UniformOptions(bound=2.0), z_dim=2, num_classes=1).sample(1000, scale=0.5)
    assert u.abs().max() <= 1.0


def test_labels_pick_their_component_when_counts_match():
    prior = GaussianMixture(GaussianMixtureOptions(num_components=4), z_dim=5, num_classes=4)
    labels = torch.tensor([3, 0, 2, 2])
    z = prior.sample(4, labels, scale=0.0)
    assert torch.equal(z, prior.means[labels])


def test_components_are_uniform_when_labels_do_not_index_them():
    prior = GaussianMixture(GaussianMixtureOptions(num_components=3), z_dim=2, num_classes=50)
    z = prior.sample(3000, torch.zeros(3000, dtype=torch.long), scale=0.0)
    at_mean = (z[:, None] == prior.means[None]).all(-1)  # scale 0: each z is a mean exactly
    assert (at_mean.sum(1) == 1).all() and (at_mean.sum(0) > 800).all()


def test_scale_shrinks_the_spread():
    prior = GaussianMixture(GaussianMixtureOptions(num_components=1, sigma=1.0), 2, 1)
    wide, narrow = prior.sample(5000), prior.sample(5000, scale=0.25)
    assert torch.allclose(narrow.std(0), 0.25 * wide.std(0), rtol=0.1)


def step_on(prior: GaussianMixture) -> None:
    opt = torch.optim.SGD(prior.parameters(), lr=0.1) if list(prior.parameters()) else None
    loss = (prior.sample(64) ** 2).sum()
    if opt:
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_dynamic_gmm_parameters_receive_gradients_and_change():
    prior = GaussianMixture(GaussianMixtureOptions(num_components=5, learned=True), 3, 5)
    before = (prior.means.detach().clone(), prior.scales.detach().clone())
    step_on(prior)
    assert prior.means.grad is not None and prior.scales.grad is not None
    assert not torch.equal(prior.means, before[0]) and not torch.equal(prior.scales, before[1])


def test_static_gmm_has_no_parameters_and_does_not_change():
    prior = GaussianMixture(GaussianMixtureOptions(num_components=5), 3, 5)
    before = prior.means.clone()
    assert list(prior.parameters()) == []
    step_on(prior)
    assert torch.equal(prior.means, before)
    assert "means" in prior.state_dict()  # still checkpointed
