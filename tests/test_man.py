"""Man pages: they render without groff warnings and document every option tou has."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from toucli import __version__
from toucli.cli import main

MAN_DIR = Path(__file__).resolve().parent.parent / "man"
PAGES = sorted(MAN_DIR.glob("*.1"))
LONG_OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def test_pages_exist() -> None:
    assert MAN_DIR / "tou.1" in PAGES


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (Debian: groff-base)")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_renders_without_warnings(page: Path) -> None:
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""


def _man_text() -> str:
    """All man pages as plain text: roff's escaped hyphens and font changes removed."""
    text = "\n".join(page.read_text() for page in PAGES)
    return re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", text).replace("\\-", "-")


def _long_options() -> set[str]:
    """Every long option that ``tou --help`` and ``tou COMMAND --help`` show."""
    runner = CliRunner()
    invocations = [["--help"]] + [[name, "--help"] for name in main.list_commands(None)]
    options: set[str] = set()
    for args in invocations:
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        options.update(LONG_OPTION.findall(result.output))
    return options


def test_every_long_option_is_documented() -> None:
    options = _long_options()
    assert {"--version", "--help"} <= options
    text = _man_text()
    missing = sorted(o for o in options if not re.search(re.escape(o) + r"(?![\w-])", text))
    assert missing == []


def test_title_line_carries_the_version() -> None:
    title = next(line for line in (MAN_DIR / "tou.1").read_text().splitlines() if line.startswith(".TH "))
    assert f'"tou {__version__}"' in title

