"""The training step as composable terms: soft conditions, regularisers, augmentations and
optimiser settings."""

import json
from types import SimpleNamespace

import pytest
import torch

from harness.api import DataSpec, Scored, class_score
from harness.build import build_run
from harness.config import RunConfig, make_config
from harness.errors import RunFailed
from harness.trainer import Trainer
from harness_plugins.augmentations.diffaug import DiffAugment
from harness_plugins.regularizers.penalties import R1
from tests.conftest import FAST, only_run

IMAGES = DataSpec(shape=(3, 16, 16))


def build(pm, **values):
    base = {"steps": 2, "progress": False, "eval_samples": 500, "cond": "random",
            "cond_options": {"k": 4}}
    if "dataset" not in values:
        base["dataset_options"] = {"size": 500}
    return build_run(make_config({**base, **values}), pm)


def test_soft_condition_on_one_hot_vectors_equals_the_integer_label():
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    assert torch.equal(class_score(logits, one_hot), class_score(logits, labels))
    assert torch.equal(class_score(logits, labels), logits[torch.arange(6), labels])
    mixed = torch.full((6, 4), 0.25)
    assert torch.allclose(class_score(logits, mixed), logits.mean(1))


def test_soft_condition_of_a_projection_discriminator_is_its_projection(pm):
    run = build(pm, backbone="biggan", dataset="digits", backbone_options={"width": 4},
                metrics=["cluster_agreement"])
    d = run.discriminator.eval()
    x = run.dataset.batch(torch.arange(5))
    p = torch.softmax(torch.randn(5, 4), 1)
    logits, h = d(x)
    unary = d.unary(h)
    # psi(h) + <sum_k p_k e_k, h>: the projection of the expected class embedding
    assert torch.allclose(class_score(logits, p), unary + ((p @ d.embed.weight) * h).sum(1),
                          atol=1e-5)
    assert run.generator is not None and build(pm).discriminator.unary(h[:, :1]) is None


def test_r1_adds_gamma_half_the_squared_input_gradient():
    w = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    x = torch.randn(5, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0, 1])
    real = Scored(x, labels, x @ w.T, x, discriminator=None)
    r1 = R1(R1.Options(gamma=4.0), DataSpec(shape=(2,)))
    step = SimpleNamespace(run=SimpleNamespace(step=0))
    (term,) = r1.d_terms(real, real, step).values()
    expected = 4.0 / 2 * (w[labels] ** 2).sum(1).mean()
    assert torch.allclose(term, expected)
    lazy = R1(R1.Options(gamma=4.0, every=3), DataSpec(shape=(2,)))
    # iteration 5 (4 done): skipped; iteration 6 (5 done): applied, times 3
    assert lazy.d_terms(real, real, SimpleNamespace(run=SimpleNamespace(step=4))) == {}
    (lazy_term,) = lazy.d_terms(real, real, SimpleNamespace(run=SimpleNamespace(step=5))).values()
    assert torch.allclose(lazy_term, 3 * expected)


def test_r1_changes_d_loss_by_its_term_in_training(pm):
    """Step 1's adversarial term is the same with and without R1 (same weights, same batch);
    with R1 the logged D loss adds exactly the logged penalty."""
    plain = Trainer(build(pm)).step()
    with_r1 = Trainer(build(pm, reg="r1", reg_options={"gamma": 10.0})).step()
    assert with_r1["d_r1"] > 0
    assert torch.allclose(with_r1["d_loss"] - with_r1["d_r1"], plain["d_loss"])
    assert "d_r1" not in plain


def test_diffaug_is_differentiable_and_keeps_shape():
    aug = DiffAugment(DiffAugment.Options(), IMAGES)
    x = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_()
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffaug_transformations_do_what_they_say():
    x = torch.rand(64, 3, 16, 16) + 1  # strictly positive: zeros can only come from padding/cut
    still = DiffAugment(DiffAugment.Options(policy=["translation"], translation=0.0), IMAGES)
    assert torch.equal(still(x), x)
    shift = DiffAugment(DiffAugment.Options(policy=["translation"], translation=0.25), IMAGES)
    moved = shift(x)
    zero_rows = (moved == 0).all(1).all(2).sum(1)  # padded rows per image: |dy| <= 4
    assert zero_rows.max() <= 4 and zero_rows.max() > 0
    nonzero = moved[moved != 0]  # every kept pixel comes from the image
    assert torch.isin(nonzero, x).all()
    cut = DiffAugment(DiffAugment.Options(policy=["cutout"], cutout=0.5), IMAGES)(x)
    zeros = (cut == 0).all(1).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # an 8x8 square, clipped at the borders
    color = DiffAugment(DiffAugment.Options(policy=["color"]), IMAGES)(x)
    assert not torch.equal(color, x) and color.shape == x.shape


def test_diffaug_augments_every_input_of_d(pm):
    run = build(pm, dataset="digits", backbone="dcgan", augment="diffaug",
                augment_options={"policy": ["cutout"]}, backbone_options={"width": 4},
                metrics=["cluster_agreement"], batch_size=8)
    seen = []
    run.discriminator.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    Trainer(run).step()
    assert len(seen) == 3  # real and fake in D's update, fake in G's
    for x in seen:  # a cut-out square of zeros in every image, which digits never have
        assert ((x == 0).all(1).flatten(1).sum(1) > 0).all()


def test_diffaug_refuses_flat_data(cli, tmp_path):
    result = cli("run", *FAST, "--augment", "diffaug", "--out", tmp_path)
    assert result.code == 2 and "needs images" in result.err and "--augment none" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("flag", "value", "valid"), [
    ("--reg", "r2", "Available: none, r1"),
    ("--augment", "diffaugment", "Did you mean 'diffaug'"),
    ("--reg-opt", "gamma=-1", "gamma"),
    ("--optimizer", "sgd", "adam"),
    ("--betas-d", "0.5", "two numbers"),
    ("--betas-g", "0.5,1.5", "[0, 1)"),
    ("--weight-decay", "nan", "weight_decay"),
])
def test_bad_step_settings_are_one_line(cli, tmp_path, flag, value, valid):
    extra = ["--reg", "r1"] if flag == "--reg-opt" else []
    result = cli("run", *FAST, *extra, flag, value, "--out", tmp_path)
    assert result.code == 2 and valid in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_optimiser_settings_per_network(pm):
    trainer = Trainer(build(pm, optimizer="adamw", weight_decay=0.1, betas_g=(0.0, 0.99),
                            betas_d=(0.5, 0.9), lr_g=2e-4))
    g, d = trainer.training_step.opt_g, trainer.training_step.opt_d
    assert isinstance(g, torch.optim.AdamW) and isinstance(d, torch.optim.AdamW)
    assert g.defaults["betas"] == (0.0, 0.99) and d.defaults["betas"] == (0.5, 0.9)
    assert g.defaults["lr"] == 2e-4 and g.defaults["weight_decay"] == 0.1
    default = Trainer(build(pm)).training_step.opt_g
    assert type(default) is torch.optim.Adam and default.defaults["betas"] == (0.8, 0.999)


def test_new_settings_at_their_defaults_keep_a_runs_hash():
    """Hashes recorded before regularisers, augmentations and optimiser settings existed."""
    assert RunConfig().short_hash() == "b5b3b8f4"
    assert RunConfig(cond="none", seed=3, dataset="grid").short_hash() == "912d951b"
    assert RunConfig(reg="r1").short_hash() != RunConfig().short_hash()


def test_regularised_run_logs_its_terms_and_resumes(cli, tmp_path):
    result = cli("run", *FAST, "--reg", "r1", "--reg-opt", "gamma=1", "--out", tmp_path)
    assert result.code == 0, result.err
    run_dir = only_run(tmp_path)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(r["d_r1"] >= 0 for r in records if "d_loss" in r)
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]
    assert resolved["reg"]["options"] == {"gamma": 1.0, "every": 1}


class Clash:
    """A regulariser that returns a key the step already has."""

    def __init__(self, key):
        self.key = key

    def d_terms(self, real, fake, step):
        return {self.key: real.score.mean()}


@pytest.mark.parametrize("key", ["d_loss", "d_r1"])
def test_a_term_that_would_replace_another_is_refused(pm, key):
    run = build(pm, reg="r1")
    trainer = Trainer(run)
    trainer.training_step.parts.append(("reg 'clash'", Clash(key)))
    with pytest.raises(RunFailed, match=f"reg 'clash': d_terms returned {key}, already in"):
        trainer.step()


def test_a_failing_term_names_its_component(pm):
    run = build(pm)
    trainer = Trainer(run)

    def broken(real, fake, step):
        raise ValueError("shape mismatch")

    run.regularizer.d_terms = broken
    with pytest.raises(RunFailed, match="reg 'none' failed in d_terms: ValueError: shape mismatch"):
        trainer.step()


def test_booleans_inside_number_lists_are_refused(cli, tmp_path):
    result = cli("run", *FAST, "--config", write_toml(tmp_path, "betas_g = [false, 0.5]\n"),
                 "--out", tmp_path / "out")
    assert result.code == 2 and "a boolean is not a number" in result.err
    assert not (tmp_path / "out").exists()


def write_toml(folder, text):
    path = folder / "run.toml"
    path.write_text(text)
    return path


def test_options_of_an_unselected_plugin_name_the_plugin_that_has_them(cli, tmp_path):
    result = cli("run", *FAST, "--reg-opt", "gamma=10", "--out", tmp_path)
    assert result.code == 2 and "gamma: an option of --reg r1" in result.err


def test_a_components_run_defaults_apply_unless_set(cli, tmp_path):
    """slcGAN updates D twice per G step unless the flags or the config file say otherwise."""
    args = ["run", "--dataset", "digits", "--backbone", "dcgan", "--backbone-opt", "width=4",
            "--cond", "clustering_net", "--cond-opt", "k=4", "--cond-opt", "width=2",
            "--steps", "1", "--batch-size", "4", "--eval-samples", "50", "--metrics",
            "cluster_agreement", "--metric-opt", "cluster_agreement.subset=50", "--no-progress"]
    default = cli(*args, "--out", tmp_path / "a")
    assert default.code == 0, default.err
    assert "note: --cond clustering_net sets d_steps=2 (--d-steps to change)" in default.err
    given = cli(*args, "--d-steps", "1", "--out", tmp_path / "b")
    assert given.code == 0 and "sets d_steps" not in given.err
    steps = [json.loads((only_run(tmp_path / x) / "config.json").read_text())["config"]["d_steps"]
             for x in "ab"]
    assert steps == [2, 1]
