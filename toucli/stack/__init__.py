"""The TCP engine of tou: sans-I/O (no sockets, no clocks, no global randomness).

The caller feeds segments and the current time in and takes segments, events and
timer deadlines out; secrets such as the ISN key are passed in.
"""

from .compiled import select as _select

ENGINE = _select()   # "compiled (mypyc)" or "Python (why not compiled)"; before any engine import
