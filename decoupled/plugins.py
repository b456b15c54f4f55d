"""Registries that installed packages extend through Python entry points.

An agent or env backend lives in a registry under its name. Built-ins register themselves when their registry's
module loads; a third-party package adds its own by declaring an entry point in its `pyproject.toml`:

    [project.entry-points."decoupled.agents"]
    my_agent = "my_package.agent:AGENT"          # an AgentDef

    [project.entry-points."decoupled.envs"]
    corridor = "my_package.env:BACKEND"           # an EnvBackend

Entry points are read when a name is first looked up that is not registered yet, or when every name is asked
for; loading one that fails (an import error in the plug-in, an object of the wrong kind) raises a `PluginError`
naming the package and the entry point, so that a broken plug-in is never mistaken for a missing one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class PluginError(RuntimeError):
    """An entry point that does not load into what its group needs."""


class EntryPointRegistry(Generic[T]):
    """Name -> object, filled by `register` and, lazily, by the entry points of one group."""

    def __init__(self, group: str, kind: type | Callable[[], type], what: str):
        """`kind`: the class every item must be, or a function returning it (imported when first needed)."""
        self.group, self._kind, self.what = group, kind, what
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    @property
    def kind(self) -> type:
        if not isinstance(self._kind, type):
            self._kind = self._kind()
        return self._kind

    def register(self, name: str, item: T, *, replace: bool = False) -> None:
        if not isinstance(item, self.kind):
            raise TypeError(f"a {self.what} must be a {self.kind.__name__}, got {type(item).__name__}")
        with self._lock:
            if name in self._items and not replace and self._items[name] is not item:
                raise ValueError(f"a {self.what} named {name!r} is registered already (pass replace=True to swap it)")
            self._items[name] = item

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def _load(self, ep: EntryPoint) -> T:
        dist = getattr(ep.dist, "name", None) or "an installed package"
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - any failure inside the plug-in is reported as the plug-in's
            raise PluginError(
                f"the {self.what} {ep.name!r} declared by {dist} ({self.group} = {ep.value}) failed to load: "
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(obj, self.kind):
            obj = getattr(obj, "AGENT", None) or getattr(obj, "BACKEND", None) or obj  # a module naming its object
        if not isinstance(obj, self.kind):
            raise PluginError(
                f"the {self.what} {ep.name!r} declared by {dist} ({self.group} = {ep.value}) is a "
                f"{type(obj).__name__}, not a {self.kind.__name__}"
            )
        return obj

    def names(self) -> tuple[str, ...]:
        """Every name, the entry points' included, without loading any plug-in."""
        return tuple(dict.fromkeys([*self._items, *self._entry_points()]))

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        ep = self._entry_points().get(name)
        if ep is None:
            raise KeyError(f"unknown {self.what} {name!r}; available: {', '.join(self.names())}")
        item = self._load(ep)
        self.register(name, item, replace=True)
        return item

    def all(self) -> dict[str, T]:
        return {name: self.get(name) for name in self.names()}
