"""The ``tou`` command: a click group whose subcommands come from :mod:`toucli.commands`.

Exit status (see man/tou.1): 0 success, 1 network or peer failure, 2 usage error
(click's own), 3 authentication failure, 130 interrupted.
"""

from __future__ import annotations

import click

from toucli import __version__
from toucli.stack import ENGINE
from toucli.commands import NAMES, load

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention


class TouGroup(click.Group):
    """A click group that exits 130 on Ctrl-C (click alone prints "Aborted!" and exits 1)
    and imports a subcommand's module only when that subcommand is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(NAMES) + [n for n in super().list_commands(ctx) if n not in NAMES]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load(cmd_name) if cmd_name in NAMES else super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            from toucli.tunnel import TunnelError   # not imported by commands that need no tunnel

            if not isinstance(exc, TunnelError):
                raise
            click.echo(f"tou: {exc}", err=True)      # found while setting up, before the tunnel runs
            raise click.exceptions.Exit(exc.exit_code) from None


@click.group(
    "tou",
    cls=TouGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", prog_name="tou", message=f"%(prog)s %(version)s\nTCP engine: {ENGINE}")
def main() -> None:
    """Carry TCP connections inside (optionally DTLS-encrypted) UDP."""
