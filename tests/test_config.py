"""Settings precedence: command line > TOU_* environment > config file > defaults; unknown keys fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from toucli import config
from toucli.commands.connect import DURATION, opt

ROOT = Path(__file__).resolve().parent.parent


@click.command("probe")
@opt("--keepalive", type=DURATION, default=30.0)
@opt("--idle-timeout", type=DURATION)
@opt("-v", "--verbose", count=True)
@opt("--insecure", is_flag=True)
@click.option("--config")
@click.pass_context
def probe(ctx: click.Context, **_: object) -> None:
    values = config.resolve(ctx, ctx.params.get("config"), commands=[probe, other])
    click.echo(f"keepalive={values['keepalive']} idle={values['idle_timeout']} "
               f"verbose={values['verbose']} insecure={values['insecure']}")


@click.command("other")
@opt("--rate", type=float)
def other(rate: float | None) -> None:
    """A second command: its keys are valid at the top level and in [other]."""


def invoke(tmp_path: Path, toml: str | None, args: list[str], env: dict[str, str] | None = None):
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "TOU_CONFIG": ""}
    environ.update(env or {})
    if toml is not None:
        (tmp_path / "tou").mkdir(exist_ok=True)
        (tmp_path / "tou" / "config.toml").write_text(toml)
    old = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)
    try:
        return CliRunner().invoke(probe, args, env=environ)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_defaults_without_a_file(tmp_path) -> None:
    res = invoke(tmp_path, None, [])
    assert res.exit_code == 0, res.output
    assert res.output == "keepalive=30.0 idle=None verbose=0 insecure=False\n"


def test_file_beats_defaults_and_section_beats_top_level(tmp_path) -> None:
    toml = 'keepalive = "1m"\nverbose = 1\n[probe]\nkeepalive = 12\nidle-timeout = "500ms"\ninsecure = true\n'
    res = invoke(tmp_path, toml, [])
    assert res.exit_code == 0, res.output
    assert res.output == "keepalive=12.0 idle=0.5 verbose=1 insecure=True\n"


def test_environment_beats_file(tmp_path) -> None:
    res = invoke(tmp_path, "[probe]\nkeepalive = 12\nidle_timeout = 3\n", [], env={"TOU_KEEPALIVE": "7"})
    assert res.exit_code == 0, res.output
    assert res.output == "keepalive=7.0 idle=3.0 verbose=0 insecure=False\n"


def test_command_line_beats_environment(tmp_path) -> None:
    res = invoke(tmp_path, "[probe]\nkeepalive = 12\n", ["--keepalive", "5s", "-vv"],
                 env={"TOU_KEEPALIVE": "7", "TOU_VERBOSE": "1"})
    assert res.exit_code == 0, res.output
    assert res.output == "keepalive=5.0 idle=None verbose=2 insecure=False\n"


def test_explicit_config_option(tmp_path) -> None:
    f = tmp_path / "elsewhere.toml"
    f.write_text("keepalive = 9\n")
    res = invoke(tmp_path, "keepalive = 1\n", ["--config", str(f)])
    assert res.output == "keepalive=9.0 idle=None verbose=0 insecure=False\n"


def test_top_level_key_of_another_command_is_accepted(tmp_path) -> None:
    res = invoke(tmp_path, "rate = 5.0\n", [])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("toml, needle", [
    ("keepalvie = 3\n", "unknown key 'keepalvie'"),
    ("[probe]\nrate = 3\n", "unknown key 'rate' in [probe]"),
    ("[nosuch]\nx = 1\n", "unknown section [nosuch]"),
    ("keepalive = 'soon'\n", "keepalive"),
    ("keepalive = true\n", "keepalive"),
    ("keepalive = \n", "config.toml"),
])
def test_bad_files_are_usage_errors(tmp_path, toml, needle) -> None:
    res = invoke(tmp_path, toml, [])
    assert res.exit_code == 2
    assert needle in res.output


def test_missing_explicit_file_is_an_error(tmp_path) -> None:
    res = invoke(tmp_path, None, ["--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2
    assert "no such file" in res.output


def test_default_path_follows_xdg() -> None:
    assert config.default_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/tou/config.toml")
    assert config.default_path({"HOME": "/home/u"}) == Path("/home/u/.config/tou/config.toml")
    assert config.env_name("--idle-timeout") == "TOU_IDLE_TIMEOUT"


def test_real_command_rejects_an_unknown_key(tmp_path) -> None:
    """Through the installed command: exit 2 naming the key, before any network activity."""
    f = tmp_path / "c.toml"
    f.write_text("[connect]\nwait = 3\nbogus = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
    res = subprocess.run([sys.executable, "-m", "toucli", "connect", "--config", str(f), "--insecure",
                          "127.0.0.1", "9"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "unknown key 'bogus' in [connect]" in res.stderr


def test_real_command_takes_settings_from_the_file(tmp_path) -> None:
    """insecure = true in [connect] replaces --insecure (the warning shows it took effect)."""
    (tmp_path / "tou").mkdir()
    (tmp_path / "tou" / "config.toml").write_text("[connect]\ninsecure = true\nwait = '0.3s'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    with __import__("socket").socket(2, 2) as hole:
        hole.bind(("127.0.0.1", 0))
        res = subprocess.run([sys.executable, "-m", "toucli", "connect", "127.0.0.1",
                              str(hole.getsockname()[1])], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=30)
    assert res.returncode == 1
    assert "warning: --insecure" in res.stderr
    assert "timed out after 0.3 s" in res.stderr
