"""Image backbones (dcgan, resnet, biggan): shapes, ranges, gradients, state, shape errors."""

import pytest
import torch

from harness.api import Backbone, DataSpec, Discriminator, Generator
from harness.errors import ConfigError
from harness.manager import get_plugin_manager

IMAGE_BACKBONES = ["dcgan", "resnet", "biggan"]
N = 4


def backbone(name: str, **options: object) -> Backbone:
    cls = get_plugin_manager().get("backbones", name).load()
    return cls(cls.Options(**options))


def build(
    name: str,
    shape: tuple[int, ...],
    num_classes: int,
    z_dim: int = 128,
    seed: int = 0,
    **options: object,
) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    return backbone(name, **options).build(DataSpec(shape), num_classes, z_dim)


def inputs(num_classes: int, z_dim: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(N, z_dim, generator=generator)
    return z, torch.randint(num_classes, (N,), generator=generator)


@pytest.mark.parametrize("num_classes", [1, 10])
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32)])
@pytest.mark.parametrize("name", IMAGE_BACKBONES)
def test_shapes_range_and_gradients(name, shape, num_classes):
    g, d = build(name, shape, num_classes)
    z, y = inputs(num_classes)
    x = g(z, y)
    assert x.shape == (N, *shape) and x.abs().max() <= 1
    logits, features = d(x)
    assert logits.shape == (N, num_classes)
    assert features.shape == (N, d.feature_dim)
    logits.gather(1, y[:, None]).sum().backward()
    missing = [k for k, p in g.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert sum(float(p.grad.abs().sum()) for p in g.parameters()) > 0


@pytest.mark.parametrize("name", IMAGE_BACKBONES)
def test_deterministic_and_state_dict_round_trip(name):
    g, d = build(name, (3, 32, 32), 10)
    for net, twin in zip((g, d), build(name, (3, 32, 32), 10), strict=True):
        state, twin_state = net.state_dict(), twin.state_dict()
        assert all(torch.equal(state[k], twin_state[k]) for k in state)
    z, y = inputs(10)
    d(g(z, y))  # a training-mode pass moves BatchNorm statistics and spectral-norm vectors
    fresh_g, fresh_d = build(name, (3, 32, 32), 10, seed=7)
    fresh_g.load_state_dict(g.state_dict())
    fresh_d.load_state_dict(d.state_dict())
    for net in (g, d, fresh_g, fresh_d):
        net.eval()
    with torch.no_grad():
        x = g(z, y)
        assert torch.equal(fresh_g(z, y), x)
        for a, b in zip(d(x), fresh_d(x), strict=True):
            assert torch.equal(a, b)


def test_biggan_projection_scores_each_class_with_its_embedding():
    g, d = build("biggan", (3, 32, 32), 5, d_spectral_norm=False)
    x = g(*inputs(5)).detach()
    d.eval()
    with torch.no_grad():
        logits, h = d(x)
        d.embed.weight[3] += 1.0
        changed, _ = d(x)
    delta = changed - logits
    torch.testing.assert_close(delta[:, 3], h.sum(1))
    assert torch.equal(delta[:, [0, 1, 2, 4]], torch.zeros(N, 4))

    _, d = build("biggan", (3, 32, 32), 5)  # spectral norm on: still a projection
    d.eval()
    with torch.no_grad():
        logits, h = d(x)
    weight = d.embed.weight.detach()
    torch.testing.assert_close(logits - logits[:, :1], h @ (weight - weight[:1]).T)


def test_biggan_at_64_with_attention_many_classes_and_small_z():
    g, d = build("biggan", (3, 64, 64), 1000, z_dim=20, attention=32)
    assert any(type(m).__name__ == "SelfAttention" for m in d.modules())
    z, y = inputs(1000, z_dim=20)
    x = g(z, y)
    assert x.shape == (N, 3, 64, 64)
    logits, features = d(x)
    assert logits.shape == (N, 1000) and features.shape == (N, d.feature_dim)
    logits.gather(1, y[:, None]).sum().backward()
    assert g.attention is not None and g.attention.gamma.grad is not None

    g, _ = build("biggan", (3, 32, 32), 3, z_dim=2)  # fewer z dims than chunks: z used whole
    assert g(*inputs(3, z_dim=2)).shape == (N, 3, 32, 32)


def test_biggan_rejects_attention_at_a_missing_resolution():
    with pytest.raises(ConfigError, match="attention=32 .* use 0 \\(none\\) or one of 8, 16$"):
        build("biggan", (3, 32, 32), 1, attention=32)


@pytest.mark.parametrize("name", IMAGE_BACKBONES)
@pytest.mark.parametrize("shape", [(2,), (3, 28, 28), (3, 32, 16), (3, 8, 8), (3, 256, 256)])
def test_unsupported_shapes_give_one_line_config_error(name, shape):
    with pytest.raises(ConfigError) as info:
        build(name, shape, 1)
    message = str(info.value)
    assert "\n" not in message
    assert f"backbone '{name}' needs square images of side 16, 32, 64 or 128" in message
    assert f"dataset shape is {shape}" in message
    assert message.endswith("(for flat data use: mlp)") == (len(shape) == 1)


@pytest.mark.parametrize("name", IMAGE_BACKBONES)
def test_other_sides_build(name):
    g, d = build(name, (1, 16, 16), 2, z_dim=7)
    z, y = inputs(2, z_dim=7)
    assert d(g(z, y))[0].shape == (N, 2)
