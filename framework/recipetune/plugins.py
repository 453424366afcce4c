"""The plugin manager: loads plugins, checks their hooks, fills the registry.

Environment variables:

``RECIPETUNE_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the plugins shipped in the ``recipetune`` distribution itself,
    not third-party entry points.
``RECIPETUNE_DISABLE_PLUGINS=a,b``
    skip the named entry points.
``RECIPETUNE_TRACE=1``
    print every hook call and its result to standard error.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from types import ModuleType

import pluggy

from . import hookspecs
from .registry import REGISTRATION_HOOKS, Registry

ENTRY_POINT_GROUP = "recipetune"
CORE_DISTRIBUTION = "recipetune"


class PluginLoadError(Exception):
    """A plugin failed to import. Never swallowed: a broken plugin is a broken install."""


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: list[str] = field(default_factory=list)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus where each plugin came from and the registry it filled."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None
        if _env_flag("RECIPETUNE_TRACE"):
            self.trace.root.setwriter(lambda text: sys.stderr.write(text if text.endswith("\n") else text + "\n"))
            self.enable_tracing()

    def add_plugin(self, plugin: object, name: str, distribution: str | None = None, version: str | None = None) -> None:
        self.register(plugin, name=name)
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
        self.info[name] = PluginInfo(name, distribution, version, module)
        self._registry = None

    def load_entry_points(self) -> None:
        disabled = {n.strip() for n in os.environ.get("RECIPETUNE_DISABLE_PLUGINS", "").split(",") if n.strip()}
        only_core = _env_flag("RECIPETUNE_DISABLE_PLUGIN_AUTOLOAD")
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else None
            if ep.name in disabled or self.has_plugin(ep.name):
                continue
            if only_core and (dist or "").lower() != CORE_DISTRIBUTION:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin is reported, never ignored
                raise PluginLoadError(
                    f"plugin {ep.name!r} ({ep.value}, from {dist or 'unknown distribution'}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.add_plugin(module, ep.name, dist, ep.dist.version if ep.dist else None)

    @property
    def registry(self) -> Registry:
        """The registry, built on first use by calling every registration hook."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        registry = Registry()
        for hook_name, kind in REGISTRATION_HOOKS.items():
            caller = getattr(self.hook, hook_name)
            # Call each implementation on its own so ``register`` knows which plugin is registering.
            for impl in reversed(caller.get_hookimpls()):
                info = self.info.get(impl.plugin_name)
                register = partial(
                    registry.add, kind,
                    plugin=impl.plugin_name,
                    distribution=info.distribution if info else None,
                    version=info.version if info else None,
                )
                subset = self.subset_hook_caller(hook_name, remove_plugins=[
                    p for p in self.get_plugins() if p is not impl.plugin
                ])
                subset(register=register)
        return registry

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.get_plugin(name)
        return sorted(h.name for h in (self.get_hookcallers(plugin) or []))


def get_plugin_manager(load_entry_points: bool = True, extra_plugins: list[tuple[object, str]] = ()) -> PluginManager:
    """A manager with the core's default stages, the installed plugins and ``extra_plugins``."""
    from . import stages  # the core's own trylast stage implementations

    pm = PluginManager()
    pm.add_plugin(stages, "recipetune.stages", CORE_DISTRIBUTION, _version())
    if load_entry_points:
        pm.load_entry_points()
    for plugin, name in extra_plugins:
        pm.add_plugin(plugin, name)
    pm.check_pending()
    return pm


def _version() -> str:
    from . import __version__

    return __version__
