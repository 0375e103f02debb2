"""``python -m toucli``: the same entry point as the ``tou`` command."""

from __future__ import annotations

from toucli.cli import main

if __name__ == "__main__":
    main(prog_name="tou")
