"""Typed events the engine hands to its caller (the aioquic ``next_event`` style).

Each event names the :class:`~toucli.stack.connection.Connection` it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection


@dataclass(frozen=True, eq=False)
class Event:
    conn: "Connection"


@dataclass(frozen=True, eq=False)
class Connected(Event):
    """The three-way handshake finished (active or passive open)."""


@dataclass(frozen=True, eq=False)
class Readable(Event):
    """New in-order data can be read with ``conn.recv()``."""


@dataclass(frozen=True, eq=False)
class Writable(Event):
    """Send-buffer space opened up after ``conn.send()`` had filled it."""


@dataclass(frozen=True, eq=False)
class PeerClosed(Event):
    """The peer sent FIN: after the data already readable, no more will come."""


@dataclass(frozen=True, eq=False)
class Reset(Event):
    """The peer reset the connection (a valid RST arrived)."""


@dataclass(frozen=True, eq=False)
class Closed(Event):
    """The connection reached CLOSED; the engine forgets it after this event."""


@dataclass(frozen=True, eq=False)
class Error(Event):
    """The connection failed locally, e.g. the user timeout expired (RFC 9293 §3.8.3)."""

    reason: str = ""
