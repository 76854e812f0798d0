"""Plugin discovery, registries, duplicate names, load failures and the escape hatches."""

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import hookimpl, hookspecs
from harness.api import Options, Prior
from harness.errors import PluginError
from harness.manager import PluginManager

ROOT = Path(__file__).resolve().parents[1]
BUILT_INS = {
    "priors": {"gaussian", "uniform", "gmm"},
    "conditioners": {"none", "random", "ground_truth", "kmeans_d", "online_kmeans", "gmm"},
    "backbones": {"mlp", "dcgan", "resnet", "biggan"},
    "datasets": {"ring", "grid", "digits", "stacked_digits", "mnist", "stacked_mnist", "cifar10",
                 "image_folder"},
    "metrics": {"modes_2d", "cluster_agreement"},
    "losses": {"bce", "hinge"},
}


def test_built_ins_come_through_the_entry_point_group(pm):
    for family, names in BUILT_INS.items():
        registry = pm.registry(family)
        assert names <= set(registry), family
        for name in names:
            assert "gan-harness" in registry[name].provider
            assert issubclass(registry[name].load(), hookspecs_base(family))


def hookspecs_base(family):
    from harness import api

    return {"priors": api.Prior, "conditioners": api.Conditioner, "backbones": api.Backbone,
            "datasets": api.Dataset, "metrics": api.Metric, "losses": api.Loss}[family]


def test_registry_toml_lists_exactly_the_entry_points():
    catalogue = tomllib.loads((ROOT / "registry.toml").read_text())["plugins"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert catalogue == project["entry-points"]["harness.plugins"]


def test_listing_does_not_import_components():
    pm = PluginManager()
    pm.load_entrypoints()
    entries = [e for family in BUILT_INS for e in pm.registry(family).values()]
    assert all(isinstance(e.target, str) for e in entries), "lazy 'module:Class' targets"


class Duplicate:
    @hookimpl
    def harness_priors(self):
        return {"gaussian": Prior}


def test_duplicate_name_is_an_error_naming_both_providers():
    pm = PluginManager()
    pm.load_entrypoints()
    pm.register(Duplicate(), name="dupe-plugin")
    expected = r'prior "gaussian" is registered twice: by priors .*dupe-plugin'
    with pytest.raises(PluginError, match=expected):
        pm.registry("priors")


class Misspelled:
    @hookimpl
    def harness_prior(self):  # not a hook
        return {}


def test_misspelled_hook_is_an_error_not_silence():
    pm = PluginManager()
    with pytest.raises(PluginError, match="harness_prior"):
        pm.register(Misspelled(), name="typo")
    assert not pm.pm.has_plugin("typo")


def test_unknown_name_suggests_the_closest(pm):
    with pytest.raises(PluginError, match="Did you mean 'kmeans_d'.*Available: gmm, ground_truth"):
        pm.get("conditioners", "kmeans-d")


def test_lazy_target_that_fails_to_import_is_reported_by_name():
    class Broken:
        @hookimpl
        def harness_priors(self):
            return {"ghost": "no_such_module.anywhere:Ghost"}

    pm = PluginManager()
    pm.register(Broken(), name="broken")
    expected = 'Error importing prior "ghost" from broken.*no_such_module'
    with pytest.raises(PluginError, match=expected):
        pm.get("priors", "ghost").load()


def fake_entry_point(name, target, fails=False):
    def load():
        if fails:
            raise ImportError("No module named 'missing_dependency'")
        return target

    dist = SimpleNamespace(name=f"dist-{name}", version="1.0")
    return SimpleNamespace(name=name, value=f"{name}_module", dist=dist, load=load)


class ExtraPrior:
    @hookimpl
    def harness_priors(self):
        return {"extra": Prior}


def test_a_plugin_that_fails_to_import_does_not_take_the_others_down(monkeypatch):
    eps = [fake_entry_point("broken", None, fails=True), fake_entry_point("extra", ExtraPrior())]
    monkeypatch.setattr("harness.manager.entry_points", lambda group: eps)
    pm = PluginManager()
    pm.load_entrypoints()
    pm.load_entrypoints()  # safe to call twice
    assert "missing_dependency" in pm.load_errors["broken"]
    assert 'Error importing plugin "broken"' in pm.load_errors["broken"]
    assert pm.registry("priors")["extra"].provider == "extra (dist-extra 1.0)"


def test_allow_and_block_lists(monkeypatch):
    monkeypatch.setenv("HARNESS_LOAD_PLUGINS", "")
    pm = PluginManager()
    pm.load_entrypoints()
    assert pm.registry("priors") == {}
    monkeypatch.delenv("HARNESS_LOAD_PLUGINS")
    monkeypatch.setenv("HARNESS_BLOCK_PLUGINS", "conditioners")
    pm = PluginManager()
    pm.load_entrypoints()
    assert pm.registry("conditioners") == {} and "gaussian" in pm.registry("priors")


def test_every_hook_is_documented_and_in_the_plugin_guide():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    names = [n for n in dir(hookspecs) if n.startswith("harness_")]
    assert len(names) == 11
    for name in names:
        assert getattr(hookspecs, name).__doc__, name
        assert f"`{name}`" in guide, name


def test_every_builtin_option_has_help_and_a_default(pm):
    for family in BUILT_INS:
        for entry in pm.registry(family).values():
            options: type[Options] = entry.load().Options
            for key, field in options.model_fields.items():
                assert field.description, f"{family} {entry.name}.{key} has no help"
                assert not field.is_required(), f"{family} {entry.name}.{key} has no default"


def test_plugins_command_lists_families_and_options(cli):
    result = cli("plugins")
    assert result.code == 0
    for family in hookspecs.FAMILIES:
        assert f"{family}:" in result.out
    assert "kmeans_d" in result.out and "gan-harness" in result.out
    verbose = cli("plugins", "--verbose").out
    assert "--cond-opt recluster_every=<int> (default 5000)" in verbose
    assert "--prior-opt learned=<bool> (default False)" in verbose
