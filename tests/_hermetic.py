"""Keep the suite hermetic: what one test leaves behind must not change another's outcome.

* After every test, a ``gc.collect()``: objects a test dropped are finalised inside that test,
  so an unraisable exception or ``ResourceWarning`` from a finaliser (turned into an error by
  ``filterwarnings = error``) fails the test that caused it, not whichever test the garbage
  collector happened to run in.
* At the end of the session, a leak check fails the run if child processes, non-daemon
  threads or open event loops outlived the tests. Threads that live for the whole process by
  design (zarr's IO loop, our shared worker pools, dask's offload thread, multiprocessing's
  forkserver) are listed in ``PROCESS_LIFETIME_THREADS`` and ``PROCESS_LIFETIME_CHILDREN``.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections.abc import Iterator

import psutil
import pytest

#: Name prefixes of threads that exist once per process, by design.
PROCESS_LIFETIME_THREADS = (
    "MainThread",
    "zarr_io",  # zarr's IO event loop
    "asyncio_",  # idle default executors of long-lived loops (zarr's)
    "xzw-",  # our shared pools (process state, reset after fork)
    "Dask-Offload",  # dask's offload thread
    "ThreadPoolExecutor-",  # idle workers of module-level executors (joined at exit)
    "IO loop",  # tornado/distributed's loop runner kept by dask.distributed
    "Profile",  # distributed's profiler thread
)

#: Helper processes that multiprocessing starts once per process and keeps until exit.
PROCESS_LIFETIME_CHILDREN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@pytest.fixture(autouse=True)
def _collect_garbage_inside_the_test() -> Iterator[None]:
    yield
    gc.collect()


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _open_loops() -> list[asyncio.AbstractEventLoop]:
    running = []
    with warnings.catch_warnings():
        # isinstance() on some third-party lazy objects (torch's deprecated module proxies)
        # warns; this scan is not the code under test
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    for obj in objects:
        if not obj.is_closed():
            owner = getattr(obj, "_thread_id", None)
            if owner is None or not any(t.ident == owner for t in threading.enumerate()):
                running.append(obj)  # open, and not run by any live thread: leaked
    return running


def leaks(baseline_children: set[int]) -> list[str]:
    """What outlived the tests (waiting a little for processes that are exiting)."""
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        problems = []
        for proc in _children():
            if proc.pid in baseline_children:
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if any(helper in cmd for helper in PROCESS_LIFETIME_CHILDREN):
                continue
            cmd = cmd[:200]
            problems.append(f"child process {proc.pid} still running: {cmd}")
        for thread in threading.enumerate():
            if thread.daemon or thread.name.startswith(PROCESS_LIFETIME_THREADS):
                continue
            problems.append(f"non-daemon thread still running: {thread.name!r}")
        problems += [f"event loop left open: {loop!r}" for loop in _open_loops()]
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.2)
