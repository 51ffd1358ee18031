"""The family registry: families register by name, and every unit is built through it."""

from __future__ import annotations

from typing import TypeVar

from pdenas.families._base import PDEUnit

__all__ = ["register_family", "list_families", "get_family", "build_unit"]

_FAMILIES: dict[str, type[PDEUnit]] = {}

T = TypeVar("T", bound=type[PDEUnit])


def register_family(name: str):
    """Class decorator that registers a ``PDEUnit`` subclass under ``name``.

    Raises:
        ValueError: If the name is already registered.
    """

    def decorate(cls: T) -> T:
        if name in _FAMILIES:
            raise ValueError(f"family {name!r} is already registered ({_FAMILIES[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, PDEUnit)):
            raise TypeError(f"family {name!r}: {cls!r} is not a PDEUnit subclass")
        cls.family_name = name
        _FAMILIES[name] = cls
        return cls

    return decorate


def list_families() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> type[PDEUnit]:
    """The unit class registered as ``name``.

    Raises:
        ValueError: Naming the allowed families when ``name`` is unknown.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"family: unknown {name!r}; allowed: {', '.join(list_families())}"
        ) from None


def build_unit(family: str, width: int, depth: int, step_size: float, **options) -> PDEUnit:
    """Builds one PDE unit mapping (N, width, H, W) to (N, width, H, W).

    Args:
        family: A name from ``list_families()``.
        width: Channels.
        depth: Time steps, each with its own weights.
        step_size: The time step h; the weights do not depend on it.
        **options: ``norm`` ("tv", "batch", "none"; None or absent: the family's
            ``default_norm``, "tv" except "batch" for resnet), ``activation`` (a name),
            ``reversible``, ``init`` ("repeat": every step starts from the same weights, as
            Meganet.m; "independent": one draw per step).
    """
    return get_family(family)(width, depth, step_size, **options)
