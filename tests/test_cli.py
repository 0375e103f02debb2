"""The ``tou`` entry point: version, usage errors, exit statuses, packaging, CI plumbing."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import click
from click.testing import CliRunner

from toucli import __version__
from toucli.cli import EXIT_INTERRUPTED, TouGroup, main
from toucli.commands import NAMES
from toucli.stack import ENGINE

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_0_1_0() -> None:
    assert __version__ == "0.1.0"


def test_version_option() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"tou 0.1.0\nTCP engine: {ENGINE}\n"


def test_python_dash_m_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "toucli", "--version"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"tou 0.1.0\nTCP engine: {ENGINE}\n"


def test_python_dash_m_usage_names_tou() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "toucli", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: tou ")


def test_short_and_long_help_agree() -> None:
    runner = CliRunner()
    short, long = runner.invoke(main, ["-h"]), runner.invoke(main, ["--help"])
    assert short.exit_code == long.exit_code == 0
    assert short.output == long.output
    assert "--version" in long.output


def test_unknown_subcommand_exits_2() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command 'no-such-command'" in result.output


def test_unknown_option_exits_2() -> None:
    result = CliRunner().invoke(main, ["--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.output
    assert "--no-such-option" in result.output


def test_ctrl_c_in_a_subcommand_exits_130() -> None:
    @click.command("interrupted")
    def interrupted() -> None:
        raise KeyboardInterrupt

    group = TouGroup("tou", commands=[interrupted])
    result = CliRunner().invoke(group, ["interrupted"])
    assert result.exit_code == EXIT_INTERRUPTED == 130
    assert "Aborted" not in result.output


def test_console_script_points_at_main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, _, attr = project["scripts"]["tou"].partition(":")
    assert getattr(importlib.import_module(module), attr) is main


def _readme_setup_commands() -> list[str]:
    """The shell lines of the fenced blocks under README's set-up heading."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Set-up on a fresh machine\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md lost its '## Set-up on a fresh machine' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_commands() -> None:
    commands = _readme_setup_commands()
    assert commands[-1] == ".venv/bin/python -m pytest"
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f".ci/run does not run README's {command!r}"
    assert ci_lines[-1] == commands[-1], "the test command must be the last thing .ci/run does"


def test_ci_script_is_executable_and_strict() -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    assert "set -euo pipefail" in script.read_text().splitlines()[:5]


def test_a_subcommand_imports_only_its_own_module() -> None:
    """`tou connect` starts without importing forward or demo (NAMES, loaded on lookup)."""
    probe = ("import sys; from toucli.cli import main\n"
             "try:\n    main(['connect', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('toucli.commands.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    loaded = out.stdout.strip().splitlines()[-1]
    assert "toucli.commands.connect" in loaded
    assert "toucli.commands.forward" not in loaded and "toucli.commands.demo" not in loaded
    assert [c.name for c in main.commands.values()] == [] and main.list_commands(None) == list(NAMES)
