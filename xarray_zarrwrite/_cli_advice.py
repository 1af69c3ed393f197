"""Library messages turned into advice for shell users: commands instead of Python calls.

The library's messages are written for Python callers (``create one first with
ds.fastzarr.to_template(store)``, ``run check()``, ``Timestamp('2000-01-11 00:00:00')``). The
command line prints them through :func:`shell_advice` (called by
:func:`xarray_zarrwrite._cli_util.for_shell`, which then turns the remaining keywords into
flags), so that a shell user reads the command to run and plain values::

    create one first with `xarray-zarrwrite template SOURCE STORE`
    label 2000-01-11 of coordinate 'time' ...
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["COMMANDS", "shell_advice", "source_texts"]

#: Python calls of the library and the command that does the same from a shell.
COMMANDS: Final = {
    "to_template": "`xarray-zarrwrite template SOURCE STORE`",
    "write_region": "`xarray-zarrwrite write-region SOURCE STORE`",
    "convert": "`xarray-zarrwrite convert SOURCE... STORE`",
    "check": "`xarray-zarrwrite check STORE`",
    # growing an archive along time: convert takes sources past its end with --extend
    "extend": "`xarray-zarrwrite convert SOURCE... STORE --extend`",
    "append": "`xarray-zarrwrite convert SOURCE... STORE --extend`",
}

_CALLABLE: Final = "|".join(COMMANDS)
#: ``ds.fastzarr.to_template(store)``, ``xarray_zarrwrite.extend(store, dim='time')``,
#: ``xzw.check("a.zarr")``, ``check()``: a call with simple arguments (no nested parentheses).
_CALL: Final = re.compile(
    rf"(?<![\w.])(?:(?:ds|da|\w+)\.fastzarr\.|(?:xarray_zarrwrite|xzw)\.)?({_CALLABLE})"
    r"\([^()]*\)"
)
#: "use A(...) or B(...)" where both become the same command: said once.
_TWICE: Final = re.compile(r"(`[^`]+`) or \1")

#: Reprs of values, as a shell user would type them.
_VALUES: Final = (
    # Timestamp('2000-01-11 00:00:00') -> 2000-01-11; numpy.datetime64('2000-01-11T06:00')
    (
        re.compile(r"\b(?:pd\.|pandas\.)?Timestamp\('([^']*?)(?: 00:00:00)?'\)"),
        r"\1",
    ),
    (
        re.compile(
            r"\b(?:np\.|numpy\.)?datetime64\('([^']*?)(?:T00:00:00(?:\.0+)?)?'(?:,\s*'\w+')?\)"
        ),
        r"\1",
    ),
    # np.int64(3), np.float64(0.5) -> 3, 0.5
    (re.compile(r"\b(?:np\.|numpy\.)(?:u?int|float)\d+\(([^()]*)\)"), r"\1"),
)

#: Whole phrases whose Python form has no one-to-one flag.
_PHRASES: Final[tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]] = (
    (
        re.compile(r"\bconvert again \(resume=True\)"),
        "run the same `xarray-zarrwrite convert` command again",
    ),
    (re.compile(r"\(resume=True\)"), "(without --no-resume)"),
    (re.compile(r"\bresume=True\b"), "without --no-resume"),
    (re.compile(r"\bmode=['\"]w-['\"]"), "without --overwrite"),
    # an option as the subject of a sentence: "chunks names dimension 'zz'"
    (re.compile(r"(?<![\w-])(chunks|shards|encoding|packing) names\b"), r"--\1 names"),
    (re.compile(r"\bleave variables out\b"), "leave --variables out"),
    # compression= values: the command line takes none and strings, not codec objects
    (re.compile(r"\buse None, 'default', "), "use --compression none, default, "),
    (re.compile(r",? or zarr codec objects\b"), ""),
    # region={'time': slice(5, 35, None)} as typed on the command line
    (
        re.compile(r"\bregion\['(\w+)'\]=slice\((-?\d+|None), (-?\d+|None)(?:, None)?\)"),
        lambda m: "--region {}={}:{}".format(
            m.group(1), *("" if v == "None" else v for v in m.group(2, 3))
        ),
    ),
)


def source_texts(given: Sequence[str]) -> dict[str, str]:
    """How relative paths given on the command line appear in messages, to map back.

    Sources are opened by absolute path (``/home/me/data/t2m_2000-01.nc``); a user who typed
    ``data/t2m_*.nc`` reads ``data/t2m_2000-01.nc``. Only relative local paths are mapped: the
    working directory's prefix is dropped.
    """
    if any("://" not in g and not os.path.isabs(g) for g in given):
        return {os.path.join(os.getcwd(), ""): ""}
    return {}


def shell_advice(message: str) -> str:
    """``message`` with Python calls replaced by commands and value reprs by plain values.

    Parameters
    ----------
    message : str
        A message of the library, written for Python callers.

    Returns
    -------
    str
        The message for a shell user. Keywords (``time_dim=``) are left for
        :func:`xarray_zarrwrite._cli_util.for_shell` to turn into flags.
    """
    for pattern, repl in _PHRASES:
        message = pattern.sub(repl, message)
    message = _CALL.sub(lambda m: COMMANDS[m.group(1)], message)
    message = _TWICE.sub(r"\1", message)
    for pattern, repl in _VALUES:
        message = pattern.sub(repl, message)
    return message
