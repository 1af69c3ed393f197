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
    #: files per member: positions along the member dimension in the source (None: the source
    #: holds its member as a scalar coordinate, read as a dimension of length 1) ...
    msrc: tuple[int, int] | None = None
    #: ... and the template positions they go to (None: no member layout)
    mdst: tuple[int, int] | None = None


@dataclass(frozen=True)
class Members:
    """Files per member: the sources split the template along ``dim`` too.

    Attributes
    ----------
    dim
        The member dimension of the template.
    size
        Its length in the template.
    positions
        Per source: the template positions of its labels along ``dim``, in its own order.
    scalar
        Per source: it holds its member as a scalar coordinate (one label, no dimension).
    """

    dim: str
    size: int
    positions: tuple[np.ndarray, ...]
    scalar: tuple[bool, ...]
    labels: tuple[object, ...] = ()  # of the template, for messages


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
    member_dim
        Files per member: the member dimension (in ``region``; pieces say which part of it
        each source fills).
    along_member
        The variables of the task that have ``member_dim`` (the others, written by the tasks
        of the first member block, come from any of its sources).
    """

    index: int
    region: Mapping[str, tuple[int, int]]
    variables: tuple[str, ...]
    pieces: tuple[Piece, ...]
    nbytes: int
    missing: tuple[tuple[int, int], ...] = ()
    member_dim: str | None = None
    along_member: tuple[str, ...] = ()

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
    members: Members | None = None,
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
    members
        Files per member: the sources split the template along a member dimension too. Each
        task then also owns a block of whole chunks along it; a write unit is whole when
        every member of its block has a source for every step.
    """
    ntime = info.sizes[time_dim]
    owner, local, mlocal = _owners(positions, members, ntime)
    unit = math.lcm(*(_tchunk(info, n, time_dim) for n in write_vars)) if write_vars else ntime
    mspans = _member_spans(info, members, [*write_vars, *static_vars])
    sizer = _Sizer.make(info, write_vars, static_vars, time_dim, unit, budget, members)
    nblocks = -(-ntime // unit)
    pad = nblocks * unit - ntime
    blocks = []
    for m0, m1 in mspans:
        held = owner[m0:m1] >= 0
        have_all, have_any = held.all(axis=0), held.any(axis=0)
        full = np.concatenate([have_all, np.ones(pad, dtype=bool)]).reshape(nblocks, unit)
        some = np.concatenate([have_any, np.zeros(pad, dtype=bool)]).reshape(nblocks, unit)
        blocks.append((m0, m1, have_all, full.all(axis=1), some.any(axis=1)))
    nfull = sum(int(b[3].sum()) for b in blocks)
    per_block = max(
        max((sizer.nbytes(write_vars, k, unit, s) for k in sizer.parts for s in mspans), default=0),
        1,
    )
    per_task = min(
        max(1, int(budget // (PEAK_FACTOR * per_block))),
        max(1, MAX_TASK_BYTES // per_block),
        max(1, (nfull * len(sizer.spans)) // max(1, TASKS_PER_SLOT * slots)),
    )
    tasks: list[Task] = []
    gaps: set[tuple[int, int]] = set()
    partial: set[tuple[int, int]] = set()
    for b, (m0, m1, have_all, full, some) in enumerate(blocks):
        spans = _time_spans(full, some, have_all, unit, ntime, per_task) if write_vars else []
        mspan = (m0, m1) if members is not None else None
        for t0, t1, missing in spans:
            pieces = _block_pieces(owner, local, mlocal, (t0, t1), mspan, members)
            for k in sizer.parts:
                if sizer.owned(write_vars, k, b):
                    tasks.append(
                        sizer.task(len(tasks), write_vars, k, (t0, t1), pieces, missing, mspan, b)
                    )
        partial.update((t0, t1) for t0, t1, missing in spans if missing)
        if static_vars and positions:
            pieces = _static_pieces(positions, members, mspan, ntime)
            for k in sizer.parts:
                if pieces and sizer.owned(static_vars, k, b):
                    tasks.append(sizer.task(len(tasks), static_vars, k, None, pieces, (), mspan, b))
        covered = np.flatnonzero(owner[m0:m1].max(axis=0) >= 0)
        if covered.size and write_vars:
            inside = np.zeros(ntime, dtype=bool)
            inside[int(covered[0]) : int(covered[-1]) + 1] = True
            gaps.update(_runs(~have_all & inside))
    estimate = int(PEAK_FACTOR * max((t.nbytes for t in tasks), default=0))
    return Plan(
        tuple(tasks), tuple(sorted(gaps)), tuple(sorted(partial)), sizer.split_dim, estimate
    )


def _owners(
    positions: Sequence[np.ndarray], members: Members | None, ntime: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (member, time) template cell: the source that has it, its position along time in
    that source, and along the member dimension (-1: none). One row without members."""
    nrow = members.size if members is not None else 1
    owner = np.full((nrow, ntime), -1, dtype=np.int32)
    local = np.full((nrow, ntime), -1, dtype=np.int32)
    mlocal = np.full((nrow, ntime), -1, dtype=np.int32)
    for i, pos in enumerate(positions):
        if not len(pos):
            continue
        rows = members.positions[i] if members is not None else np.zeros(1, dtype=np.int64)
        cells = np.ix_(np.asarray(rows, dtype=np.int64), np.asarray(pos, dtype=np.int64))
        owner[cells] = i
        local[cells] = np.arange(len(pos))[None, :]
        mlocal[cells] = np.arange(len(rows))[:, None]
    return owner, local, mlocal


def _member_spans(
    info: TemplateInfo, members: Members | None, names: Sequence[str]
) -> list[tuple[int, int]]:
    """Blocks of whole chunks along the member dimension (one task's extent along it)."""
    if members is None:
        return [(0, 1)]
    having = [n for n in names if members.dim in info.arrays[n].dims]
    chunk = math.lcm(
        *(
            object_chunks(info.zarr_arrays[n])[info.arrays[n].dims.index(members.dim)]
            for n in having
        )
    )
    return [(a, min(a + chunk, members.size)) for a in range(0, members.size, chunk)]


def _time_spans(
    full: np.ndarray,
    some: np.ndarray,
    have: np.ndarray,
    unit: int,
    ntime: int,
    per_task: int,
) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """``(start, stop, missing)`` time spans of tasks: runs of whole write units, ``per_task``
    at a time, and each unit covered only in part on its own (with its uncovered steps)."""
    spans: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    for run_lo, run_hi in _runs(full & some):
        for b0 in range(run_lo, run_hi, per_task):
            spans.append((b0 * unit, min(min(b0 + per_task, run_hi) * unit, ntime), ()))
    for b in np.flatnonzero(some & ~full).tolist():
        t0, t1 = b * unit, min((b + 1) * unit, ntime)
        missing = tuple((t0 + a, t0 + z) for a, z in _runs(~have[t0:t1]))
        spans.append((t0, t1, missing))
    spans.sort()
    return spans


def _block_pieces(
    owner: np.ndarray,
    local: np.ndarray,
    mlocal: np.ndarray,
    span: tuple[int, int],
    mspan: tuple[int, int] | None,
    members: Members | None,
) -> tuple[Piece, ...]:
    """The source slices of one task: along time (and the member dimension)."""
    t0, t1 = span
    if members is None or mspan is None:
        return _pieces(owner[0, t0:t1], local[0, t0:t1], t0)
    m0, m1 = mspan
    rows: dict[tuple[int, tuple[int, int] | None, tuple[int, int] | None], list[tuple[int, int]]]
    rows = {}
    for r in range(m0, m1):
        for p in _pieces(owner[r, t0:t1], local[r, t0:t1], t0):
            assert p.dst is not None
            rows.setdefault((p.source, p.src, p.dst), []).append((r, int(mlocal[r, p.dst[0]])))
    out = [
        piece
        for (source, src, dst), found in rows.items()
        for piece in _member_runs(source, src, dst, found, members.scalar[source])
    ]
    return tuple(sorted(out, key=lambda p: (p.dst or (0, 0), p.mdst or (0, 0))))


def _member_runs(
    source: int,
    src: tuple[int, int] | None,
    dst: tuple[int, int] | None,
    rows: Sequence[tuple[int, int]],
    scalar: bool,
) -> list[Piece]:
    """One piece per run of consecutive template members that are consecutive in the source."""
    out = []
    start = 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or rows[k] != (rows[k - 1][0] + 1, rows[k - 1][1] + 1):
            (a, la), (b, lb) = rows[start], rows[k - 1]
            msrc = None if scalar else (la, lb + 1)
            out.append(Piece(source, src, dst, msrc, (a, b + 1)))
            start = k
    return out


def _static_pieces(
    positions: Sequence[np.ndarray],
    members: Members | None,
    mspan: tuple[int, int] | None,
    ntime: int,
) -> tuple[Piece, ...]:
    """Where variables without time come from: the earliest source (of each member of the
    block; none when a member of the block has no source: its chunks stay unwritten)."""
    start = [int(p.min()) if len(p) else ntime for p in positions]
    if members is None or mspan is None:
        return (Piece(int(np.argmin(start)), None, None),)
    found: list[tuple[int, int, int]] = []  # (template member, source, member in source)
    for r in range(*mspan):
        having = [
            (start[i], i, int(np.flatnonzero(members.positions[i] == r)[0]))
            for i in range(len(positions))
            if len(positions[i]) and r in members.positions[i]
        ]
        if not having:
            return ()
        _, i, m = min(having)
        found.append((r, i, m))
    out: list[Piece] = []
    for source in dict.fromkeys(i for _, i, _ in found):
        rows = [(r, m) for r, i, m in found if i == source]
        out.extend(_member_runs(source, None, None, rows, members.scalar[source]))
    return tuple(out)


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
    member_dim: str | None = None

    @classmethod
    def make(
        cls,
        info: TemplateInfo,
        write_vars: Sequence[str],
        static_vars: Sequence[str],
        time_dim: str,
        unit: int,
        budget: int,
        members: Members | None = None,
    ) -> _Sizer:
        step_bytes = {n: _bytes_per(info, n, time_dim) for n in write_vars}
        block_bytes = int(sum(step_bytes.values()) * unit)
        member_dim = None if members is None else members.dim
        split_dim, spans = _spatial_split(
            info, [*write_vars, *static_vars], (time_dim, member_dim), block_bytes, budget
        )
        return cls(info, time_dim, split_dim, spans, step_bytes, member_dim)

    @property
    def parts(self) -> range:
        return range(len(self.spans))

    def owned(self, names: Sequence[str], k: int, block: int = 0) -> tuple[str, ...]:
        """The arrays of ``names`` a task of split part ``k`` and member block ``block`` owns:
        arrays without the split (member) dimension belong to the first part (block)."""
        out = []
        for n in names:
            dims = self.info.arrays[n].dims
            if self.split_dim is not None and self.split_dim not in dims and k:
                continue
            if self.member_dim is not None and self.member_dim not in dims and block:
                continue
            out.append(n)
        return tuple(out)

    def nbytes(
        self,
        names: Sequence[str],
        k: int,
        nsteps: int,
        mspan: tuple[int, int] | None = None,
        block: int = 0,
    ) -> int:
        total = 0.0
        for n in self.owned(names, k, block):
            per = self.step_bytes.get(n) or _bytes_per(self.info, n, self.time_dim)
            dims = self.info.arrays[n].dims
            if self.split_dim in dims:
                lo, hi = self.spans[k]
                per *= (hi - lo) / self.info.sizes[self.split_dim]
            if self.member_dim in dims and mspan is not None:
                per *= (mspan[1] - mspan[0]) / self.info.sizes[self.member_dim]
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
        mspan: tuple[int, int] | None = None,
        block: int = 0,
    ) -> Task:
        region = {} if time_span is None else {self.time_dim: time_span}
        if self.split_dim is not None:
            region[self.split_dim] = self.spans[k]
        if self.member_dim is not None and mspan is not None:
            region[self.member_dim] = mspan
        nsteps = 1 if time_span is None else time_span[1] - time_span[0]
        owned = self.owned(names, k, block)
        along = (
            ()
            if mspan is None
            else tuple(n for n in owned if self.member_dim in self.info.arrays[n].dims)
        )
        return Task(
            index=index,
            region=region,
            variables=owned,
            pieces=pieces,
            nbytes=self.nbytes(names, k, nsteps, mspan, block),
            missing=missing,
            member_dim=self.member_dim if mspan is not None else None,
            along_member=along,
        )


def _bytes_per(info: TemplateInfo, name: str, time_dim: str) -> float:
    """Decoded bytes of ``name`` per step along ``time_dim`` (all of it if it has none)."""
    a = info.arrays[name]
    n = math.prod(a.shape) * a.dtype.itemsize
    return n / a.shape[a.dims.index(time_dim)] if time_dim in a.dims and n else float(n)


def _spatial_split(
    info: TemplateInfo,
    names: Sequence[str],
    exclude: Sequence[str | None],
    block_bytes: int,
    budget: int,
) -> tuple[str | None, list[tuple[int, int]]]:
    """Split along one other dimension (not time, not the member dimension) when one block of
    time chunks does not fit ``budget``."""
    if PEAK_FACTOR * block_bytes <= budget or not names:
        return None, [(0, 0)]
    best: tuple[int, str, int] | None = None
    for dim in dict.fromkeys(d for n in names for d in info.arrays[n].dims):
        if dim in exclude:
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
