"""Suite-wide pytest settings, and the ``procs`` fixture of the tests that run tou as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from toucli.stack import ENGINE
from toucli.stack.compiled import PURE_ENV

ROOT = Path(__file__).resolve().parent.parent

# Property tests are judged on their results, not their speed: a loaded CI machine
# must not turn a slow example into a failure (timing goes in bench/).
settings.register_profile("tou", deadline=None)
settings.load_profile("tou")


@pytest.fixture
def procs():
    """Processes a test started; any still running at the end are killed (by PID)."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test marked ``python_engine`` replaces engine methods, which compiled classes do
    not allow: with the compiled engine loaded it runs in a child pytest on the Python one."""
    if pyfuncitem.get_closest_marker("python_engine") is None or not ENGINE.startswith("compiled"):
        return None
    env = {**os.environ, PURE_ENV: "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"on the Python engine:\n{res.stdout[-4000:]}{res.stderr[-2000:]}", pytrace=False)
    return True
