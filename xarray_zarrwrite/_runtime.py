"""Process state in one object, reset in a forked child.

Everything a process keeps between calls lives here: the template cache (:mod:`._open`), the
in-flight limits of chunk writes, the thread pools and host buffer pools of the pipeline
(:mod:`._staging`), the shared non-blocking writers of ``write_region(..., blocking=False)``
and the StreamWriters to flush at interpreter exit (:mod:`._stream`).

A child made by ``fork`` inherits a copy of the parent's memory but none of its threads: a lock
held by a parent thread stays held forever, a thread pool has no threads left, and a writer's
pending writes will never complete. :func:`os.register_at_fork` replaces the whole state with a
fresh one in the child, so the child starts like a new process (the parent's objects are left
alone: the child never touches their locks). The exit hook itself is inherited as registered.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["Runtime", "runtime"]

T = TypeVar("T")


class Runtime:
    """The process-wide state of the library (one instance: :data:`runtime`)."""

    def __init__(self) -> None:
        self.exit_hook_registered = False
        self.reset()

    def reset(self) -> None:
        """Forget everything: fresh locks, caches, pools and registries (e.g. after fork)."""
        self.pid = os.getpid()
        #: guards every mapping below
        self.lock = threading.Lock()
        #: store key -> (root document, unbound TemplateInfo, array metadata); see _open.py
        self.templates: dict[str, tuple[Any, ...]] = {}
        #: (store name, options...) -> the StreamWriter serving non-blocking write_region calls
        self.writers: dict[tuple[Any, ...], Any] = {}
        #: StreamWriters not closed yet: flushed (with a warning) at interpreter exit
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()
        #: id(event loop) -> (size, semaphore): the in-flight limit of chunk writes per loop
        self.limits: dict[int, tuple[int, asyncio.Semaphore]] = {}
        #: lazily created singletons (thread pools, host pools, CUDA streams), by name
        self.slots: dict[str, Any] = {}

    def slot(self, name: str, factory: Callable[[], T]) -> T:
        """The process's ``name`` object, created by ``factory`` on first use."""
        with self.lock:
            if name not in self.slots:
                self.slots[name] = factory()
            return cast("T", self.slots[name])

    def peek(self, name: str) -> Any:
        """The ``name`` object if it was created, else ``None`` (creates nothing)."""
        with self.lock:
            return self.slots.get(name)

    def limit(self, concurrency: int) -> asyncio.Semaphore:
        """The in-flight limit of chunk writes on the running loop, sized ``concurrency``.

        Every write of the process on this loop shares one semaphore. When a call asks for
        another size (``config.set(concurrency=...)`` changed), a new semaphore of that size
        serves the calls from then on; writes holding the old one finish under it.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        key = id(asyncio.get_running_loop())
        with self.lock:
            held = self.limits.get(key)
            if held is None or held[0] != concurrency:
                held = self.limits[key] = (concurrency, asyncio.Semaphore(concurrency))
            return held[1]

    def forked(self) -> bool:
        """True in a child forked since :meth:`reset` (before the at-fork hook ran)."""
        return os.getpid() != self.pid


runtime = Runtime()

if hasattr(os, "register_at_fork"):  # pragma: no branch  (every POSIX Python we support)
    os.register_at_fork(after_in_child=runtime.reset)
