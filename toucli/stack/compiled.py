"""Which engine runs: the mypyc-compiled modules, or the Python sources beside them.

``setup.py`` compiles :data:`MODULES` with mypyc when it can and records, in
:data:`MANIFEST`, the SHA-256 of each source it compiled. Python imports an
extension module before a source file of the same name, so a build left behind by
an older source would run silently in place of the code next to it. :func:`select`
therefore uses the compiled modules only when every one of them is present and was
built from the sources as they are now; otherwise, or with ``TOU_PURE_PYTHON=1``, it
installs an import finder that loads all of them from source. All or none: the
compiled modules call each other's native code directly, so they cannot be mixed.

This module must stay importable on its own (``setup.py`` loads it before anything is
built), so it imports nothing from tou.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

PACKAGE = "toucli.stack"
# The per-segment code: everything an established connection runs for each segment. Not
# segment.py: compiling it gains nothing measurable, and tests build expected segments
# holding a match-anything value in typed fields.
MODULES = ("connection", "endpoint", "seq", "streambuf", "tcp", "rangeset", "scoreboard", "rtt", "rack",
           "rate", "pacer", "prr", "cc.base", "cc.newreno", "cc.cubic", "cc.hystart", "cc.bbr")
MANIFEST = "compiled.sha256"
PURE_ENV = "TOU_PURE_PYTHON"
HERE = Path(__file__).parent


def _source(directory: Path, name: str) -> Path:
    return directory.joinpath(*name.split(".")).with_suffix(".py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the sources mypyc just translated (``setup.py``)."""
    lines = [f"{_digest(_source(directory, name))}  {name}\n" for name in MODULES]
    (directory / MANIFEST).write_text("".join(lines))


def remove_build(directory: Path) -> None:
    """Delete the manifest and every extension module built in place earlier (``setup.py``),
    those of modules no longer compiled too: an extension beside its source always wins."""
    (directory / MANIFEST).unlink(missing_ok=True)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in directory.rglob(f"*{suffix}"):
            path.unlink()


def _extension(directory: Path, name: str) -> Path | None:
    base = _source(directory, name).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def _why_not(directory: Path) -> str | None:
    """None when the compiled modules may run; else the reason they may not."""
    if os.environ.get(PURE_ENV) == "1":
        return f"{PURE_ENV}=1"
    missing = [name for name in MODULES if _extension(directory, name) is None]
    if len(missing) == len(MODULES):
        return "not compiled"
    if missing:
        return f"compiled build incomplete (no {', '.join(missing)})"
    try:
        recorded = dict(line.split()[::-1] for line in (directory / MANIFEST).read_text().splitlines())
    except (OSError, ValueError):
        return "compiled build has no manifest"
    changed = [name for name in MODULES if recorded.get(name) != _digest(_source(directory, name))]
    if changed:
        return f"sources changed since the build ({', '.join(changed)}); reinstall to compile them"
    return None


class _SourceFinder:
    """Loads the engine's modules from their ``.py`` files, passing over extensions (a
    meta path finder: ``find_spec`` is all the import system asks of one; not derived
    from ``importlib.abc.MetaPathFinder``, whose import costs every command 9 ms)."""

    def __init__(self, directory: Path) -> None:
        self.paths = {f"{PACKAGE}.{name}": _source(directory, name) for name in MODULES}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.paths.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def select(directory: Path = HERE) -> str:
    """Choose the implementation before any engine module is imported; describe it."""
    reason = _why_not(directory)
    if reason is None:
        return "compiled (mypyc)"
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(directory))
    return f"Python ({reason})"
