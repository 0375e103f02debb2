"""Settings precedence: command line, then ``TOU_*`` environment, then the config file, then defaults.

click already ranks the first two: an option declared with ``envvar`` takes
the command line over the environment. :func:`resolve` adds the config file
underneath: every parameter whose value still is its default gets the file's
value instead.

The file is TOML (read with :mod:`tomllib`): ``--config FILE``, else
``$TOU_CONFIG``, else ``$XDG_CONFIG_HOME/tou/config.toml`` (``~/.config`` when
the variable is unset). Only an explicitly named file must exist. Keys are the
long option names (``idle-timeout``; ``idle_timeout`` works too). Top-level
keys apply to every command that has the option; a table per command
(``[listen]``, ``[connect]``...) applies to that command and wins over the top
level. An unknown table or key is an error (exit 2), never ignored.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Iterable

import click
from click.core import ParameterSource

ENV_PREFIX = "TOU_"
CONFIG_ENV = "TOU_CONFIG"
NOT_CONFIGURABLE = frozenset({"config", "help"})


class ConfigError(click.UsageError):
    """A bad config file: exit 2 with a message naming the file and the key."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def env_name(option: str) -> str:
    """``idle-timeout`` -> ``TOU_IDLE_TIMEOUT``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def default_path(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "tou" / "config.toml"


def config_path(explicit: str | None, environ: dict[str, str] | None = None) -> tuple[Path, bool]:
    """The file to read and whether it was named (and so must exist)."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]), True
    return default_path(env), False


def load(path: Path, required: bool) -> dict[str, Any]:
    """Parse the TOML file; ``{}`` when an implicit default file does not exist."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path}: no such file") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None


def _key(name: str) -> str:
    return name.replace("_", "-")


def _options(command: click.Command) -> dict[str, click.Parameter]:
    """Configurable parameters of ``command`` by their file key (``idle-timeout``)."""
    out = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name and p.name not in NOT_CONFIGURABLE:
            out[_key(p.name)] = p
    return out


def validate(data: dict[str, Any], commands: Iterable[click.Command], path: Path) -> None:
    """Reject unknown tables and keys (kcptun ignores them silently; tou does not)."""
    by_name = {c.name: _options(c) for c in commands if c.name}
    every = {k for opts in by_name.values() for k in opts}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in by_name:
                raise ConfigError(f"config file {path}: unknown section [{key}] "
                                  f"(known: {', '.join(sorted('[' + n + ']' for n in by_name))})")
            for sub in value:
                if _key(sub) not in by_name[key]:
                    raise ConfigError(f"config file {path}: unknown key {sub!r} in [{key}]")
        elif _key(key) not in every:
            raise ConfigError(f"config file {path}: unknown key {key!r}")


def resolve(ctx: click.Context, config_option: str | None = None,
            commands: Iterable[click.Command] | None = None) -> dict[str, Any]:
    """The final parameter values of ``ctx`` with the config file filled in under the defaults.

    ``commands`` are the known sections (default: every tou subcommand). Also
    stores the values back into ``ctx.params``. Raises :class:`ConfigError`.
    """
    path, required = config_path(config_option)
    data = load(path, required)
    if not data:
        return dict(ctx.params)
    if commands is None:
        from toucli.commands import COMMANDS as commands   # the set of known sections (imports them all)
    validate(data, commands, path)
    command = ctx.command
    options = _options(command)
    section = data.get(command.name or "", {})
    merged: dict[str, Any] = {_key(k): v for k, v in data.items() if not isinstance(v, dict)}
    merged.update({_key(k): v for k, v in section.items()})
    params = dict(ctx.params)
    for key, value in merged.items():
        param = options.get(key)
        if param is None or param.name is None:
            continue   # a top-level key meant for another command
        source = ctx.get_parameter_source(param.name)
        if source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            continue
        try:
            if param.multiple and not isinstance(value, list):
                value = [value]
            if isinstance(value, bool) and not getattr(param, "is_flag", False) and not param.count:
                raise click.BadParameter("expected a value, not true/false")
            converted = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise ConfigError(f"config file {path}: {key}: {exc.message}") from None
        params[param.name] = converted
    ctx.params.update(params)
    return params
