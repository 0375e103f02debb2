"""The subcommands of ``tou``: one click command per module, listed in ``COMMANDS``.

A new command is a module here defining one ``click.Command``; add it to
``COMMANDS`` so :mod:`toucli.cli` registers it. The order is the order of ``--help``.
"""

from __future__ import annotations

import click

from toucli.commands.completion import completion
from toucli.commands.connect import connect
from toucli.commands.demo import demo
from toucli.commands.forward import forward
from toucli.commands.key import key
from toucli.commands.listen import listen
from toucli.commands.stats import stats

COMMANDS: list[click.Command] = [demo, listen, connect, forward, stats, key, completion]
