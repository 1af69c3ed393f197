"""The main-guard trap of process pools: workers started by ``spawn``/``forkserver`` re-run the
script that started them, and a script without an ``if __name__ == "__main__":`` guard runs
its ``convert`` again in every worker."""

from __future__ import annotations

import ast
import functools
import multiprocessing
import os
import sys

from ..errors import MainGuardError


def bootstrapping() -> bool:
    """Whether this process is a pool worker still importing its parent's main script."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def main_script() -> str | None:
    """The file the main module was started from (None: interactive, ``-c``, a notebook)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py") or not os.path.isfile(path):
        return None
    return path


@functools.cache
def _has_guard(path: str, mtime: float) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return True  # cannot tell: do not refuse
    return any(_is_guard(node.test) for node in ast.walk(tree) if isinstance(node, ast.If))


def _is_guard(test: ast.expr) -> bool:
    if isinstance(test, ast.BoolOp):
        return any(_is_guard(v) for v in test.values)
    if not isinstance(test, ast.Compare) or len(test.comparators) != 1:
        return False
    sides = [test.left, test.comparators[0]]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and consts == {"__main__"}


def unguarded_script() -> str | None:
    """The main script's path if it has no ``if __name__ == "__main__":`` guard, else None."""
    path = main_script()
    if path is None:
        return None
    return None if _has_guard(path, os.path.getmtime(path)) else path


def guard_error(path: str | None, *, died: bool = False) -> MainGuardError:
    """The error that says what to add to the script at ``path``."""
    where = f"the script {path!r}" if path else "the main script"
    lead = (
        "the worker processes of executor='processes' died while starting; the usual cause is "
        f"that {where} runs convert when it is imported: "
        if died
        else f'{where} has no `if __name__ == "__main__":` guard: '
    )
    return MainGuardError(
        lead + "worker processes (spawn/forkserver) import the main script again, so each would "
        "run convert again. Put the script's work under\n\n"
        '    if __name__ == "__main__":\n'
        "        convert(...)\n\n"
        "or use executor='threads' (the default), which starts no processes"
    )


def check_main_guard() -> None:
    """Refuse a process pool the main script would break (raises :class:`MainGuardError`).

    In a worker re-running the script, refuses at once (the parent reports it as well)."""
    if bootstrapping():
        raise guard_error(main_script())
    path = unguarded_script()
    if path is not None:
        raise guard_error(path)
