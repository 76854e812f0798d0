"""Plugin discovery (entry points), registries per family, and lifecycle-hook dispatch."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import HarnessError, LifecycleHookError, PluginError, describe, one_line

ENTRY_POINT_GROUP = "harness.plugins"
ALLOW_ENV = "HARNESS_LOAD_PLUGINS"
"""Comma-separated allow-list of entry-point names to load; an empty string loads none."""
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"
"""Comma-separated entry-point names never to load (the escape hatch for a broken plugin)."""

SINGULAR = {"priors": "prior", "conditioners": "conditioner", "backbones": "backbone",
            "datasets": "dataset", "metrics": "metric", "losses": "loss",
            "regularizers": "regularizer", "augmentations": "augmentation",
            "executors": "executor", "loggers": "logger"}
"""One component of each family, for messages."""
HOOK_NAMES = tuple(name for name in vars(hookspecs) if name.startswith("harness_"))
LIFECYCLE_HOOKS = tuple(
    name for name in HOOK_NAMES if name.removeprefix("harness_") not in hookspecs.FAMILIES
)
"""The hooks that observe a run (every ``harness_*`` hook but the registration ones)."""
BASES = {"priors": "harness.api:Prior", "conditioners": "harness.api:Conditioner",
         "backbones": "harness.api:Backbone", "datasets": "harness.api:Dataset",
         "metrics": "harness.api:Metric", "losses": "harness.api:Loss",
         "regularizers": "harness.api:Regularizer", "augmentations": "harness.api:Augmentation",
         "executors": "harness.api:Executor", "loggers": "harness.loggers:Logger"}
"""The base class every component of a family subclasses, as ``module:Class``."""


@dataclass
class ComponentEntry:
    """One registered component: its name, family, provider and (possibly lazy) target."""

    name: str
    family: str
    target: Any
    provider: str

    def load(self) -> type:
        """Return the component class, importing it if it was registered lazily.

        Raises ``PluginError`` (one line naming the component, its plugin and package) if
        the import fails or the target is no subclass of the family's base class."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            raise PluginError(
                f'Error importing {SINGULAR[self.family]} "{self.name}" from {self.provider} '
                f"({module_name}:{attr}): {type(exc).__name__}: {exc}"
            ) from exc
        reason = wrong_class(target, self.family)
        if reason:
            raise PluginError(f'{SINGULAR[self.family]} "{self.name}" from {self.provider} '
                              f"({module_name}:{attr}) is unusable: {reason}")
        self.target = target
        return self.target


@dataclass
class LifecyclePlugin:
    """A registered plugin that implements lifecycle hooks (a logger, the figures)."""

    name: str
    provider: str
    """Its package and version (``gan-harness 0.1.0``), or its name if registered directly."""
    hooks: list[str]
    """The lifecycle hooks it implements, in the order ``harness.hookspecs`` defines them."""
    doc: str | None
    """The plugin module's (or object's class's) docstring."""


@dataclass
class Catalogue:
    """What the registration hooks of all plugins add up to, with what went wrong."""

    registries: dict[str, dict[str, ComponentEntry]]
    conflicts: dict[str, dict[str, str]]
    """family -> name registered by several plugins -> the error naming them."""
    errors: dict[str, str]


@dataclass
class PluginManager:
    """Wraps a pluggy manager for project ``harness``; built-ins and third parties alike.

    A broken plugin never stops the harness: it is skipped (whole, or its contribution to one
    family) and ``load_errors`` says why in one line.
    """

    pm: pluggy.PluginManager = field(default_factory=lambda: pluggy.PluginManager("harness"))
    providers: dict[str, str] = field(default_factory=dict)
    _skipped: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _catalogue: Catalogue | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.pm.add_hookspecs(hookspecs)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    @property
    def load_errors(self) -> dict[str, str]:
        """Every problem with the plugins, one line each naming the plugin and its package.

        Keys: the plugin name (skipped whole), ``"<plugin> <hook>"`` (a registration hook
        that failed, or returned something but a mapping of names to subclasses of the
        family's base class: the plugin's components of that family are skipped) or ``"<family>
        <name>"`` (a name several plugins register: unusable until one goes).
        """
        return {**self._skipped, **self._catalog().errors}

    def load_entrypoints(self) -> None:
        """Register every module of the ``harness.plugins`` group; safe to call twice."""
        allow = os.environ.get(ALLOW_ENV)
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in blocked and (allowed is None or ep.name in allowed):
                self.load_entrypoint(ep)

    def load_entrypoint(self, ep: EntryPoint) -> None:
        """Import and register one entry point; if it is broken, skip it and record why."""
        provider = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "?"
        if ep.name in self._skipped or self.providers.get(ep.name) == provider:
            return
        if self.pm.has_plugin(ep.name):
            self._skipped[ep.name] = (
                f'plugin "{ep.name}" ({provider}) skipped: the name is taken by '
                f"{self.providers.get(ep.name, ep.name)}"
            )
            return
        try:
            module = ep.load()
        except Exception as exc:
            self._skipped[ep.name] = (
                f'plugin "{ep.name}" ({provider}) skipped: error importing {ep.value}: '
                f"{describe(exc)}"
            )
            return
        try:
            self.register(module, name=ep.name, provider=provider)
        except PluginError as exc:
            self._skipped[ep.name] = str(exc)

    def register(self, plugin: ModuleType | object, name: str, provider: str | None = None) -> None:
        """Register a plugin object under ``name``.

        A hook it gets wrong (an unknown ``harness_*`` name, an argument the hook does not
        have, a wrapper) is a ``PluginError`` naming it; nothing of it stays registered.
        """
        who = f'plugin "{name}" ({provider or name})'
        if self.pm.has_plugin(name):
            taken_by = self.providers.get(name, name)
            raise PluginError(f"{who} skipped: the name is taken by {taken_by}")
        if self.pm.is_registered(plugin):
            raise PluginError(f"{who} skipped: already registered as {self.pm.get_name(plugin)}")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            if self.pm.get_plugin(name) is plugin:  # pluggy < 1.7 registers it partly
                self.pm.unregister(name=name)
            raise PluginError(f"{who} skipped: {one_line(str(exc))}") from exc
        problems = self._hook_problems(plugin)
        if problems:
            self.pm.unregister(name=name)
            raise PluginError(f"{who} skipped: {'; '.join(problems)}")
        self.providers[name] = provider or name
        self._catalogue = None

    def _hook_problems(self, plugin: object) -> list[str]:
        """What pluggy lets through but the harness cannot use: unknown hooks, wrappers."""
        problems = []
        for caller in self.pm.get_hookcallers(plugin) or []:
            impls = [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]
            if not caller.has_spec():
                if not all(impl.optionalhook for impl in impls):
                    close = difflib.get_close_matches(caller.name, HOOK_NAMES, n=1, cutoff=0.8)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    problems.append(f"unknown hook {caller.name}{hint}")
            elif any(impl.wrapper or impl.hookwrapper for impl in impls):
                problems.append(f"{caller.name} is a wrapper; harness hooks take plain functions")
        return problems

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.providers.pop(name, None)
        self._catalogue = None

    def registry(self, family: str) -> dict[str, ComponentEntry]:
        """All usable components of one family, merged over plugins, sorted by name.

        A name that several plugins register is left out (``get`` says why).
        """
        return self._catalog().registries[family]

    def option_owners(self, family: str, options: set[str]) -> list[str]:
        """The components of ``family`` whose ``Options`` have every one of ``options``,
        sorted (imports lazy components; a broken one is left out, reported elsewhere)."""
        owners = []
        for name, entry in self.registry(family).items():
            try:
                if options <= set(entry.load().Options.model_fields):
                    owners.append(name)
            except HarnessError:
                continue
        return owners

    def _catalog(self) -> Catalogue:
        if self._catalogue is None:
            self._catalogue = Catalogue({}, {}, {})
            for family in hookspecs.FAMILIES:
                self._collect(family, self._catalogue)
        return self._catalogue

    def _collect(self, family: str, catalogue: Catalogue) -> None:
        hook_name = f"harness_{family}"
        found: dict[str, list[ComponentEntry]] = {}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name
            provider = f"{plugin} ({self.providers.get(plugin, plugin)})"
            try:
                components = contribution(impl.function, family)
            except PluginError as exc:
                catalogue.errors[f"{plugin} {hook_name}"] = (
                    f"{self._who(plugin)}: {hook_name} {exc}; its {family} are skipped"
                )
                continue
            for name, target in components.items():
                found.setdefault(name, []).append(ComponentEntry(name, family, target, provider))
        catalogue.registries[family] = {}
        catalogue.conflicts[family] = {}
        for name, entries in sorted(found.items()):
            if len(entries) == 1:
                catalogue.registries[family][name] = entries[0]
                continue
            times = "twice" if len(entries) == 2 else f"{len(entries)} times"
            by = " and ".join(f"by {entry.provider}" for entry in entries)
            message = (
                f'{SINGULAR[family]} "{name}" is registered {times}: {by}; neither is used '
                "until one is uninstalled or blocked with HARNESS_BLOCK_PLUGINS"
            )
            catalogue.conflicts[family][name] = message
            catalogue.errors[f"{family} {name}"] = message

    def get(self, family: str, name: str) -> ComponentEntry:
        """Look a component up by name; an unknown name suggests the closest valid one."""
        registry = self.registry(family)
        if name in registry:
            return registry[name]
        if name in self._catalog().conflicts[family]:
            raise PluginError(self._catalog().conflicts[family][name])
        same_but_case = [n for n in registry if n.casefold() == name.casefold()]
        close = same_but_case or difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"unknown {SINGULAR[family]} {name!r}.{hint} "
            f"Available: {', '.join(registry) or 'none'}"
        )

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of lifecycle hook ``hook_name``, in pluggy's order.

        One that raises stops the call: ``LifecycleHookError`` names its plugin, package and
        the hook, with the exception as ``__cause__``.
        """
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            args = [kwargs[arg] for arg in impl.argnames]
            try:
                impl.function(*args)
            except Exception as exc:
                raise LifecycleHookError(
                    f"{self._who(impl.plugin_name)} failed in {hook_name}: {describe(exc)}"
                ) from exc

    def lifecycle_plugins(self) -> list[LifecyclePlugin]:
        """Every registered plugin that implements a lifecycle hook, sorted by name."""
        found: dict[str, LifecyclePlugin] = {}
        for hook_name in LIFECYCLE_HOOKS:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                name = impl.plugin_name
                if name not in found:
                    provider = self.providers.get(name, name)
                    found[name] = LifecyclePlugin(name, provider, [], impl.plugin.__doc__)
                found[name].hooks.append(hook_name)
        return [found[name] for name in sorted(found)]

    def _who(self, plugin: str) -> str:
        return f'plugin "{plugin}" ({self.providers.get(plugin, plugin)})'


def base_class(family: str) -> type | None:
    """The base class of ``family``'s components, or None while its module is not imported:
    then no class can subclass it, and checking a component never imports torch."""
    module, _, name = BASES[family].partition(":")
    return getattr(sys.modules.get(module), name, None)


def wrong_class(target: Any, family: str) -> str | None:
    """Why ``target`` cannot be a component of ``family`` (one line), or None if it can."""
    base = base_class(family)
    what = (f"class {target.__module__}.{target.__qualname__}" if isinstance(target, type)
            else article(type(target).__name__))
    if not (isinstance(target, type) and base is not None and issubclass(target, base)):
        return f"{what} is not a subclass of {BASES[family].replace(':', '.')}"
    for name in dir(base):  # the harness calls the base's class methods on the class
        if (isinstance(inspect.getattr_static(base, name, None), classmethod)
                and not isinstance(inspect.getattr_static(target, name, None),
                                   classmethod | staticmethod)):
            return (f"{what} defines {name}() as an instance method (valid: a @classmethod, "
                    f"as {BASES[family].replace(':', '.')}.{name})")
    return None


def contribution(hook: Callable[[], Any], family: str) -> dict[str, Any]:
    """What a registration hook returns, checked; a ``PluginError`` says what is wrong.

    A class must subclass the family's base class (``BASES``); a lazy ``"module:Class"``
    target is checked when it is loaded (``ComponentEntry.load``).
    """
    try:
        result = hook()
    except Exception as exc:
        raise PluginError(f"raised {describe(exc)}") from exc
    expected = 'not a mapping of name to class or "module:Class" string'
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise PluginError(f"returned {article(type(result).__name__)}, {expected}")
    for name, target in result.items():
        module, colon, attr = target.partition(":") if isinstance(target, str) else ("", "", "")
        if not isinstance(name, str) or not (isinstance(target, type) or module and colon and attr):
            raise PluginError(f"returned {name!r}: {target!r}, {expected}")
        reason = wrong_class(target, family) if isinstance(target, type) else None
        if reason:
            raise PluginError(f"returned {name!r}: {reason}")
    return dict(result)


def article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, with every entry-point plugin loaded."""
    global _default
    if _default is None:
        _default = PluginManager()
        _default.load_entrypoints()
    return _default


def metric_option_owners(option: str) -> list[str]:
    """The metrics of the process-wide manager that have an option named ``option`` (the
    hint of ``config.parse_metric_options`` for a ``--metric-opt`` without its metric)."""
    return get_plugin_manager().option_owners("metrics", {option})
