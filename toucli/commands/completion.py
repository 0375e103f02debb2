"""``tou completion bash|zsh|fish``: print the shell completion script (click's shell completion).

The script calls the installed ``tou`` with ``_TOU_COMPLETE`` set, so it works
wherever ``tou`` is on ``PATH``. Install, e.g. for bash::

    tou completion bash > ~/.local/share/bash-completion/completions/tou
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_TOU_COMPLETE"


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish) on stdout.

    Load it for the current shell with, e.g., eval "$(tou completion bash)".
    """
    root = ctx.find_root()
    cls = get_completion_class(shell)
    if cls is None:   # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion support for {shell}")
    script = cls(root.command, {}, "tou", COMPLETE_VAR).source()
    click.echo(script, nl=not script.endswith("\n"))
