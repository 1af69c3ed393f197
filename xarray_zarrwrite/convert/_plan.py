"""Planning (pure): the template's output chunks grouped into tasks by write unit."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from .._check import object_chunks

if TYPE_CHECKING:
    from .._open import TemplateInfo


logger = logging.getLogger(__name__)


_MIB: Final = 1 << 20
#: A task's peak memory is estimated as this many times the decoded bytes it writes: the
#: assembled buffer, its encoded copy, the compressed chunks in flight, and the decoded
#: source chunks being copied (measured: 3.4x over the worker's pre-task peak, threads).
PEAK_FACTOR: Final = 3.5
#: Upper bound of the decoded bytes of one task, however much memory there is: smaller tasks
#: balance better and lose less work to a crash.
MAX_TASK_BYTES: Final = 256 * _MIB
#: Aim for at least this many tasks per concurrent slot, for load balance.
TASKS_PER_SLOT: Final = 4


@dataclass(frozen=True)
class Piece:
    """The part of one source a task reads: ``src`` positions in the source along time (None:
    the source has no time dimension in this task) go to ``dst`` positions of the template."""

    source: int
    src: tuple[int, int] | None
    dst: tuple[int, int] | None


@dataclass(frozen=True)
class Task:
    """A unit of work: whole output chunks of some variables, and the sources they come from.

    Attributes
    ----------
    index
        Position in the plan.
    region
        ``{dim: (start, stop)}`` in the template, on chunk boundaries; dims left out are whole.
    variables
        Arrays this task writes (and owns, within ``region``).
    pieces
        Source slices, in time order.
    nbytes
        Decoded bytes the task writes.
    missing
        ``(start, stop)`` template positions along time inside ``region`` that no source
        covers: the task owns a write unit only partly covered by the sources, and writes it
        whole, merged with what the store already holds there (fill values elsewhere).
    """

    index: int
    region: Mapping[str, tuple[int, int]]
    variables: tuple[str, ...]
    pieces: tuple[Piece, ...]
    nbytes: int
    missing: tuple[tuple[int, int], ...] = ()

    def chunk_indices(self, info: TemplateInfo) -> dict[str, list[tuple[int, ...]]]:
        """The chunk objects this task writes, per variable."""
        out: dict[str, list[tuple[int, ...]]] = {}
        for name in self.variables:
            a = info.arrays[name]
            chunks = object_chunks(info.zarr_arrays[name])
            ranges = []
            for dim, c, n in zip(a.dims, chunks, a.shape, strict=True):
                lo, hi = self.region.get(dim, (0, n))
                ranges.append(range(lo // c, -(-hi // c)))
            out[name] = [tuple(int(i) for i in idx) for idx in _product(ranges)]
        return out


def _product(ranges: Sequence[range]) -> Iterable[tuple[int, ...]]:
    if not ranges:
        return [()]
    grids = np.meshgrid(*[np.asarray(r) for r in ranges], indexing="ij")
    return zip(*(g.ravel().tolist() for g in grids), strict=True)


@dataclass(frozen=True)
class Plan:
    """Tasks plus what cannot be written.

    Attributes
    ----------
    tasks
        Every task, done or not.
    gaps
        ``(start, stop)`` template positions inside the sources' extent that no source covers.
    partial
        ``(start, stop)`` time spans of the write units that sources cover only in part: they
        are written (merged with the store's content, fill values elsewhere) and recorded as
        partial in the archive.
    split_dim
        Dimension tasks are also split along to fit memory (None: whole).
    task_estimate
        Estimated peak memory of the largest task, in bytes.
    """

    tasks: tuple[Task, ...]
    gaps: tuple[tuple[int, int], ...]
    partial: tuple[tuple[int, int], ...]
    split_dim: str | None
    task_estimate: int


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of the runs of True in a 1-d boolean array."""
    if not mask.size:
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def plan_tasks(
    info: TemplateInfo,
    positions: Sequence[np.ndarray],
    *,
    time_dim: str,
    write_vars: Sequence[str],
    static_vars: Sequence[str] = (),
    budget: int,
    slots: int = 1,
) -> Plan:
    """Group the template's output chunks into tasks (pure: no I/O).

    Write units (blocks of whole time chunks of every variable) wholly covered by sources are
    grouped, several per task; a unit covered only in part gets a task of its own that writes
    it whole, merged with the store's content (:attr:`Task.missing`).

    Parameters
    ----------
    info
        The template.
    positions
        For each source, the template positions of its time labels.
    time_dim
        The dimension sources are split along.
    write_vars
        Arrays with ``time_dim`` to write (data variables and time-dependent coordinates).
    static_vars
        Data variables without ``time_dim``, written once from the first source.
    budget
        Peak memory one task may use, in bytes.
    slots
        Tasks that run at once (for load balance).
    """
    ntime = info.sizes[time_dim]
    owner = np.full(ntime, -1, dtype=np.int64)
    local = np.full(ntime, -1, dtype=np.int64)
    for i, pos in enumerate(positions):
        owner[pos] = i
        local[pos] = np.arange(len(pos))
    unit = math.lcm(*(_tchunk(info, n, time_dim) for n in write_vars)) if write_vars else ntime
    sizer = _Sizer.make(info, write_vars, static_vars, time_dim, unit, budget)
    nblocks = -(-ntime // unit)
    have = np.concatenate([owner >= 0, np.ones(nblocks * unit - ntime, dtype=bool)])
    full = have.reshape(nblocks, unit).all(axis=1)
    some = (
        np.concatenate([owner >= 0, np.zeros(nblocks * unit - ntime, dtype=bool)])
        .reshape(nblocks, unit)
        .any(axis=1)
    )
    per_block = max(max((sizer.nbytes(write_vars, k, unit) for k in sizer.parts), default=0), 1)
    per_task = min(
        max(1, int(budget // (PEAK_FACTOR * per_block))),
        max(1, MAX_TASK_BYTES // per_block),
        max(1, (int(full.sum()) * len(sizer.spans)) // max(1, TASKS_PER_SLOT * slots)),
    )
    spans: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    if write_vars:
        for run_lo, run_hi in _runs(full):
            for b0 in range(run_lo, run_hi, per_task):
                spans.append((b0 * unit, min(min(b0 + per_task, run_hi) * unit, ntime), ()))
        for b in np.flatnonzero(some & ~full).tolist():
            t0, t1 = b * unit, min((b + 1) * unit, ntime)
            missing = tuple((t0 + a, t0 + z) for a, z in _runs(owner[t0:t1] < 0))
            spans.append((t0, t1, missing))
    spans.sort()
    tasks: list[Task] = []
    for t0, t1, missing in spans:
        pieces = _pieces(owner[t0:t1], local[t0:t1], t0)
        for k in sizer.parts:
            tasks.append(sizer.task(len(tasks), write_vars, k, (t0, t1), pieces, missing))
    if static_vars and positions:
        first = int(np.argmin([p.min() if len(p) else ntime for p in positions]))
        for k in sizer.parts:
            if sizer.owned(static_vars, k):
                tasks.append(
                    sizer.task(len(tasks), static_vars, k, None, (Piece(first, None, None),))
                )
    gaps: list[tuple[int, int]] = []
    covered = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
    if covered.size and write_vars:
        inside = np.zeros(ntime, dtype=bool)
        inside[int(np.min(covered)) : int(np.max(covered)) + 1] = True
        gaps = _runs((owner < 0) & inside)
    partial = tuple((t0, t1) for t0, t1, missing in spans if missing)
    estimate = int(PEAK_FACTOR * max((t.nbytes for t in tasks), default=0))
    return Plan(tuple(tasks), tuple(gaps), partial, sizer.split_dim, estimate)


def _tchunk(info: TemplateInfo, name: str, time_dim: str) -> int:
    a = info.arrays[name]
    return object_chunks(info.zarr_arrays[name])[a.dims.index(time_dim)]


@dataclass(frozen=True)
class _Sizer:
    """How tasks are cut along the split dimension, and what each piece of them weighs."""

    info: TemplateInfo
    time_dim: str
    split_dim: str | None
    spans: list[tuple[int, int]]
    step_bytes: Mapping[str, float]

    @classmethod
    def make(
        cls,
        info: TemplateInfo,
        write_vars: Sequence[str],
        static_vars: Sequence[str],
        time_dim: str,
        unit: int,
        budget: int,
    ) -> _Sizer:
        step_bytes = {n: _bytes_per(info, n, time_dim) for n in write_vars}
        block_bytes = int(sum(step_bytes.values()) * unit)
        split_dim, spans = _spatial_split(
            info, [*write_vars, *static_vars], time_dim, block_bytes, budget
        )
        return cls(info, time_dim, split_dim, spans, step_bytes)

    @property
    def parts(self) -> range:
        return range(len(self.spans))

    def owned(self, names: Sequence[str], k: int) -> tuple[str, ...]:
        if self.split_dim is None:
            return tuple(names)
        return tuple(n for n in names if self.split_dim in self.info.arrays[n].dims or k == 0)

    def nbytes(self, names: Sequence[str], k: int, nsteps: int) -> int:
        total = 0.0
        for n in self.owned(names, k):
            per = self.step_bytes.get(n) or _bytes_per(self.info, n, self.time_dim)
            if self.split_dim in self.info.arrays[n].dims:
                lo, hi = self.spans[k]
                per *= (hi - lo) / self.info.sizes[self.split_dim]
            total += per * nsteps
        return int(total)

    def task(
        self,
        index: int,
        names: Sequence[str],
        k: int,
        time_span: tuple[int, int] | None,
        pieces: tuple[Piece, ...],
        missing: tuple[tuple[int, int], ...] = (),
    ) -> Task:
        region = {} if time_span is None else {self.time_dim: time_span}
        if self.split_dim is not None:
            region[self.split_dim] = self.spans[k]
        nsteps = 1 if time_span is None else time_span[1] - time_span[0]
        return Task(
            index=index,
            region=region,
            variables=self.owned(names, k),
            pieces=pieces,
            nbytes=self.nbytes(names, k, nsteps),
            missing=missing,
        )


def _bytes_per(info: TemplateInfo, name: str, time_dim: str) -> float:
    """Decoded bytes of ``name`` per step along ``time_dim`` (all of it if it has none)."""
    a = info.arrays[name]
    n = math.prod(a.shape) * a.dtype.itemsize
    return n / a.shape[a.dims.index(time_dim)] if time_dim in a.dims and n else float(n)


def _spatial_split(
    info: TemplateInfo, names: Sequence[str], time_dim: str, block_bytes: int, budget: int
) -> tuple[str | None, list[tuple[int, int]]]:
    """Split along one other dimension when one block of time chunks does not fit ``budget``."""
    if PEAK_FACTOR * block_bytes <= budget or not names:
        return None, [(0, 0)]
    best: tuple[int, str, int] | None = None
    for dim in dict.fromkeys(d for n in names for d in info.arrays[n].dims):
        if dim == time_dim:
            continue
        having = [n for n in names if dim in info.arrays[n].dims]
        chunk = math.lcm(
            *(object_chunks(info.zarr_arrays[n])[info.arrays[n].dims.index(dim)] for n in having)
        )
        nblocks = -(-info.sizes[dim] // chunk)
        if nblocks > 1 and (best is None or nblocks > best[0]):
            best = (nblocks, dim, chunk)
    if best is None:
        return None, [(0, 0)]
    nblocks, dim, chunk = best
    parts = min(nblocks, math.ceil(PEAK_FACTOR * block_bytes / max(budget, 1)))
    per = -(-nblocks // parts)
    size = info.sizes[dim]
    spans = [(b * chunk, min((b + per) * chunk, size)) for b in range(0, nblocks, per)]
    return dim, spans


def _pieces(owner: np.ndarray, local: np.ndarray, offset: int) -> tuple[Piece, ...]:
    breaks = np.flatnonzero((owner[1:] != owner[:-1]) | (local[1:] != local[:-1] + 1)) + 1
    edges = [0, *breaks.tolist(), len(owner)]
    return tuple(
        Piece(
            int(owner[a]),
            (int(local[a]), int(local[b - 1]) + 1),
            (offset + a, offset + b),
        )
        for a, b in zip(edges[:-1], edges[1:], strict=True)
        if owner[a] >= 0  # no source: fill values, or what the store holds
    )
