"""The family registry: families register by name, and every unit is built through it."""

from __future__ import annotations

from pdenas._registry import Registry
from pdenas.families._base import PDEUnit

__all__ = ["register_family", "list_families", "get_family", "build_unit"]

_FAMILIES: Registry[type[PDEUnit]] = Registry("family", PDEUnit, "family_name")

register_family = _FAMILIES.register
"""Class decorator that registers a ``PDEUnit`` subclass under a name (a duplicate name raises
``ValueError``); the class gets ``family_name``."""


def list_families() -> list[str]:
    """The registered family names, sorted."""
    return _FAMILIES.names()


def get_family(name: str) -> type[PDEUnit]:
    """The unit class registered as ``name``.

    Raises:
        ValueError: Naming the allowed families when ``name`` is unknown.
    """
    return _FAMILIES.get(name)


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
            Meganet.m; "independent": one draw per step), ``start`` (one of the family's
            ``starts``: "rest", or "half_step" for second_order).
    """
    return get_family(family)(width, depth, step_size, **options)
