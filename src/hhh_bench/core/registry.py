"""One small registry type for every "name -> thing" table of the project.

Merge methods, RESM's strategies, mixing strategies, data sources and evaluation suites each
register under a stable name (it appears in configs, W&B tables and sweeps). A registry also
loads the installed packages that advertise entries under its entry-point group (``pip install``
a package declaring ``[project.entry-points."hhh_bench.merge_methods"]`` and its methods appear,
see docs/extending.md), once, on the first lookup.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """A name -> ``T`` table with clear errors.

    Args:
        kind: what an entry is, for messages ("merge method", "mixing strategy", ...).
        entry_point_group: an entry-point group whose modules are imported on first lookup
            (importing them registers their entries); None: no plugins by entry point.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a name already taken raises ``ValueError``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests and interactive sessions)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name raises ``ValueError`` listing the known ones."""
        self._load_plugins()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; known: {self.names()}") from None

    def names(self) -> list[str]:
        """Sorted names."""
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def snapshot(self) -> dict[str, T]:
        """A copy of the table (restore it with :meth:`restore`; tests use the pair)."""
        return dict(self._items)

    def restore(self, items: dict[str, T]) -> None:
        self._items = dict(items)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group or ""):
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - a broken plugin is named, never skipped silently
                raise ValueError(
                    f"the {self.kind} plugin {ep.name!r} ({ep.value}, entry point group "
                    f"{self.group!r}) failed to import: {type(e).__name__}: {e}"
                ) from e
