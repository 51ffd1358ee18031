"""``Registry``: classes registered by name, with one lookup path and one error form (what the
family and backend registries are built on, as timm's ``register_model``/``create_model``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pdenas.errors import InputError

__all__ = ["Registry"]

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by name.

    Args:
        kind: What is registered ("family", "backend"): the key errors name.
        base: The class every registered class must subclass.
        attribute: The class attribute that receives the registered name.
    """

    def __init__(self, kind: str, base: type, attribute: str) -> None:
        self.kind, self.base, self.attribute = kind, base, attribute
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that registers a subclass of ``base`` under ``name``.

        Raises:
            ValueError: If another class is already registered under the name.
            TypeError: If the class does not subclass ``base``.
        """

        def decorate(cls: T) -> T:
            held = self._classes.get(name)
            if held is not None and held is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered ({held.__name__})")
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a {self.base.__name__} subclass")
            setattr(cls, self.attribute, name)
            self._classes[name] = cls
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Removes ``name`` (a plugin unloading, a test cleaning up); unknown names are ignored."""
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, name: str, allowed: list[str] | None = None) -> T:
        """The class registered as ``name``.

        Raises:
            ValueError: ``kind: unknown 'name'; allowed: ...`` when it is not registered.
        """
        try:
            return self._classes[name]
        except KeyError:
            names = ", ".join(allowed if allowed is not None else self.names())
            raise InputError(f"{self.kind}: unknown {name!r}; allowed: {names}") from None
