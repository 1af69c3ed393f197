"""The futures of non-blocking writes, the in-flight byte budget, and the exit hook.

Split out of :mod:`xarray_zarrwrite._stream` (which re-exports :class:`WriteFuture` and
:class:`UnclosedWriterWarning`): the objects a :class:`~xarray_zarrwrite.StreamWriter` hands
to its caller and shares with chunk assembly, and the process-wide hook that flushes writers
left open at interpreter exit.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._runtime import runtime

if TYPE_CHECKING:
    from ._write import RegionWriteResult

__all__ = ["UnclosedWriterWarning", "WriteFuture"]


class UnclosedWriterWarning(UserWarning):
    """A StreamWriter still had pending writes at interpreter exit; they were flushed."""


class WriteFuture:
    """The two stages of a non-blocking write.

    Attributes
    ----------
    copied : concurrent.futures.Future
        Resolves when the data has been copied into pipeline memory: the caller may now
        overwrite or free its arrays (GPU memory included).
    committed : concurrent.futures.Future
        Resolves with the :class:`~xarray_zarrwrite.RegionWriteResult` once every chunk is
        durable in the store, or with the write's exception. A step that covers only part of
        a write unit (assembled) is durable when its unit is written: when the unit's last
        step arrives, or at ``flush``/``close`` (as a partial unit).
    """

    def __init__(self, region: Mapping[str, slice]) -> None:
        self.region = dict(region)
        self.assembled = False  # held for chunk assembly (durable when its unit is written)
        self._flush: Callable[[], None] | None = None  # writes open units (assembled steps)
        self.copied: cf.Future[None] = cf.Future()
        self.committed: cf.Future[RegionWriteResult] = cf.Future()

    def result(self, timeout: float | None = None) -> RegionWriteResult:
        """Wait until committed; return the result or raise the write's error.

        For a step held for chunk assembly whose unit is still open once every step queued
        before it is assembled, asking for the result asks for durability: the writer's open
        units are written now, as partial units (as :meth:`StreamWriter.flush` does; later
        steps of those units merge with them), rather than waiting for steps that may never
        come. To keep units whole, wait on results only after writing the steps that
        complete them (or use ``fut.copied`` to know the arrays may be reused).
        """
        if self._flush is not None and not self.committed.done():
            self._flush()
        return self.committed.result(timeout)

    def done(self) -> bool:
        """Whether the write is over: committed, or failed."""
        return self.committed.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait up to ``timeout`` seconds for the write; its exception, or ``None`` if committed.

        Unlike :meth:`result`, this does not write open units of assembled steps.
        """
        return self.committed.exception(timeout)

    def __repr__(self) -> str:
        state = (
            "committed"
            if self.committed.done() and not self.committed.exception()
            else "failed"
            if self.committed.done()
            else "copied"
            if self.copied.done()
            else "pending"
        )
        return f"<WriteFuture {state} region={self.region}>"


class _Budget:
    """Bytes in flight; ``acquire`` blocks while full (a single oversized write may pass alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, check: Any) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait(0.05)
                check()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


_CHARGE = 1.5


def _flush_at_exit() -> None:
    for writer in list(runtime.live):
        pending = writer.pending
        if pending:
            warnings.warn(
                f"StreamWriter for {writer.store} was not closed: flushing {pending} pending "
                "write(s) at interpreter exit. Use `with StreamWriter(...)` or call close().",
                UnclosedWriterWarning,
                stacklevel=1,
            )
        try:
            writer.close()
        except Exception as e:  # noqa: BLE001  (at exit nobody is left to raise to)
            import sys

            print(f"xarray_zarrwrite: writes failed at exit: {e!r}", file=sys.stderr)


def _register_exit_hook() -> None:
    # Pending writes need thread pools (ours, zarr's, the loop's default executor), and
    # `concurrent.futures` refuses new work once interpreter shutdown has begun: its own hook
    # runs through `threading._register_atexit`, *before* plain `atexit` handlers. Ours must run
    # earlier still, so it uses the same (private, but long-stable) hook, registered later.
    with runtime.lock:
        if runtime.exit_hook_registered:
            return
        runtime.exit_hook_registered = True  # inherited by a forked child, like the hook
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover
        atexit.register(_flush_at_exit)
    else:
        register(_flush_at_exit)


def _overlaps(a: Mapping[str, slice], b: Mapping[str, slice]) -> bool:
    """True when two regions share at least one element (dims missing from one: all of it)."""
    return all(a[d].start < b[d].stop and b[d].start < a[d].stop for d in a.keys() & b.keys())
