"""The registry of named components, filled by the registration hooks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from .components import KIND_LABELS, KINDS, Component

REGISTRATION_HOOKS: dict[str, str] = {
    "register_backends": "backend",
    "register_adapters": "adapter",
    "register_dataset_formats": "dataset_format",
    "register_chat_templates": "chat_template",
    "register_trainers": "trainer",
    "register_reporters": "reporter",
    "register_exporters": "exporter",
}


class RegistryError(Exception):
    """A plugin registered something wrong (a duplicate name, a class of the wrong kind)."""


@dataclass(frozen=True)
class Entry:
    """A registered component and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str
    distribution: str | None = None
    version: str | None = None


class Registry:
    """Components by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, cls: type, plugin: str, distribution: str | None = None, version: str | None = None) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise RegistryError(f"plugin {plugin} registered {cls!r} as a {KIND_LABELS[kind]}, but it is not a subclass of recipetune.{base.__name__}")
        if not cls.name:
            raise RegistryError(f"plugin {plugin} registered {cls.__name__} without a name")
        taken = self._entries[kind].get(cls.name)
        if taken is not None:
            raise RegistryError(
                f"{KIND_LABELS[kind]} {cls.name!r} is registered twice: by plugin {taken.plugin} and by plugin {plugin}"
            )
        self._entries[kind][cls.name] = Entry(kind, cls.name, cls, plugin, distribution, version)

    def get(self, kind: str, name: str) -> Entry | None:
        return self._entries[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def unknown_message(self, kind: str, name: object) -> str:
        names = self.names(kind)
        label = KIND_LABELS[kind]
        msg = f"unknown {label} {name!r}"
        close = difflib.get_close_matches(str(name), names, n=1)
        if close:
            msg += f"; did you mean {close[0]!r}?"
            msg += " installed:"
        else:
            msg += "; installed:"
        msg += f" {', '.join(names) if names else '(none)'}"
        return msg
