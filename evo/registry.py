"""A small name → object registry that refuses duplicates and lists its names (after torchvision's models/_api.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from evo.errors import UnknownNameError

T = TypeVar("T")


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> UnknownNameError:
    """The error for a `kind` not registered under `name`; it lists the valid names."""
    listed = ", ".join(sorted(valid)) or "(none registered)"
    return UnknownNameError(f"unknown {kind} {name!r}; valid names: {listed}")


class Registry(Generic[T]):
    """Maps names to objects of one kind; an unknown name lists the valid ones in its error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under `name`; a duplicate name raises."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name (a list, a dict) is no name either
            raise unknown_name(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:  # unhashable
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
