"""The subcommands of ``tou``: one click command per module, listed in ``COMMANDS``.

A new command is a module here defining one ``click.Command``; add it to
``COMMANDS`` so :mod:`toucli.cli` registers it. The order is the order of ``--help``.
"""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
