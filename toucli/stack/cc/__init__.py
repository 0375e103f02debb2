"""Congestion controllers, chosen by name (``ConnectionConfig.congestion_control``).

A factory is called as ``factory(mss, now, initial_window)`` and returns a
:class:`CongestionControl`. "newreno" (RFC 5681) and "cubic" (RFC 9438) are
and "bbr" (BBR v1, draft-cardwell-iccrg-bbr-congestion-control-00) are registered here.
"""

from __future__ import annotations

from typing import Callable

from ..errors import LocalError
from .base import INITIAL_SSTHRESH, CongestionControl, rfc6928_initial_window
from .bbr import Bbr
from .cubic import Cubic
from .newreno import NewReno

Factory = Callable[[int, float, "int | None"], CongestionControl]

_registry: dict[str, Factory] = {}


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory`` available as ``name`` (case-insensitive).

    Registering a taken name raises LocalError unless ``replace`` is true.
    """
    key = name.lower()
    if not key:
        raise LocalError("congestion control name must not be empty")
    if key in _registry and not replace:
        raise LocalError(f"congestion control {name!r} is already registered")
    _registry[key] = factory


def names() -> list[str]:
    """Registered controller names, sorted."""
    return sorted(_registry)


def create(name: str, mss: int, now: float, initial_window: int | None = None) -> CongestionControl:
    """A new controller ``name``; LocalError listing the known names if there is none."""
    factory = _registry.get(name.lower())
    if factory is None:
        raise LocalError(
            f"unknown congestion control {name!r}; known: {', '.join(names())}"
        )
    return factory(mss, now, initial_window)


register("newreno", NewReno)
register("cubic", Cubic)
register("bbr", Bbr)

__all__ = [
    "INITIAL_SSTHRESH", "Bbr", "CongestionControl", "Cubic", "NewReno",
    "create", "names", "register", "rfc6928_initial_window",
]
