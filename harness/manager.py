"""Plugin discovery (entry points), registries per family, and lifecycle-hook dispatch."""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError

ENTRY_POINT_GROUP = "harness.plugins"
ALLOW_ENV = "HARNESS_LOAD_PLUGINS"
"""Comma-separated allow-list of entry-point names to load; an empty string loads none."""
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"
"""Comma-separated entry-point names never to load (the escape hatch for a broken plugin)."""


@dataclass
class ComponentEntry:
    """One registered component: its name, family, provider and (possibly lazy) target."""

    name: str
    family: str
    target: Any
    provider: str

    def load(self) -> type:
        """Return the component class, importing it if it was registered lazily."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            self.target = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            raise PluginError(
                f'Error importing {self.family[:-1]} "{self.name}" from {self.provider} '
                f"({module_name}:{attr}): {type(exc).__name__}: {exc}"
            ) from exc
        return self.target


@dataclass
class PluginManager:
    """Wraps a pluggy manager for project ``harness``; built-ins and third parties alike."""

    pm: pluggy.PluginManager = field(default_factory=lambda: pluggy.PluginManager("harness"))
    load_errors: dict[str, str] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)
    _registries: dict[str, dict[str, ComponentEntry]] | None = None

    def __post_init__(self) -> None:
        self.pm.add_hookspecs(hookspecs)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load_entrypoints(self) -> None:
        """Register every module of the ``harness.plugins`` group; safe to call twice.

        A module that fails to import is recorded in ``load_errors``; the others still load.
        """
        allow = os.environ.get(ALLOW_ENV)
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or (allowed is not None and ep.name not in allowed):
                continue
            if self.pm.has_plugin(ep.name) or ep.name in self.load_errors:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                module = ep.load()
            except Exception as exc:
                self.load_errors[ep.name] = (
                    f'Error importing plugin "{ep.name}" ({ep.value}): {type(exc).__name__}: {exc}'
                )
                continue
            self.register(module, name=ep.name, provider=f"{dist} {version}")

    def register(self, plugin: ModuleType | object, name: str, provider: str | None = None) -> None:
        """Register a plugin object; unknown ``harness_*`` hooks are an error."""
        self.pm.register(plugin, name=name)
        self.providers[name] = provider or name
        self._registries = None
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            del self.providers[name]
            raise PluginError(f'Plugin "{name}": {exc}') from exc

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.providers.pop(name, None)
        self._registries = None

    def registry(self, family: str) -> dict[str, ComponentEntry]:
        """All components of one family, merged over plugins; duplicate names are an error."""
        if self._registries is None:
            self._registries = {fam: self._collect(fam) for fam in hookspecs.FAMILIES}
        return self._registries[family]

    def _collect(self, family: str) -> dict[str, ComponentEntry]:
        caller = getattr(self.pm.hook, f"harness_{family}")
        entries: dict[str, ComponentEntry] = {}
        for impl in caller.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or "?"
            provider = f"{plugin_name} ({self.providers.get(plugin_name, plugin_name)})"
            for name, target in (impl.function() or {}).items():
                if name in entries:
                    raise PluginError(
                        f'{family[:-1]} "{name}" is registered twice: by '
                        f"{entries[name].provider} and by {provider}"
                    )
                entries[name] = ComponentEntry(name, family, target, provider)
        return dict(sorted(entries.items()))

    def get(self, family: str, name: str) -> ComponentEntry:
        """Look a component up by name; an unknown name suggests the closest valid ones."""
        registry = self.registry(family)
        if name in registry:
            return registry[name]
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PluginError(
            f"unknown {family[:-1]} {name!r}.{hint} Available: {', '.join(registry) or 'none'}"
        )


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, with every entry-point plugin loaded."""
    global _default
    if _default is None:
        _default = PluginManager()
        _default.load_entrypoints()
    return _default
