"""``tou key gen|pub|secret``: make and show the credentials of the secure channel.

* ``tou key gen [-o FILE]`` writes a new P-256 private key (PKCS #8 PEM, mode
  0600, never overwriting) and prints its public key;
* ``tou key pub [FILE]`` prints the one-line public key of a private key file
  (``-`` reads standard input);
* ``tou key secret`` prints a random 256-bit shared secret.

The default key file is ``$XDG_CONFIG_HOME/tou/key`` (``~/.config/tou/key``).
See :mod:`toucli.keys` for the formats.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from toucli.keys import KeyFileError, PrivateKey, generate_secret


def default_key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tou" / "key"


@click.group("key")
def key() -> None:
    """Make key pairs and shared secrets for the encrypted channel."""


@key.command("gen")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the private key here (default: ~/.config/tou/key).")
def gen(output: Path | None) -> None:
    """Write a new private key (mode 0600; never overwrites) and print its public key."""
    path = output if output is not None else default_key_path()
    if output is None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = PrivateKey.generate()
    try:
        private.save(path)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"private key written to {path}", err=True)
    click.echo(private.public.text())


@key.command("pub")
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
def pub(file: str | None) -> None:
    """Print the public key of the private key in FILE (default: ~/.config/tou/key; - for stdin)."""
    try:
        if file == "-":
            private = PrivateKey.from_pem(sys.stdin.buffer.read())
        else:
            private = PrivateKey.load(file if file is not None else default_key_path())
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(private.public.text())


@key.command("secret")
def secret() -> None:
    """Print a random 256-bit shared secret (for TOU_SECRET or --secret-file)."""
    click.echo(generate_secret())
