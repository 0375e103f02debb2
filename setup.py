"""Build hook: compile the TCP engine with mypyc, keep everything else as Python.

The engine (``toucli/stack``) is typed Python that mypy checks cleanly. mypyc turns
those modules into C extensions, which run the per-segment work several times faster
than the interpreter (bench/RESULTS.md, 2026-11-28). Nothing else changes: the
sources stay the reference, and ``toucli.stack.compiled`` falls back to them when
the extensions are missing, were built from other sources, or ``TOU_PURE_PYTHON=1``.

A machine without a C compiler still installs: the extensions are optional.
``TOU_PURE_PYTHON=1 pip install .`` skips them on purpose.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).parent / "toucli" / "stack"))
from compiled import MODULES, remove_build, write_manifest  # noqa: E402  (the list lives with its loader)


def ext_modules() -> list:
    if os.environ.get("TOU_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("tou: mypyc is not available; the TCP engine stays pure Python", file=sys.stderr)
        return []
    stack = Path(__file__).parent / "toucli" / "stack"
    paths = [str(Path("toucli", "stack", *name.split(".")).with_suffix(".py")) for name in MODULES]
    remove_build(stack)          # an in-place build left by older sources must not survive a failure
    try:
        exts = mypycify(paths, opt_level="3", group_name="toucli.stack.engine")
    except (Exception, SystemExit) as exc:      # mypyc reports a type error by exiting
        print(f"tou: mypyc failed ({exc}); the TCP engine stays pure Python", file=sys.stderr)
        return []
    write_manifest(stack)
    for ext in exts:
        ext.optional = True          # no compiler, or it fails: install the Python engine
    return exts


setup(ext_modules=ext_modules())
