"""The subcommands of ``tou``: one click command per module, named in ``NAMES``.

A new command is a module here defining one ``click.Command`` of the module's name;
add that name to ``NAMES`` so :mod:`toucli.cli` registers it. The order is the order
of ``--help``. A command's module is imported when the command is looked up, so
``tou connect`` does not import ``forward`` or ``demo`` (a tenth of a second at
every start); ``COMMANDS`` imports them all.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

NAMES: tuple[str, ...] = ("demo", "listen", "connect", "forward", "stats", "key", "completion")


def load(name: str) -> click.Command:
    """The command ``name`` (one of :data:`NAMES`), its module imported on first use."""
    command = getattr(importlib.import_module(f"toucli.commands.{name}"), name)
    assert isinstance(command, click.Command)
    return command


def __getattr__(attr: str) -> Any:
    if attr == "COMMANDS":
        return [load(name) for name in NAMES]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
