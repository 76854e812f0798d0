"""Plugin discovery, registries, duplicate names, load failures and the escape hatches."""

import json
import re
import tomllib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from harness import hookimpl, hookspecs
from harness.api import Loss, Options, Prior
from harness.build import validate_options
from harness.errors import HarnessError, LifecycleHookError, PluginError
from harness.manager import BASES, SINGULAR, PluginManager

ROOT = Path(__file__).resolve().parents[1]
BUILT_INS = {
    "priors": {"gaussian", "uniform", "gmm"},
    "conditioners": {"none", "random", "ground_truth", "kmeans_d", "online_kmeans", "gmm",
                     "clustering_net"},
    "backbones": {"mlp", "dcgan", "resnet", "biggan"},
    "datasets": {"ring", "grid", "digits", "stacked_digits", "mnist", "stacked_mnist", "cifar10",
                 "image_folder"},
    "metrics": {"modes_2d", "cluster_agreement"},
    "losses": {"bce", "hinge"},
    "regularizers": {"none", "r1"},
    "augmentations": {"none", "diffaug"},
    "executors": {"local", "pool", "ray", "submitit"},
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
            "datasets": api.Dataset, "metrics": api.Metric, "losses": api.Loss,
            "regularizers": api.Regularizer, "augmentations": api.Augmentation,
            "executors": api.Executor}[family]


def test_registry_toml_lists_exactly_the_entry_points():
    catalogue = tomllib.loads((ROOT / "harness" / "registry.toml").read_text())["plugins"]
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
        return {"gaussian": Prior, "dupe_only": Prior}


def test_duplicate_name_is_an_error_only_when_used_naming_both_providers():
    pm = PluginManager()
    pm.load_entrypoints()
    pm.register(Duplicate(), name="dupe-plugin")
    registry = pm.registry("priors")
    assert "gaussian" not in registry and {"uniform", "dupe_only"} <= set(registry)
    expected = (
        r'prior "gaussian" is registered twice: by priors \(gan-harness .*\) and by dupe-plugin '
        r"\(dupe-plugin\); neither is used until one is uninstalled or blocked with "
        r"HARNESS_BLOCK_PLUGINS"
    )
    with pytest.raises(PluginError, match=expected):
        pm.get("priors", "gaussian")
    assert re.fullmatch(expected, pm.load_errors["priors gaussian"])
    pm.unregister("dupe-plugin")
    assert "gaussian" in pm.registry("priors") and "priors gaussian" not in pm.load_errors


class Misspelled:
    @hookimpl
    def harness_prior(self):  # not a hook
        return {}

    @hookimpl
    def harness_losses(self):
        return {"typo_loss": Loss}


def test_misspelled_hook_is_an_error_not_silence():
    pm = PluginManager()
    expected = (
        'plugin "typo" (typo) skipped: unknown hook harness_prior '
        "(did you mean harness_priors?)"
    )
    with pytest.raises(PluginError, match=re.escape(expected)):
        pm.register(Misspelled(), name="typo")
    assert not pm.pm.has_plugin("typo") and pm.registry("losses") == {}
    with pytest.raises(PluginError, match=r"unknown hook harness_check_pending$"):  # no hint
        pm.register(module_plugin("far", harness_check_pending=lambda: None), name="far")


class WrongArgument:
    @hookimpl
    def harness_priors(self):
        return {"never_seen": Prior}

    @hookimpl
    def harness_step_end(self, run, stepp, losses):
        pass


class Wrapper:
    @hookimpl(wrapper=True)
    def harness_step_end(self, run, step, losses):
        return (yield)


def test_a_hook_with_an_argument_the_spec_lacks_is_refused_whole():
    pm = PluginManager()
    with pytest.raises(PluginError, match=r"stepp.*can not be found in the hookspec") as info:
        pm.register(WrongArgument(), name="bad-args", provider="dist-bad 1.0")
    assert str(info.value).startswith('plugin "bad-args" (dist-bad 1.0) skipped: ')
    assert "\n" not in str(info.value)
    assert not pm.pm.has_plugin("bad-args") and pm.registry("priors") == {}


def test_a_wrapper_is_refused():
    pm = PluginManager()
    with pytest.raises(PluginError, match="harness_step_end is a wrapper"):
        pm.register(Wrapper(), name="wrapper")
    assert not pm.pm.has_plugin("wrapper")


def test_unknown_name_suggests_the_closest(pm):
    with pytest.raises(PluginError, match="Did you mean 'kmeans_d'.*Available: clustering_net"):
        pm.get("conditioners", "kmeans-d")


def test_unknown_name_is_singular_and_a_case_slip_suggests_the_name(pm):
    with pytest.raises(PluginError, match=r"^unknown loss 'hinj'\. Did you mean 'hinge'\?"):
        pm.get("losses", "hinj")
    with pytest.raises(PluginError, match=r"^unknown backbone 'MLP'\. Did you mean 'mlp'\?"):
        pm.get("backbones", "MLP")
    assert set(SINGULAR) == set(hookspecs.FAMILIES)


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


def fake_entry_point(name, target, fails=False, dist_name=None):
    def load():
        if fails:
            raise ImportError("No module named 'missing_dependency'")
        return target

    dist = SimpleNamespace(name=dist_name or f"dist-{name}", version="1.0")
    return SimpleNamespace(name=name, value=f"{name}_module", dist=dist, load=load)


class ExtraPrior:
    @hookimpl
    def harness_priors(self):
        return {"extra": Prior}


def module_plugin(name, **hooks):
    """A plugin module, as an entry point loads it, with ``hooks`` as its functions."""
    module = ModuleType(name)
    for hook_name, function in hooks.items():
        function.__name__ = hook_name
        setattr(module, hook_name, hookimpl(function))
    return module


def test_broken_plugins_are_named_and_skipped_and_the_rest_works(monkeypatch):
    def step_end(run, stepp, losses):
        pass

    eps = [
        fake_entry_point("broken", None, fails=True),
        fake_entry_point("bad_args", module_plugin("bad_args", harness_step_end=step_end)),
        fake_entry_point("typo", module_plugin("typo", harness_backbone=lambda: {})),
        fake_entry_point("extra", ExtraPrior()),
        fake_entry_point("extra", ExtraPrior(), dist_name="other-dist"),
    ]
    monkeypatch.setattr("harness.manager.entry_points", lambda group: eps)
    pm = PluginManager()
    pm.load_entrypoints()
    pm.load_entrypoints()  # safe to call twice
    assert pm.load_errors == {
        "broken": 'plugin "broken" (dist-broken 1.0) skipped: error importing broken_module: '
                  "ImportError: No module named 'missing_dependency'",
        "bad_args": 'plugin "bad_args" (dist-bad_args 1.0) skipped: '
                    "Plugin 'bad_args' for hook 'harness_step_end'; "
                    "hookimpl definition: harness_step_end(run, stepp, losses); "
                    "Argument(s) {'stepp'} are declared in the hookimpl but can not be found "
                    "in the hookspec",
        "typo": 'plugin "typo" (dist-typo 1.0) skipped: unknown hook harness_backbone '
                "(did you mean harness_backbones?)",
        "extra": 'plugin "extra" (other-dist 1.0) skipped: the name is taken by dist-extra 1.0',
    }
    assert pm.registry("priors")["extra"].provider == "extra (dist-extra 1.0)"
    assert [pm.pm.get_name(p) for p in pm.pm.get_plugins()] == ["extra"]


class BrokenRegistrations:
    @hookimpl
    def harness_priors(self):
        raise RuntimeError("boom\nsecond line")

    @hookimpl
    def harness_backbones(self):
        return ["mlp2"]

    @hookimpl
    def harness_losses(self):
        return {"ok": Loss, "bad": 3}

    @hookimpl
    def harness_datasets(self):
        return {"lazy": "no_colon_here"}

    @hookimpl
    def harness_metrics(self):
        return {"fine": "some.module:Fine"}


def test_a_broken_registration_hook_skips_that_family_only():
    pm = PluginManager()
    pm.register(BrokenRegistrations(), name="half", provider="dist-half 2.0")
    pm.register(ExtraPrior(), name="extra")
    assert set(pm.registry("priors")) == {"extra"}
    assert pm.registry("backbones") == pm.registry("losses") == pm.registry("datasets") == {}
    assert set(pm.registry("metrics")) == {"fine"}
    who = 'plugin "half" (dist-half 2.0): '
    mapping = 'not a mapping of name to class or "module:Class" string'
    assert pm.load_errors == {
        "half harness_priors": who + "harness_priors raised RuntimeError: boom; second line; "
                               "its priors are skipped",
        "half harness_backbones": who + f"harness_backbones returned a list, {mapping}; "
                                  "its backbones are skipped",
        "half harness_losses": who + f"harness_losses returned 'bad': 3, {mapping}; "
                               "its losses are skipped",
        "half harness_datasets": who + "harness_datasets returned 'lazy': 'no_colon_here', "
                                 f"{mapping}; its datasets are skipped",
    }
    with pytest.raises(PluginError, match="unknown loss 'ok'"):
        pm.get("losses", "ok")
    pm.unregister("half")
    assert pm.load_errors == {}


class Recorder:
    """A lifecycle plugin that records its calls, and raises if told to."""

    def __init__(self, name, calls, fail=False):
        self.name, self.calls, self.fail = name, calls, fail

    @hookimpl
    def harness_step_end(self, run, step, losses):
        self.calls.append(self.name)
        if self.fail:
            raise ValueError(f"bad step {step}\nsecond line")


class First(Recorder):
    @hookimpl(tryfirst=True)
    def harness_step_end(self, step):
        self.calls.append(self.name)


class Last(Recorder):
    @hookimpl(trylast=True)
    def harness_step_end(self, run):
        self.calls.append(self.name)


def test_notify_calls_in_pluggys_order():
    pm = PluginManager()
    calls: list[str] = []
    for name, cls in [("a", Recorder), ("last", Last), ("b", Recorder), ("first", First),
                      ("c", Recorder)]:
        pm.register(cls(name, calls), name=name)
    pm.hook.harness_step_end(run=None, step=1, losses={})
    by_pluggy, calls[:] = list(calls), []
    pm.notify("harness_step_end", run=None, step=1, losses={})
    assert calls == by_pluggy == ["first", "c", "b", "a", "last"]
    pm.notify("harness_run_finished", run=None, metrics={})  # no implementation: nothing


def test_a_failing_lifecycle_hook_names_its_plugin_and_keeps_the_cause():
    pm = PluginManager()
    calls: list[str] = []
    pm.register(Recorder("a", calls), name="a")
    pm.register(Recorder("bad", calls, fail=True), name="bad", provider="dist-bad 1.0")
    with pytest.raises(LifecycleHookError) as info:
        pm.notify("harness_step_end", run=None, step=7, losses={})
    assert str(info.value) == (
        'plugin "bad" (dist-bad 1.0) failed in harness_step_end: ValueError: bad step 7; '
        "second line"
    )
    assert isinstance(info.value.__cause__, ValueError)
    assert calls == ["bad"]  # the last registered runs first; the rest are not called


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


def test_every_hook_is_documented():  # and in the plugin guide: tests/test_docs.py
    names = [n for n in dir(hookspecs) if n.startswith("harness_")]
    assert {"harness_priors", "harness_executors", "harness_run_finished"} <= set(names)
    for name in names:
        assert getattr(hookspecs, name).__doc__, name


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
    assert "--prior-opt learned=<bool> (default false)" in verbose
    # every shown default is a value the CLI accepts, choices are spelled out
    assert "--cond-opt net=<cnn|resnet18> (default cnn)" in verbose
    assert "--cond-opt width=<int|null> (default null)" in verbose
    assert "policy=<color|translation|cutout,...> (default color,translation,cutout)" \
        in verbose


OPTION_LINE = re.compile(r"      (?P<flag>--[a-z]+-opt) (?P<key>\S+?)=<(?P<type>.+?)> "
                         r"\((?:default (?P<default>.*?)|required)\)(?:  .*)?")


def test_every_option_form_plugins_verbose_prints_parses_back_to_its_default(cli, pm):
    """Each ``--X-opt KEY=<type> (default V)`` line, with V as the value, goes through the
    real parser (``harness run``, or ``harness suite`` for executors) to the option V."""
    from harness.cli import build_parser, flag_values
    from harness.config import parse_assignments

    parser = build_parser()
    listing = json.loads(cli("plugins", "--json").out)["plugins"]
    expected = sum(len(item["options"]) for items in listing.values() for item in items)
    family = name = None
    checked = 0
    for line in cli("plugins", "--verbose").out.splitlines():
        if re.fullmatch(r"[a-z]+:", line):
            family = line[:-1]
        elif re.match(r"  \S", line):
            name = line.split()[0]
        elif match := OPTION_LINE.fullmatch(line):
            flag, key, value = match["flag"], match["key"], match["default"]
            pair = f"{key}={value}"
            component = flag.removesuffix("-opt")
            if family == "executors":
                args = parser.parse_args(["suite", "x", component, name, flag, pair])
                options = parse_assignments(args.executor_opt, flag)
            elif family == "metrics":
                args = parser.parse_args(["run", "--metrics", name, flag, pair])
                options = flag_values(args, {})["metric_options"][name]
                key = key.removeprefix(f"{name}.")
            else:
                values = flag_values(parser.parse_args(["run", component, name, flag, pair]), {})
                assert values[component[2:]] == name, line
                options = values[f"{component[2:]}_options"]
            assert list(options) == [key], line
            cls = pm.get(family, name).load()
            parsed = validate_options(family, name, cls, options).model_dump(mode="json")[key]
            assert parsed == cls.Options().model_dump(mode="json")[key], line
            checked += 1
    assert checked == expected > 50
    # the metric's name is part of the form: without it the CLI refuses the option
    with pytest.raises(HarnessError, match="--metric-opt expects METRIC.KEY=VALUE"):
        flag_values(parser.parse_args(["run", "--metric-opt", "subset=10"]), {})


class Watcher:
    """Saves a note when a run finishes: a third party's lifecycle plugin."""

    @hookimpl
    def harness_step_end(self, step):
        pass

    @hookimpl
    def harness_run_finished(self, run, metrics):
        pass


def test_plugins_lists_lifecycle_plugins_with_their_hooks(cli, pm):
    pm.register(Watcher(), name="watcher", provider="watcher-dist 2.0")
    try:
        plain, verbose = cli("plugins").out, cli("plugins", "--verbose").out
        listing = json.loads(cli("plugins", "--json").out)["lifecycle"]
    finally:
        pm.unregister("watcher")
    section = plain.split("lifecycle plugins:\n", 1)[1].splitlines()
    assert re.fullmatch(r"  watcher +watcher-dist 2\.0  hooks: step_end, run_finished",
                        next(line for line in section if "watcher" in line))
    assert {"jsonl_log", "figures"} <= {line.split()[0] for line in section}
    assert "Saves a note when a run finishes: a third party's lifecycle plugin." in verbose
    watcher = next(p for p in listing if p["name"] == "watcher")
    assert watcher == {"name": "watcher", "provider": "watcher-dist 2.0",
                       "hooks": ["harness_step_end", "harness_run_finished"],
                       "help": "Saves a note when a run finishes: a third party's lifecycle "
                               "plugin."}


class WrongClasses:
    @hookimpl
    def harness_priors(self):
        return {"good": Prior, "loss_as_prior": Loss}

    @hookimpl
    def harness_losses(self):
        return {"lazy_prior_as_loss": "harness.api:Prior", "lazy_function": "json:dumps"}


def test_a_component_of_the_wrong_class_is_refused_naming_the_plugin_and_base(cli, pm, tmp_path):
    pm.register(WrongClasses(), name="wrong", provider="dist-wrong 1.0")
    try:
        # an eager class is checked when the registries are collected: that family is skipped
        assert pm.load_errors["wrong harness_priors"] == (
            'plugin "wrong" (dist-wrong 1.0): harness_priors returned \'loss_as_prior\': class '
            "harness.api.Loss is not a subclass of harness.api.Prior; its priors are skipped")
        assert "good" not in pm.registry("priors")
        listed = cli("plugins")
        assert listed.code == 0
        assert ('warning: plugin "wrong" (dist-wrong 1.0): harness_priors returned '
                "'loss_as_prior'") in listed.err
        # a lazy one when it is loaded: --verbose lists the reason, a run is refused in one line
        verbose = cli("plugins", "--verbose")
        assert verbose.code == 0
        assert ('      unusable: loss "lazy_prior_as_loss" from wrong (dist-wrong 1.0) '
                "(harness.api:Prior) is unusable: class harness.api.Prior is not a subclass of "
                "harness.api.Loss") in verbose.out.splitlines()
        assert ("(json:dumps) is unusable: a function is not a subclass of harness.api.Loss"
                in verbose.out)
        run = cli("run", "--loss", "lazy_prior_as_loss", "--out", tmp_path)
        assert run.code == 2 and not any(tmp_path.iterdir())
        (error,) = [line for line in run.err.splitlines() if line.startswith("error:")]
        assert error.endswith("is not a subclass of harness.api.Loss")
    finally:
        pm.unregister("wrong")


def test_every_family_has_a_base_class_named_in_its_hookspec():
    assert set(BASES) == set(hookspecs.FAMILIES)
    for family, base in BASES.items():
        doc = " ".join(getattr(hookspecs, f"harness_{family}").__doc__.split())
        assert f"``{base.replace(':', '.')}``" in doc, family


FAST_RING = ["--steps", "5", "--eval-samples", "200", "--no-progress", "--dataset-opt",
             "size=500", "--cond", "none"]


class InstanceSupports:
    """A metric whose ``supports`` is an instance method: the harness calls it on the class."""

    @hookimpl
    def harness_metrics(self):
        from harness.api import Metric

        class MeanRadius(Metric):
            def supports(self, spec):  # should be a @classmethod
                return True

            def compute(self, sample, run):
                return {"radius": 1.0}

        return {"mean_radius": MeanRadius}


class RaisingSupports:
    """A lazily registered metric whose ``supports`` raises when a run asks it."""

    @hookimpl
    def harness_metrics(self):
        return {"flaky": "tests.test_plugins:FlakyMetric"}


def flaky_metric() -> type:
    from harness.api import Metric

    class FlakyMetric(Metric):
        @classmethod
        def supports(cls, spec):
            raise RuntimeError("cannot tell")

        def compute(self, sample, run):
            return {}

    return FlakyMetric


def __getattr__(name: str):  # FlakyMetric, built on import of the lazy target only
    if name == "FlakyMetric":
        return flaky_metric()
    raise AttributeError(name)


def test_an_instance_method_where_the_base_has_a_classmethod_is_refused(cli, pm, tmp_path):
    pm.register(InstanceSupports(), name="instance", provider="dist-radius 1.0")
    try:
        assert pm.load_errors["instance harness_metrics"].endswith(
            "defines supports() as an instance method (valid: a @classmethod, as "
            "harness.api.Metric.supports); its metrics are skipped")
        run = cli("run", *FAST_RING, "--out", tmp_path)  # every other run still works
        assert run.code == 0, run.err
    finally:
        pm.unregister("instance")


def test_a_metric_that_breaks_when_asked_is_skipped_unless_named(cli, pm, tmp_path):
    pm.register(RaisingSupports(), name="flaky", provider="dist-flaky 1.0")
    try:
        run = cli("run", *FAST_RING, "--seeds", "0-2", "--out", tmp_path / "a")
        assert run.code == 0, run.err
        assert run.err.count("warning: skipping metric 'flaky' from flaky (dist-flaky 1.0): "
                             "RuntimeError: cannot tell") == 1  # once, not once per seed
        named = cli("run", *FAST_RING, "--metrics", "flaky", "--out", tmp_path / "b")
        assert named.code == 2 and "RuntimeError: cannot tell" in named.err
        assert not (tmp_path / "b").exists()
    finally:
        pm.unregister("flaky")


def test_a_metric_option_without_its_metric_names_the_metrics_that_have_it(cli, tmp_path):
    result = cli("run", *FAST_RING, "--metric-opt", "subset=100", "--out", tmp_path)
    assert result.code == 2 and not any(tmp_path.iterdir())
    (line,) = result.err.strip().splitlines()
    assert line.startswith("error: --metric-opt expects METRIC.KEY=VALUE, got 'subset=100' "
                           "(valid: cluster_agreement.subset=100 or ")


@pytest.mark.parametrize(("text", "parsed"), [("fid", ["fid"]), ("fid, kid", ["fid", "kid"]),
                                              (["is"], ["is"])])
def test_a_list_option_takes_comma_separated_text(pm, text, parsed):
    cls = pm.get("metrics", "fid_digits").load()
    assert validate_options("metric", "fid_digits", cls, {"metrics": text}).metrics == parsed
    with pytest.raises(HarnessError, match=r"metrics.1='bogus': Input should be 'fid', 'kid'"):
        validate_options("metric", "fid_digits", cls, {"metrics": "fid,bogus"})
    net = pm.get("conditioners", "clustering_net").load()  # a pair takes comma text too
    assert validate_options("cond", "clustering_net", net, {"betas": "0.5, 0.999"}).betas == \
        (0.5, 0.999)
