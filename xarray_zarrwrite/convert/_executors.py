"""Where tasks run: in this process, a local process pool, or a dask.distributed cluster."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, Literal, Self

from ..errors import ConvertOptionError
from ._guard import check_main_guard, guard_error, main_script
from ._memory import (
    _Capacity,
    _this_process,
    _total_memory,
)
from ._sources import SourceSchema, SourceSpec, _batches, _is_url, close_run, scan_batch
from ._task import TaskOutcome, TaskPayload, _describe, _noop, _warm, run_task

logger = logging.getLogger(__name__)


_MIB: Final = 1 << 20
ExecutorKind = Literal["threads", "processes", "dask", "serial"]
#: The values of ``convert(executor=...)``.
EXECUTORS: Final = ("threads", "processes", "serial")


class _SerialRunner:
    """Runs tasks one after another in this process (``max_workers=0``; debugging, tests)."""

    kind: ExecutorKind = "serial"

    def __init__(self) -> None:
        self.description = "this process (serial)"

    def capacity(self, memory_limit: int | None) -> _Capacity:
        return _Capacity(1, 1, memory_limit or _total_memory(), _this_process())

    def scan(
        self, specs: Sequence[SourceSpec], args: tuple[Any, ...], progress: bool = False
    ) -> list[SourceSchema]:
        out: list[SourceSchema] = []
        with _bar(len(specs), progress, "scan", "file") as bar:
            for spec in specs:
                out.extend(scan_batch([spec], *args))
                bar.update(1)
        return out

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        out = {}
        with _bar(len(payloads), progress) as bar:
            for p in payloads:
                out[p.task.index] = run_task(p)
                _log_outcome(out[p.task.index])
                bar.update(1)
        return out

    def close(self, run_id: str | None = None) -> None:
        if run_id is not None:
            close_run(run_id)


class _ThreadRunner:
    """Tasks on threads of this process (the default): no pool to start, no pickling, no
    main guard; reading (HDF5, under xarray's lock) and compressing release the GIL.

    Ctrl-C (KeyboardInterrupt) cancels the queued tasks and waits only for the running ones
    (a task is bounded in size), then raises; claimed chunks are recorded, so a re-run
    resumes."""

    kind: ExecutorKind = "threads"

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.description = f"threads of this process, {max_workers} worker thread(s)"
        self._pool = cf.ThreadPoolExecutor(max_workers, thread_name_prefix="xzw-convert")

    def capacity(self, memory_limit: int | None) -> _Capacity:
        # one worker (this process) running up to max_workers tasks at once
        return _Capacity(1, self.max_workers, memory_limit or _total_memory(), _this_process())

    def scan(
        self, specs: Sequence[SourceSpec], args: tuple[Any, ...], progress: bool = False
    ) -> list[SourceSchema]:
        # Sources on this machine are scanned one after another on one thread: every HDF5 or
        # netCDF open takes the process's HDF5 lock and the look-alike scan is a few small
        # reads between Python steps, so a second thread only adds GIL hand-offs (1,461 daily
        # files: 0.27-0.37 s on one thread, 0.35-0.48 s on two). Remote sources wait on the
        # network: those are scanned in batches on every thread.
        remote = [i for i, s in enumerate(specs) if s.path is not None and _is_url(s.path)]
        here = sorted(set(range(len(specs))) - set(remote))
        batches = [[remote[i] for i in b] for b in _batches(len(remote), self.max_workers)]
        with _bar(len(specs), progress, "scan", "file") as bar:

            def one(b: Sequence[int]) -> dict[int, SourceSchema]:
                got: dict[int, SourceSchema] = {}
                for k in range(0, len(b), 4):  # the bar moves every 4 sources
                    part = b[k : k + 4]
                    got.update(zip(part, scan_batch([specs[i] for i in part], *args), strict=True))
                    bar.update(len(part))
                return got

            futures = [self._pool.submit(one, b) for b in [here, *batches] if b]
            try:
                found = {i: schema for f in futures for i, schema in f.result().items()}
                return [found[i] for i in range(len(specs))]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        out: dict[int, TaskOutcome] = {}
        futures = {self._pool.submit(run_task, p): p.task.index for p in payloads}
        with _bar(len(payloads), progress) as bar:
            try:
                for fut in cf.as_completed(futures):
                    out[futures[fut]] = fut.result()
                    _log_outcome(out[futures[fut]])
                    bar.update(1)
            except BaseException as exc:
                cancelled = sum(f.cancel() for f in futures)
                running = sum(not f.done() for f in futures)
                logger.warning(
                    "convert interrupted (%s): cancelled %d queued task(s), waiting for %d "
                    "running one(s); run convert again to resume",
                    type(exc).__name__,
                    cancelled,
                    running,
                )
                self._pool.shutdown(wait=True, cancel_futures=True)
                raise
        return out

    def close(self, run_id: str | None = None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if run_id is not None:
            close_run(run_id)


#: Modules the forkserver imports once, so that forked workers start warm: the library, the
#: NetCDF engines, and what xarray imports lazily on its first open (a third of a second per
#: worker otherwise). Missing ones are skipped.
_PRELOAD: Final = (
    __name__,
    "netCDF4",
    "h5netcdf",
    "cftime",
    "dask",
    "dask.base",
    "dask.delayed",
    "dask.array",
    "psutil",
    "jinja2",
    "xarray.backends.netCDF4_",
    "xarray.backends.h5netcdf_",
    "xarray.backends.zarr",
)
#: With this many sources or fewer, the client scans them itself (milliseconds each) rather
#: than wait for workers.
_SCAN_HERE_MAX: Final = 8


class _ProcessRunner:
    """A local pool of worker processes; survives workers that die (SIGKILL, OOM killer).

    Workers come from a fresh interpreter, never from a fork of this (threaded) process:
    ``"forkserver"`` where available (a clean server process imports the library once and
    forks workers from it, so later pools start in milliseconds), else ``"spawn"``. The pool
    starts in the background while the client scans the sources.
    """

    kind: ExecutorKind = "processes"

    def __init__(
        self, max_workers: int, start_method: str | None = None, warm: SourceSpec | None = None
    ) -> None:
        methods = multiprocessing.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in ("spawn", "forkserver") or start_method not in methods:
            raise ConvertOptionError(
                f"start_method must be 'spawn' or 'forkserver' (available here: {methods}); "
                f"got {start_method!r}. 'fork' is unsafe with zarr's I/O thread"
            )
        check_main_guard()  # before any worker re-runs an unguarded script
        self.max_workers = max_workers
        self.method = start_method
        self.description = f"local process pool, {max_workers} worker(s) ({self.method})"
        self._warm_spec = warm
        self._pool: cf.ProcessPoolExecutor | None = None
        self._started: list[cf.Future[None]] = []
        self._starting = threading.Thread(target=self._start, name="xzw-pool-start", daemon=True)
        self._starting.start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context(self.method)
        if self.method == "forkserver":
            ctx.set_forkserver_preload(list(_PRELOAD))
        pool = cf.ProcessPoolExecutor(
            self.max_workers,
            mp_context=ctx,
            initializer=_warm,
            initargs=(self._warm_spec, list(sys.path)),
        )
        # start every worker now, not on demand
        self._started = [pool.submit(_noop) for _ in range(self.max_workers)]
        self._pool = pool

    def _check_started(self) -> None:
        """After the pool broke: if its workers died while starting (none ever ran a task)
        under a main script, the script most likely re-ran convert in them; say so."""
        if not self._started or main_script() is None:
            return
        if all(f.done() and isinstance(f.exception(), BrokenProcessPool) for f in self._started):
            raise guard_error(main_script(), died=True)

    def capacity(self, memory_limit: int | None) -> _Capacity:
        limit = memory_limit or _total_memory() // self.max_workers
        return _Capacity(self.max_workers, 1, limit)

    def scan(
        self, specs: Sequence[SourceSpec], args: tuple[Any, ...], progress: bool = False
    ) -> list[SourceSchema]:
        """Scan on the workers, which keep the sources open for the tasks; meanwhile the
        client scans batches from the other end of the queue (all of them if the pool is
        still starting)."""
        with _bar(len(specs), progress, "scan", "file") as bar:
            return self._scan(specs, args, bar)

    def _scan(
        self, specs: Sequence[SourceSpec], args: tuple[Any, ...], bar: Any
    ) -> list[SourceSchema]:
        here = (*args[:-1], None)  # the client keeps nothing open
        if len(specs) <= _SCAN_HERE_MAX:
            scanned = scan_batch(specs, *here)
            bar.update(len(specs))
            return scanned
        batches = deque(enumerate(_batches(len(specs), self.max_workers)))
        results: dict[int, list[SourceSchema] | None] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def feed() -> None:
            self._starting.join()
            inflight: dict[cf.Future[list[SourceSchema]], int] = {}
            try:
                while True:
                    with lock:
                        while batches and not errors and len(inflight) < self.max_workers:
                            k, b = batches.popleft()
                            assert self._pool is not None
                            fut = self._pool.submit(scan_batch, [specs[i] for i in b], *args)
                            inflight[fut] = k
                    if not inflight:
                        return
                    done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        k = inflight.pop(fut)
                        try:
                            got = fut.result()
                            results[k] = got
                            bar.update(len(got))
                        except BrokenProcessPool:
                            results[k] = None  # scanned here below
                        except BaseException as exc:  # noqa: BLE001  (raised by scan())
                            errors.append(exc)
            except BrokenProcessPool:
                for k in inflight.values():
                    results[k] = None
            except BaseException as exc:  # noqa: BLE001  (raised by scan())
                errors.append(exc)

        feeder = threading.Thread(target=feed, name="xzw-scan-feed", daemon=True)
        feeder.start()
        try:
            while not errors:
                with lock:
                    if not batches:
                        break
                    k, b = batches.pop()
                results[k] = scan_batch([specs[i] for i in b], *here)
                bar.update(len(b))
        except BaseException as exc:  # noqa: BLE001  (stops the feeder; raised below)
            errors.append(exc)
        feeder.join()
        if errors:
            raise errors[0]
        out: list[SourceSchema] = []
        for k, b in enumerate(_batches(len(specs), self.max_workers)):
            got = results.get(k)
            out.extend(got if got is not None else scan_batch([specs[i] for i in b], *here))
        return out

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        pending = {p.task.index: p for p in payloads}
        out: dict[int, TaskOutcome] = {}
        crashes: Counter[int] = Counter()
        self._starting.join()
        with _bar(len(payloads), progress) as bar:
            while pending:
                if self._pool is None:
                    self._start()
                assert self._pool is not None
                try:
                    futures = {self._pool.submit(run_task, p): i for i, p in pending.items()}
                except BrokenProcessPool:  # broke before (e.g. while scanning): start afresh
                    self._check_started()
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    continue
                broken = False
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    try:
                        out[i] = fut.result()
                        _log_outcome(out[i])
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except Exception as exc:  # noqa: BLE001  (e.g. the payload did not pickle)
                        out[i] = TaskOutcome(
                            index=i,
                            ok=False,
                            error=_describe(exc),
                            error_type=type(exc).__name__,
                            phase="submit",
                        )
                    del pending[i]
                    bar.update(1)
                if broken:
                    self._check_started()
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    for i in list(pending):
                        crashes[i] += 1
                        if crashes[i] > retries:
                            out[i] = TaskOutcome(
                                index=i,
                                ok=False,
                                attempts=crashes[i],
                                error=(
                                    "a worker process died (killed by a signal such as SIGKILL, "
                                    f"or by the out-of-memory killer) {crashes[i]} time(s) "
                                    "before this task finished"
                                ),
                                error_type="WorkerDied",
                                phase="run",
                            )
                            del pending[i]
                            bar.update(1)
                    logger.warning(
                        "a worker process died; restarting the pool for %d task(s)", len(pending)
                    )
        return out

    def close(self, run_id: str | None = None) -> None:
        self._starting.join()
        if self._pool is not None:
            # every outcome is in: let the workers exit on their own
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _DaskRunner:
    """Tasks as futures on a dask.distributed cluster (a Client or a scheduler address)."""

    kind: ExecutorKind = "dask"

    def __init__(self, client: Any) -> None:
        from distributed import Client

        self._own = not isinstance(client, Client)
        # distributed: Client.__init__ is unannotated
        self.client = Client(client) if self._own else client  # type: ignore[no-untyped-call]
        address = getattr(self.client.scheduler, "address", None) or "?"
        self.description = f"dask.distributed at {address}"

    def _workers(self) -> dict[str, dict[str, Any]]:
        info = self.client.scheduler_info(n_workers=-1)
        return dict(info.get("workers", {}))

    def capacity(self, memory_limit: int | None) -> _Capacity:
        workers = self._workers()
        if not workers:
            self.client.wait_for_workers(1, timeout=60)
            workers = self._workers()
        limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
        known = [lim for lim in limits if lim > 0]
        limit = min(known) if known else None
        if memory_limit is not None:
            limit = min(memory_limit, limit) if limit else memory_limit
        threads = min(int(w.get("nthreads") or 1) for w in workers.values())
        scheduler = self.client.scheduler  # None only once the client is closed
        address = scheduler.address if scheduler is not None else "?"
        self.description = f"dask.distributed at {address}, {len(workers)} worker(s)"
        return _Capacity(len(workers), threads, limit)

    def scan(
        self, specs: Sequence[SourceSpec], args: tuple[Any, ...], progress: bool = False
    ) -> list[SourceSchema]:
        """Scan on the workers: the client may not even see the files."""
        if len(specs) <= 1:
            return scan_batch(specs, *args)
        batches = _batches(len(specs), max(1, len(self._workers())))
        futures = self.client.map(
            scan_batch,
            [[specs[i] for i in b] for b in batches],
            *([a] * len(batches) for a in args),
            key="xzw-scan",
            pure=False,
        )
        try:
            results = self.client.gather(futures)
        except BaseException:
            self.client.cancel(futures)
            raise
        return [schema for batch in results for schema in batch]

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        from distributed import as_completed

        if not payloads:
            return {}
        futures = self.client.map(run_task, payloads, key="xzw-convert", pure=False)
        index = {f.key: p.task.index for f, p in zip(futures, payloads, strict=True)}
        out: dict[int, TaskOutcome] = {}
        bar = _bar(len(payloads), progress)  # on stderr: stdout stays the caller's
        try:
            completed = as_completed(  # type: ignore[no-untyped-call]  # distributed: unannotated
                futures, with_results=True, raise_errors=False
            )
            for fut, result in completed:
                i = index[fut.key]
                if isinstance(result, BaseException):
                    out[i] = TaskOutcome(
                        index=i,
                        ok=False,
                        error=_describe(result),
                        error_type=type(result).__name__,
                        phase="run",
                    )
                else:
                    out[i] = result
                _log_outcome(out[i])
                bar.update(1)
        except BaseException:
            self.client.cancel(futures)
            raise
        finally:
            bar.__exit__(None, None, None)
        return out

    def close(self, run_id: str | None = None) -> None:
        if run_id is not None:
            with contextlib.suppress(Exception):
                self.client.run(close_run, run_id)  # workers close the run's sources
        if self._own:
            self.client.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        pass


def _bar(total: int, progress: bool, desc: str = "convert", unit: str = "task") -> Any:
    """A tqdm bar on stderr (shown after half a second; thread-safe updates)."""
    if not progress or not total:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, delay=0.5, file=sys.stderr)


Runner = _SerialRunner | _ThreadRunner | _ProcessRunner | _DaskRunner


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_executor(executor: Any, max_workers: Any, client: Any) -> None:
    """Refuse an unknown ``executor``, a bad ``max_workers``, or one that contradicts ``client``."""
    if executor is not None and executor not in EXECUTORS:
        raise ConvertOptionError(
            f"executor must be one of {list(EXECUTORS)} (or pass client= for dask), "
            f"got {executor!r}"
        )
    if client is not None and executor not in (None, "dask"):
        raise ConvertOptionError(
            f"executor={executor!r} and client= contradict each other: tasks run on the dask "
            "cluster of client=; leave executor out"
        )
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 0
    ):
        raise ConvertOptionError(f"max_workers must be a non-negative integer, got {max_workers!r}")


def _make_runner(
    client: Any,
    max_workers: int | None,
    start_method: str | None = None,
    warm: SourceSpec | None = None,
    executor: str | None = None,
) -> Runner:
    """The runner of ``executor`` (default: threads; ``max_workers=0``: serial)."""
    check_executor(executor, max_workers, client)
    if client is not None:
        return _DaskRunner(client)
    if executor == "serial" or max_workers == 0:
        return _SerialRunner()
    if executor == "processes" or (executor is None and start_method is not None):
        return _ProcessRunner(max_workers or min(2, _cpus()), start_method, warm)
    return _ThreadRunner(max_workers or _cpus())


def _log_outcome(o: TaskOutcome) -> None:
    logger.debug(
        "task %d on %s: started at %.3f, %s in %.3f s (read %.3f s), %d attempt(s)",
        o.index,
        o.worker,
        o.started % 1000,
        "ok" if o.ok else o.error,
        o.seconds,
        o.read_seconds,
        o.attempts,
    )
