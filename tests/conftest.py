"""Suite-wide pytest settings, and the ``procs`` fixture of the tests that run tou as processes."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import settings

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
