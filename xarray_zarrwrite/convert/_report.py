"""What :func:`convert` did: the report, per-source status and summary."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._check import label_formatter
from ._memory import _Capacity
from ._plan import Plan
from ._sources import SourceSpec
from ._task import TaskOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._open import TemplateInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceOutcome:
    """What happened to one source.

    Attributes
    ----------
    source
        Path, URL or ``<Dataset #i>``.
    first, last
        Its first and last time label.
    status
        ``"written"``, ``"skipped"`` (its chunks were already written: resume) or
        ``"failed"`` (a task reading it failed). Steps in a chunk the sources cover only in
        part are written too (see ``ConvertReport.partial``).
    nbytes
        Decoded bytes of it written in this run.
    """

    source: str
    first: Any
    last: Any
    status: Literal["written", "skipped", "failed"]
    nbytes: int


@dataclass(frozen=True)
class TaskFailure:
    """A failed task (or a gap no source covers), with its sources and region named.

    Attributes
    ----------
    task
        Task index (-1 for gaps).
    sources
        The sources the task read.
    region
        ``{dim: (first label, last label)}`` of the unwritten region (inclusive).
    index_region
        The same as ``{dim: (start, stop)}`` positions.
    error
        What went wrong.
    error_type
        The exception's class name (``"WorkerDied"`` for crashes, ``"MissingSource"`` for gaps).
    phase
        ``"read"``, ``"write"``, ``"run"`` or ``"plan"``.
    attempts
        How often the task was tried.
    worker
        Where it last ran.
    """

    task: int
    sources: tuple[str, ...]
    region: Mapping[str, tuple[Any, Any]]
    index_region: Mapping[str, tuple[int, int]]
    error: str
    error_type: str
    phase: str
    attempts: int = 1
    worker: str = ""

    def __str__(self) -> str:
        where = ", ".join(f"{d} {a} .. {b}" for d, (a, b) in self.region.items())
        src = ", ".join(self.sources) if self.sources else "no source"
        return f"[{where}] from {src}: {self.error}"


@dataclass(frozen=True)
class WorkerStats:
    """Tasks and measured peak RSS (resident memory) of one worker process."""

    worker: str
    tasks: int
    peak_rss: int
    memory_limit: int | None


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert` did.

    Attributes
    ----------
    store
        The target, as text.
    executor
        Where tasks ran.
    sources
        One :class:`SourceOutcome` per source, in time order.
    ntasks, written, skipped, failed
        Tasks planned; written in this run; skipped because every chunk of them existed
        (resume); failed.
    nchunks, nbytes
        Chunk objects and decoded bytes written in this run.
    seconds
        Wall time of the whole call.
    failures
        Failed tasks, sources and regions named.
    partial
        ``(first, last)`` time labels of the write units the sources of this run cover only in
        part: written whole (merged with what the store held, fill values elsewhere) and listed
        in the archive's ``xarray_zarrwrite:partial`` root attribute until a later run with
        more sources completes them.
    missing
        ``(first, last)`` time labels the archive still lacks after this run (in a partial
        chunk, or in a chunk not written at all): the sources do not cover them.
    workers
        Peak RSS per worker process, and the memory limit it was planned for.
    task_memory_estimate
        Estimated peak memory of the largest task.
    concurrency
        Tasks run at once.
    """

    store: str
    executor: str
    time_dim: str
    sources: tuple[SourceOutcome, ...]
    ntasks: int
    written: int
    skipped: int
    failed: int
    nchunks: int
    nbytes: int
    seconds: float
    failures: tuple[TaskFailure, ...]
    partial: tuple[tuple[Any, Any], ...]
    missing: tuple[tuple[Any, Any], ...]
    workers: tuple[WorkerStats, ...]
    memory_limit: int | None
    task_memory_estimate: int
    concurrency: int

    @property
    def status(self) -> Literal["complete", "incomplete", "failed"]:
        """``"failed"``: a task failed (see :attr:`failures`); ``"incomplete"``: nothing
        failed but the archive still lacks time steps no source covered (:attr:`missing`);
        ``"complete"``: every chunk of the archive holds source data throughout."""
        if self.failures:
            return "failed"
        return "incomplete" if self.missing else "complete"

    @property
    def ok(self) -> bool:
        """True only when :attr:`status` is ``"complete"``: a shortfall is never success."""
        return self.status == "complete"

    @property
    def throughput(self) -> float:
        """Decoded bytes written per second of wall time."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """Files, bytes, time, throughput, memory, failures: a few lines for people."""
        from dask.utils import format_bytes

        state = {
            "complete": "COMPLETE",
            "incomplete": f"INCOMPLETE ({_steps(self.missing)} missing)",
            "failed": f"FAILED ({len(self.failures)} failure(s))",
        }[self.status]
        counts = Counter(s.status for s in self.sources)
        lines = [
            f"convert: {len(self.sources)} source(s) -> {self.store}: {state}",
            (
                f"  tasks: {self.written} written, {self.skipped} skipped (already written), "
                f"{self.failed} failed, of {self.ntasks}; {self.nchunks} chunk(s)"
            ),
            (
                f"  {format_bytes(self.nbytes)} in {self.seconds:.2f} s "
                f"({format_bytes(int(self.throughput))}/s)"
            ),
            "  sources: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            f"  executor: {self.executor}; {self.concurrency} task(s) at once; "
            f"task peak estimate {format_bytes(self.task_memory_estimate)}"
            + (
                f"; memory limit {format_bytes(self.memory_limit)} per worker"
                if self.memory_limit
                else ""
            ),
        ]
        for w in self.workers:
            share = (
                f" ({100 * w.peak_rss / w.memory_limit:.0f}% of the limit)"
                if w.memory_limit
                else ""
            )
            lines.append(
                f"    {w.worker}: {w.tasks} task(s), peak RSS {format_bytes(w.peak_rss)}{share}"
            )
        if self.missing:
            spans = ", ".join(f"{a} .. {b}" for a, b in self.missing[:4])
            more = f" and {len(self.missing) - 4} more" if len(self.missing) > 4 else ""
            lines.append(
                f"  MISSING {self.time_dim} {spans}{more}: no source covers them; convert "
                "again with the missing sources to complete the archive"
            )
        if self.partial:
            spans = ", ".join(f"{a} .. {b}" for a, b in self.partial[:4])
            lines.append(
                f"  partly covered chunks (written with fill values, recorded as partial): {spans}"
            )
        for f in self.failures[:20]:
            lines.append(f"  FAILED {f}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failure(s)")
        return "\n".join(lines)


def _steps(spans: Sequence[tuple[Any, Any]]) -> str:
    return f"{len(spans)} span(s)"


def _report(
    *,
    target: Any,
    runner: Any,
    time_dim: str,
    info: TemplateInfo,
    specs: Sequence[SourceSpec],
    positions: Sequence[np.ndarray],
    plan: Plan,
    done: set[int],
    outcomes: Mapping[int, TaskOutcome],
    capacity: _Capacity,
    missing: Sequence[tuple[int, int]],
    seconds: float,
) -> ConvertReport:
    fmt = _Formatter(info)
    failures = _failures(plan, outcomes, specs, fmt)
    per_worker: dict[str, list[TaskOutcome]] = {}
    for o in outcomes.values():
        if o.worker:
            per_worker.setdefault(o.worker, []).append(o)
    workers = tuple(
        WorkerStats(w, len(os_), max(o.peak_rss for o in os_), capacity.memory_limit)
        for w, os_ in sorted(per_worker.items())
    )
    ok_outcomes = [o for o in outcomes.values() if o.ok]
    return ConvertReport(
        store=str(target),
        executor=runner.description,
        time_dim=time_dim,
        sources=_source_outcomes(plan, outcomes, done, specs, positions, fmt, time_dim),
        ntasks=len(plan.tasks),
        written=len(ok_outcomes),
        skipped=len(done),
        failed=sum(1 for o in outcomes.values() if not o.ok),
        nchunks=sum(o.nchunks for o in ok_outcomes),
        nbytes=sum(o.nbytes for o in ok_outcomes),
        seconds=seconds,
        failures=failures,
        partial=tuple((fmt(time_dim, a), fmt(time_dim, b - 1)) for a, b in plan.partial),
        missing=tuple((fmt(time_dim, a), fmt(time_dim, b - 1)) for a, b in missing),
        workers=workers,
        memory_limit=capacity.memory_limit,
        task_memory_estimate=plan.task_estimate,
        concurrency=capacity.workers * capacity.slots,
    )


class _Formatter:
    """Labels of template positions, as people read them."""

    def __init__(self, info: TemplateInfo) -> None:
        self.info = info
        self._cache: dict[str, Callable[[int], Any]] = {}

    def __call__(self, dim: str, i: int) -> Any:
        if dim not in self._cache:
            self._cache[dim] = label_formatter(self.info.indexes.get(dim))
        return self._cache[dim](i)


def _failures(
    plan: Plan,
    outcomes: Mapping[int, TaskOutcome],
    specs: Sequence[SourceSpec],
    fmt: _Formatter,
) -> tuple[TaskFailure, ...]:
    failures: list[TaskFailure] = []
    for t in plan.tasks:
        o = outcomes.get(t.index)
        if o is None or o.ok:
            continue
        srcs = sorted({p.source for p in t.pieces})
        failures.append(
            TaskFailure(
                task=t.index,
                sources=tuple(specs[s].label for s in srcs),
                region={d: (fmt(d, a), fmt(d, b - 1)) for d, (a, b) in t.region.items()},
                index_region=dict(t.region),
                error=o.error or "unknown error",
                error_type=o.error_type or "Error",
                phase=o.phase or "run",
                attempts=o.attempts,
                worker=o.worker,
            )
        )
    return tuple(failures)


def _source_outcomes(
    plan: Plan,
    outcomes: Mapping[int, TaskOutcome],
    done: set[int],
    specs: Sequence[SourceSpec],
    positions: Sequence[np.ndarray],
    fmt: _Formatter,
    time_dim: str,
) -> tuple[SourceOutcome, ...]:
    """Per source: decoded bytes of it written this run, and its status."""
    step_bytes = dict.fromkeys(range(len(specs)), 0.0)
    touched: dict[int, set[str]] = {i: set() for i in range(len(specs))}
    for t in plan.tasks:
        o = outcomes.get(t.index)
        state = "skipped" if t.index in done else ("written" if o and o.ok else "failed")
        tsteps = sum((p.dst[1] - p.dst[0]) if p.dst else 1 for p in t.pieces) or 1
        for p in t.pieces:
            touched[p.source].add(state)
            if state == "written":
                steps = (p.dst[1] - p.dst[0]) if p.dst else 1
                step_bytes[p.source] += t.nbytes * steps / tsteps
    outs = []
    for i, spec in enumerate(specs):
        states = touched[i]
        status: Literal["written", "skipped", "failed"] = (
            "failed" if "failed" in states else "skipped" if states == {"skipped"} else "written"
        )
        outs.append(
            SourceOutcome(
                source=spec.label,
                first=fmt(time_dim, int(positions[i].min())),
                last=fmt(time_dim, int(positions[i].max())),
                status=status,
                nbytes=int(step_bytes[i]),
            )
        )
    return tuple(outs)
