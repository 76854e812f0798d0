"""The README's Quickstart is what CI runs; the docs name real flags."""

import importlib
import inspect
import re
from pathlib import Path

from harness import hookspecs
from harness.cli import build_parser
from harness.config import COMPONENT_FIELDS, load_config_file, make_config
from harness.manager import BASES

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    install_and_run, install_and_test = quickstart_commands()
    assert install_and_run.endswith("harness run")
    assert "pytest" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci


def test_readme_flags_exist():
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {opt for action in run_parser._actions for opt in action.option_strings}
    readme = (ROOT / "README.md").read_text()
    for line in re.findall(r"harness run[^\n`]*", readme):
        for flag in re.findall(r"(--[a-z][a-z-]*)", line):
            assert flag in flags, f"README uses unknown flag {flag}"


def test_configs_validate_with_their_plugins(pm):
    for path in sorted((ROOT / "configs").glob("*.toml")):
        config = make_config(load_config_file(path))
        for field, family in COMPONENT_FIELDS.items():
            cls = pm.get(family, getattr(config, field)).load()
            cls.Options.model_validate(getattr(config, f"{field}_options"))
        for name, options in config.metric_options.items():
            pm.get("metrics", name).load().Options.model_validate(options)
        if path.name.startswith("liu2020-"):  # the official protocols
            assert config.steps == 100_000 and config.eval_samples == 50_000, path


def signature(function, skip_self=False) -> str:
    """``name(a, b, c=None)``: the parameter names (and defaults) a plugin must use."""
    params = list(inspect.signature(function).parameters.values())[1 if skip_self else 0:]
    return ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                     for p in params)


def test_every_hookspec_is_in_the_plugin_guide_with_its_exact_signature():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    names = [name for name in vars(hookspecs) if name.startswith("harness_")]
    assert {"harness_priors", "harness_step_end", "harness_run_finished"} <= set(names)
    for name in names:
        documented = f"`{name}({signature(getattr(hookspecs, name))})`"
        assert documented in guide, f"docs/plugins.md lacks {documented}"


def test_every_component_constructor_is_in_its_row_of_the_plugin_guide():
    rows = {line.split("`")[1]: line for line in
            (ROOT / "docs" / "plugins.md").read_text().splitlines() if line.startswith("| `")}
    for family, base in BASES.items():
        module, _, name = base.partition(":")
        init = getattr(importlib.import_module(module), name).__init__
        row = rows.get(f"harness_{family}()")
        assert row, f"docs/plugins.md has no row | `harness_{family}()` | in its table"
        if init is not object.__init__:  # a base class without a constructor takes no arguments
            assert f"`__init__({signature(init, skip_self=True)})`" in row, family
