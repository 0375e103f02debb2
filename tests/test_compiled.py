"""The engine compiled by mypyc and its Python sources: chosen safely, and they agree."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netsim import transfer
from toucli.stack import ENGINE
from toucli.stack.compiled import MODULES, PURE_ENV, _why_not, remove_build, write_manifest
from toucli.stack.config import ConnectionConfig

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _fake_build(tmp_path: Path) -> Path:
    """A directory laid out like an in-place build: every source, an extension beside it."""
    for name in MODULES:
        src = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"# {name}\n")
        src.with_name(src.stem + SUFFIX).write_bytes(b"")
    write_manifest(tmp_path)
    return tmp_path


def test_a_complete_build_of_the_current_sources_is_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    assert _why_not(_fake_build(tmp_path)) is None


def test_an_edited_source_sends_every_module_back_to_python(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    d = _fake_build(tmp_path)
    (d / "cc" / "bbr.py").write_text("# edited\n")
    assert "sources changed since the build (cc.bbr)" in _why_not(d)


def test_a_missing_extension_or_manifest_is_not_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    d = _fake_build(tmp_path)
    (d / f"rtt{SUFFIX}").unlink()
    assert _why_not(d) == "compiled build incomplete (no rtt)"
    remove_build(d)
    assert _why_not(d) == "not compiled"
    assert not list(d.rglob(f"*{SUFFIX}")) and (d / "rtt.py").exists()


def test_the_environment_forces_python(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(PURE_ENV, "1")
    assert _why_not(_fake_build(tmp_path)) == f"{PURE_ENV}=1"
    out = subprocess.run([sys.executable, "-c", "import toucli.stack as s, toucli.stack.connection as c;"
                          "print(s.ENGINE); print(c.__file__)"],
                         cwd=ROOT, env={**os.environ, PURE_ENV: "1"}, capture_output=True, text=True, check=True)
    engine, path = out.stdout.splitlines()
    assert engine == f"Python ({PURE_ENV}=1)" and path.endswith("connection.py")


# The same seeded lossy runs on both engines: every counter, both links and the virtual
# time must be equal (floats too: C doubles and Python floats are the same IEEE numbers).
RUNS = {"bbr": ConnectionConfig(congestion_control="bbr"),
        "cubic": ConnectionConfig(congestion_control="cubic"),
        "newreno-nots": ConnectionConfig(congestion_control="newreno", timestamps=False)}
LINK = dict(delay=0.01, jitter=0.002, rate_bps=20e6, queue_bytes=60_000, loss=0.02, duplicate=0.005)


def _fingerprint(name: str, seed: int) -> str:
    r = transfer(LINK, 300_000, 100_000, seed=seed, config=RUNS[name])
    assert r.ab_ok and r.ba_ok and r.clean_close, r.describe()
    rx = hashlib.sha256(bytes(r.b.rx) + bytes(r.a.rx)).hexdigest()
    return json.dumps([r.now, r.link_ab, r.link_ba, r.a.stats, r.b.stats, rx], sort_keys=True, default=repr)


@pytest.mark.skipif(not ENGINE.startswith("compiled"), reason=f"the engine is not compiled: {ENGINE}")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_compiled_and_python_engines_agree(name: str) -> None:
    code = ("import sys; sys.path.insert(0, 'tests'); import test_compiled as t; "
            f"print(t._fingerprint({name!r}, 5))")
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, PURE_ENV: "1"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout) == json.loads(_fingerprint(name, 5))


def test_the_engine_type_checks() -> None:
    """mypyc compiles only code that mypy accepts; a type error would quietly leave the
    install on the slower Python engine, so it fails here instead."""
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    res = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "toucli/stack"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
