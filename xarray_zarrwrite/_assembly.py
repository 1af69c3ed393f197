"""Chunk assembly: steps smaller than a write unit are gathered in memory, each unit written once.

A :class:`~xarray_zarrwrite.StreamWriter` step that covers only part of a write unit (the shard
when sharded, else the chunk) is copied into that unit's buffer here, in pipeline memory.
When the buffer is complete (every element written by some step, in any order; a step written
twice replaces the earlier one) the unit goes through the ordinary encode-and-put path once,
as a whole unit: no read-modify-write, so quantising codecs (bitpack ``max_error``) quantise
each value once. ``flush`` and ``close`` write the units still open as *partial* units: fill
values where no step arrived, the unit listed in the archive's partial record
(:data:`~xarray_zarrwrite._check.PARTIAL_ATTR`, what :func:`~xarray_zarrwrite.check` reads)
*before* it is stored, so an interruption can never make it look whole. A unit that a previous
run stored (partial, or whole) is merged with the stored values at write time, never
overwritten with fill.

Threads: the caller's thread registers each step (:meth:`Assembler.register`: budget check,
open-unit bookkeeping), one assembler thread copies steps into buffers in submission order, and
the unit writes run on zarr's IO loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._check import read_record
from ._compat import async_array, io_loop, sync
from ._empty import configured
from ._grid import ChunkGrid
from ._open import (
    StaleTemplateError,
    load_template_with_root,
    template_for_root,
    verifier,
)
from ._region import RegionPlan, _plan_variable, _resolve_region, plan_region, template_grid
from ._write import EncodedWrite, RegionWriteResult, write_encoded
from .codecs.partial import requantises_on_partial_write
from .errors import BudgetTooSmallError, RegionAlignmentError, TemplateChangedError

if TYPE_CHECKING:
    import xarray as xr
    from zarr.abc.store import Store

    from ._open import TemplateInfo

__all__ = ["Assembler", "needs_assembly", "plan_steps", "unit_keys"]

Key = tuple[str, tuple[int, ...]]
#: Each open unit is charged this many times its stored size (its buffer, its mask and the
#: encoder's transient buffers when it is written).
UNIT_CHARGE = 1.5


def plan_steps(
    ds: xr.Dataset, info: TemplateInfo, region: Any, safe_chunks: bool = True
) -> RegionPlan:
    """:func:`plan_region` for a stream: a region that cuts write units is planned for
    assembly (it is never read-modify-written, so quantising codecs are welcome too)."""
    try:
        return plan_region(ds, info, region, safe_chunks=safe_chunks)
    except RegionAlignmentError:
        pass
    lossy = [
        str(n)
        for n in ds.data_vars
        if n in info.zarr_arrays and requantises_on_partial_write(info.zarr_arrays[str(n)])
    ]
    if not lossy:
        return plan_region(ds, info, region, safe_chunks=False)
    others = ds.drop_vars(lossy)
    if others.data_vars:
        base = plan_region(others, info, region, safe_chunks=False)
        slices, writes, skipped = dict(base.region), list(base.writes), base.skipped
    else:  # only quantised variables: plan_region validated everything up to alignment
        slices, writes, skipped = _resolve_region(ds, info, region), [], ()
    for name in lossy:
        grid = template_grid(info, name)
        target = info.arrays[name]
        writes.append(_plan_variable(name, ds[name].variable, target, grid, slices, False))
    return RegionPlan(region=slices, writes=tuple(writes), skipped=tuple(skipped))


def unit_keys(plan: RegionPlan) -> list[Key]:
    """The write units (variable, grid position) that the writes of ``plan`` touch."""
    return [(w.name, p.coords) for w in plan.writes for p in w.grid.pieces(w.selection)]


def needs_assembly(plan: RegionPlan) -> bool:
    """Whether some write of ``plan`` covers only part of a write unit."""
    return any(not w.grid.is_aligned(w.selection) for w in plan.writes)


@dataclass
class _Step:
    """One registered step: its future, the units it still waits for, its result."""

    fut: Any  # WriteFuture
    plan: RegionPlan
    encode: Callable[[], list[Any]]  # the step's arrays, encoded, one per write of the plan
    charge: int
    root: bytes = b""  # the template's freshness token the step was planned under
    waiting: int = 0
    units: int = 0
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class _Unit:
    name: str
    coords: tuple[int, ...]
    grid: ChunkGrid
    selection: tuple[slice, ...]
    buf: np.ndarray
    mask: np.ndarray  # bool: written by a step of this run
    charge: int
    held: np.ndarray | None = None  # bool: held by the stored unit (None: not looked up yet)
    steps: list[_Step] = field(default_factory=list)
    after: list[cf.Future[Any]] = field(default_factory=list)

    def complete(self) -> bool:
        cover = self.mask if self.held is None else self.mask | self.held
        return bool(cover.all())

    @property
    def merge(self) -> bool:
        """Whether the stored unit holds values this run does not replace."""
        return self.held is not None and bool((self.held & ~self.mask).any())


class Assembler:
    """Open write units of one :class:`~xarray_zarrwrite.StreamWriter`.

    Parameters
    ----------
    target
        The store units are written to.
    info
        A callable returning the current template.
    budget
        The writer's in-flight budget (``acquire``/``release``/``limit``).
    settle
        ``settle(fut, result, error)``: completes a step's future in the writer.
    time_dim
        Dimension along which partial units record their missing labels.
    """

    def __init__(
        self,
        target: Store,
        info: Callable[[], TemplateInfo],
        budget: Any,
        settle: Callable[[Any, RegionWriteResult | None, BaseException | None], None],
        time_dim: str = "time",
    ) -> None:
        self._target = target
        self._info = info
        self._budget = budget
        self._settle = settle
        self._time_dim = time_dim
        self._lock = threading.Lock()
        self._pending: dict[Key, int] = {}  # open units: steps registered but not copied yet
        self._charges: dict[Key, int] = {}  # open units: their charge
        self._units: dict[Key, _Unit] = {}  # assembler thread only
        self._record: dict[str, dict[str, list[str]]] | None = None
        self._done_recorded: set[Key] = set()  # units completed that the record lists
        self._aliases: dict[bytes, bytes] = {}  # token -> token after our own record update
        self.retry: tuple[int, float] | None = None  # (retries, backoff); None: the config's
        #: ``write_empty_chunks`` of the writer (None: the template's default; see _empty)
        self.write_empty_chunks: bool | None = None
        self._writes: set[cf.Future[Any]] = set()
        self._thread = cf.ThreadPoolExecutor(1, thread_name_prefix="xzw-assemble")
        self.units_written = 0

    # -- caller's thread ----------------------------------------------------------------------
    def open_bytes(self) -> int:
        """Bytes charged for units open now (not yet complete, or not yet copied into)."""
        with self._lock:
            return sum(self._charges.values())

    def is_open(self, keys: list[Key]) -> bool:
        with self._lock:
            return any(k in self._pending for k in keys)

    def register(
        self,
        plan: RegionPlan,
        fut: Any,
        encode: Callable[[], list[Any]],
        step_bytes: int,
        after: list[cf.Future[Any]],
        check: Callable[[], None],
        root: bytes = b"",
    ) -> None:
        """Charge ``plan``'s step (and the units it opens) and queue it for assembly.

        ``root`` is the freshness token of the template the step was planned under: a unit is
        written only if the store still holds it (the freshness gate before the put).

        Blocks while in-flight unit writes hold the budget; raises
        :class:`BudgetTooSmallError` (nothing queued) when the units already open plus the
        ones this step opens exceed it, since only later steps can complete open units.
        """
        info = self._info()
        keys = list(dict.fromkeys(unit_keys(plan)))
        for drained in (False, True):
            with self._lock:
                new = [k for k in keys if k not in self._pending]
                opened = sum(self._charges.values())
            charges = {k: self._unit_charge(info, k) for k in new}
            need = step_bytes + sum(charges.values())
            if not opened or opened + need <= self._budget.limit or drained:
                break
            # steps still queued may complete open units: let the assembler catch up first
            self._thread.submit(_nothing).result()
        if opened and opened + need > self._budget.limit:
            raise BudgetTooSmallError(
                f"max_inflight_mb={self._budget.limit / 2**20:.6g} cannot hold the write units "
                f"this step opens ({len(new)} unit(s), {sum(charges.values()) / 2**20:.3g} MiB "
                f"charged) beside the {len(self._charges)} unit(s) already open "
                f"({opened / 2**20:.3g} MiB), which only later steps can complete; nothing of "
                "this step was queued. Raise max_inflight_mb to at least 1.5 x the stored size "
                "of one write unit of every variable x the units open at once (plus a few "
                "steps), write steps in time order, or call flush() to write the open units "
                "as partial"
            )
        self._budget.acquire(need, check)
        with self._lock:
            # a unit closed meanwhile (complete) is opened again by this step: charge it too
            late = {k: 0 for k in keys if k not in self._pending and k not in charges}
            for k in keys:
                self._pending[k] = self._pending.get(k, 0) + 1
            self._charges.update(charges)
        if late:
            late = {k: self._unit_charge(info, k) for k in late}
            with self._lock:
                self._charges.update(late)
            self._budget.acquire(sum(late.values()), check)
            charges = {**charges, **late}
        step = _Step(fut, plan, encode, step_bytes, root)
        self._thread.submit(self._assemble, step, keys, charges, after)

    def _unit_charge(self, info: TemplateInfo, key: Key) -> int:
        name, coords = key
        grid = ChunkGrid.from_array(info.zarr_arrays[name])
        sel = grid.unit_selection(coords)
        n = int(np.prod([s.stop - s.start for s in sel]))
        return int(n * (info.arrays[name].stored_dtype.itemsize * UNIT_CHARGE + 1))

    def flush(self) -> None:
        """Write every open unit as partial (after every queued step), and wait for them."""
        self._thread.submit(self._write_open).result()
        self.wait()
        if self._done_recorded:
            self._thread.submit(self._update_record, []).result()

    def make_durable(self, fut: Any) -> None:
        """What ``fut.result()`` needs: once every queued step is assembled, if a unit of
        ``fut``'s step is still open (no queued step completes it), write the open units as
        partial (:meth:`flush`) instead of waiting for steps that may never come."""

        def still_open() -> bool:
            return any(step.fut is fut for u in self._units.values() for step in u.steps)

        if self._thread.submit(still_open).result():
            self.flush()

    def wait(self) -> None:
        while True:
            with self._lock:
                waiting = list(self._writes)
            if not waiting:
                return
            cf.wait(waiting)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    # -- assembler thread ---------------------------------------------------------------------
    def _assemble(
        self, step: _Step, keys: list[Key], charges: Mapping[Key, int], after: list[Any]
    ) -> None:
        try:
            hosts = step.encode()
            for w, data in zip(step.plan.writes, hosts, strict=True):
                for p in w.grid.pieces(w.selection):
                    unit = self._unit((w.name, p.coords), charges, w.grid)
                    local = tuple(
                        slice(s.start - u.start, s.stop - u.start)
                        for s, u in zip(p.selection, unit.selection, strict=True)
                    )
                    unit.buf[local] = data[p.local]
                    unit.mask[local] = True
                    unit.steps.append(step)
                    unit.after.extend(after)
                    step.waiting += 1
                    step.units += 1
        except BaseException as e:  # noqa: BLE001  (it belongs to the step's future)
            if not step.fut.copied.done():
                step.fut.copied.set_exception(e)
            self._budget.release(step.charge)
            self._settle(step.fut, None, e)
            self._release_pending(keys)
            return
        step.encode = _nothing
        step.fut.copied.set_result(None)
        self._budget.release(step.charge)
        for key in self._release_pending(keys):
            done = self._units.get(key)
            if done is not None and done.complete():
                self._close(done)

    def _release_pending(self, keys: list[Key]) -> list[Key]:
        """Drop one registration of each key; returns the keys no later step is queued for."""
        free = []
        with self._lock:
            for k in keys:
                self._pending[k] -= 1
                if not self._pending[k]:
                    free.append(k)
        return free

    def _unit(self, key: Key, charges: Mapping[Key, int], grid: ChunkGrid) -> _Unit:
        unit = self._units.get(key)
        if unit is not None:
            return unit
        name, coords = key
        info = self._info()
        arr = info.zarr_arrays[name]
        sel = grid.unit_selection(coords)
        shape = tuple(s.stop - s.start for s in sel)
        fill = arr.fill_value
        buf = np.full(shape, fill if fill is not None else 0, dtype=arr.dtype)
        unit = _Unit(name, coords, grid, sel, buf, np.zeros(shape, bool), charges.get(key, 0))
        missing = self._recorded(name, grid.key(coords))
        if missing is not None:  # stored partial by an earlier run: count what it holds
            axis, positions = self._axis_positions(info, name, sel)
            held = [i for i, p in enumerate(positions) if label_text(p) not in missing]
            idx: list[Any] = [slice(None)] * len(shape)
            idx[axis] = held
            unit.held = np.zeros(shape, bool)
            unit.held[tuple(idx)] = True
        self._units[key] = unit
        return unit

    def _recorded(self, name: str, key: str) -> list[str] | None:
        if self._record is None:
            self._record = read_record(self._target)
        return self._record.get(name, {}).get(key)

    def _axis_positions(
        self, info: TemplateInfo, name: str, sel: tuple[slice, ...]
    ) -> tuple[int, list[Any]]:
        dims = info.arrays[name].dims
        axis = dims.index(self._time_dim) if self._time_dim in dims else 0
        index = info.indexes.get(dims[axis])
        labels = list(range(sel[axis].start, sel[axis].stop))
        if index is not None:
            return axis, [index[i] for i in labels]
        return axis, labels

    def _close(self, unit: _Unit) -> None:
        """Hand a unit (complete, or partial at flush) to the IO loop."""
        key = (unit.name, unit.coords)
        del self._units[key]
        with self._lock:
            self._charges.pop(key, None)
            self._pending.pop(key, None)
        try:  # the template the unit's steps were planned under (read here, off the loop)
            gate: tuple[TemplateInfo, bytes] | BaseException = self._template_of(unit)
        except TemplateChangedError as e:
            gate = e
        io = asyncio.run_coroutine_threadsafe(self._write_unit(unit, gate), io_loop())
        with self._lock:
            self._writes.add(io)
        io.add_done_callback(lambda io: self._written(io, unit))

    def _write_open(self) -> None:
        units = list(self._units.values())
        if not units:
            return
        record = read_record(self._target)
        info = self._info()
        claim: list[tuple[_Unit, list[str]]] = []
        for unit in units:
            missing = self._missing(info, unit)
            old = record.get(unit.name, {}).get(unit.grid.key(unit.coords))
            # before the write: the union of what the stored and the new unit lack
            claim.append((unit, sorted(set(missing) | set(old or []))))
        self._update_record(claim)
        for unit in units:
            self._close(unit)
        self.wait()
        self._update_record([(u, self._missing(info, u)) for u in units])

    def _missing(self, info: TemplateInfo, unit: _Unit) -> list[str]:
        """Labels along the record's axis that the unit lacks once written (merged)."""
        if unit.held is None:
            path = unit.grid.path(async_array(info.zarr_arrays[unit.name]), unit.coords)
            # stored, yet not recorded partial: an earlier writer stored it whole
            stored = bool(sync(path.exists()))
            unit.held = np.full(unit.mask.shape, stored)
        mask = unit.mask | unit.held
        axis, positions = self._axis_positions(info, unit.name, unit.selection)
        other = tuple(a for a in range(mask.ndim) if a != axis)
        whole = mask.all(axis=other) if other else mask
        return [label_text(p) for p, ok in zip(positions, whole, strict=True) if not ok]

    def _update_record(self, entries: list[tuple[_Unit, list[str]]]) -> None:
        record = read_record(self._target)
        before = repr(record)
        for unit, missing in entries:
            chunks = record.setdefault(unit.name, {})
            key = unit.grid.key(unit.coords)
            if missing:
                chunks[key] = missing
            else:
                chunks.pop(key, None)
        with self._lock:
            done, self._done_recorded = self._done_recorded, set()
        for name, coords in done:
            record.get(name, {}).pop(self._grid(name).key(coords), None)
        self._record = record
        if repr(record) != before:
            _, old_root = load_template_with_root(self._target)
            write_record(self._target, record)
            # the root document changed (our own record, not a replacement): refresh the
            # cache, and let units planned under the old token pass the gate under the new
            _, new_root = load_template_with_root(self._target)
            with self._lock:
                self._aliases[old_root] = new_root

    def _current(self, root: bytes) -> bytes:
        """``root`` after the record updates this assembler made since (see _update_record)."""
        with self._lock:
            seen = {root}
            while root in self._aliases and self._aliases[root] not in seen:
                root = self._aliases[root]
                seen.add(root)
        return root

    def _grid(self, name: str) -> ChunkGrid:
        return ChunkGrid.from_array(self._info().zarr_arrays[name])

    # -- IO loop ------------------------------------------------------------------------------
    def _template_of(self, unit: _Unit) -> tuple[TemplateInfo, bytes]:
        """The template (and its token) every step of ``unit`` was planned under.

        Raises
        ------
        TemplateChangedError
            The steps were planned under different templates, or the store no longer holds
            theirs: nothing of the unit may be written.
        """
        roots = {self._current(step.root) for step in unit.steps}
        if len(roots) != 1:
            raise TemplateChangedError(
                f"the template in {self._target} was replaced while steps of {unit.name!r} "
                f"unit {unit.coords} were being assembled; nothing of the unit was written: "
                "write those steps again against the new template"
            )
        (root,) = roots
        try:
            info = template_for_root(self._target, root)
        except StaleTemplateError as e:
            raise TemplateChangedError(
                f"the template in {self._target} was replaced after steps of {unit.name!r} "
                f"unit {unit.coords} were planned; nothing of the unit was written: write "
                "those steps again against the new template"
            ) from e
        return info, root

    async def _write_unit(
        self, unit: _Unit, gate: tuple[TemplateInfo, bytes] | BaseException
    ) -> int:
        if unit.after:  # earlier whole-unit writes of the same region land first
            await asyncio.gather(*map(asyncio.wrap_future, unit.after), return_exceptions=True)
        if isinstance(gate, BaseException):
            raise gate
        info, root = gate
        arr = async_array(configured(info.zarr_arrays[unit.name], self.write_empty_chunks))
        data = unit.buf
        if unit.merge:
            stored = await arr.getitem(unit.selection)
            data = np.where(unit.mask, unit.buf, stored)
        write = EncodedWrite(unit.name, data, unit.selection, unit.grid.unit)
        try:  # the gate: the store must still hold the template the steps were planned for
            n, _ = await write_encoded(
                [write], {unit.name: arr}, verifier(self._target, root), self.retry
            )
        except StaleTemplateError as e:
            raise TemplateChangedError(
                f"the template in {self._target} was replaced while {unit.name!r} unit "
                f"{unit.coords} was assembled; nothing of the unit was written: write those "
                "steps again against the new template"
            ) from e
        return n

    def _written(self, io: cf.Future[int], unit: _Unit) -> None:
        err = io.exception()
        self._budget.release(unit.charge)
        if err is None:
            with self._lock:
                self.units_written += 1
                if unit.held is not None and unit.complete():  # drop it from the record
                    self._done_recorded.add((unit.name, unit.coords))
        for step in unit.steps:
            step.waiting -= 1
            if err is not None:
                self._settle(step.fut, None, err)
            elif step.waiting == 0:
                self._settle(step.fut, _result(step), None)
        with self._lock:
            self._writes.discard(io)


def label_text(value: Any) -> str:
    """A label as the partial record spells it (that of :mod:`xarray_zarrwrite.convert`)."""
    from .convert._partial import label_text as text  # convert imports the stream writer

    return text(value)


def write_record(store: Store, record: dict[str, dict[str, list[str]]]) -> None:
    """Store the partial record in the archive's root attributes."""
    from .convert._partial import write_record as write

    write(store, record)


def _nothing() -> list[Any]:
    return []


def _result(step: _Step) -> RegionWriteResult:
    return RegionWriteResult(
        region=dict(step.plan.region),
        variables=tuple(w.name for w in step.plan.writes),
        nchunks=step.units,
        nbytes=step.plan.nbytes,
        seconds=time.perf_counter() - step.t0,
    )
