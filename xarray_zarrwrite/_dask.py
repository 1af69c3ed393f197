"""Dask-backed region writes: the ``da.store`` target whose ``__setitem__`` is our pipeline.

``da.store`` hands every block to ``target[selection] = block`` on whichever worker computed
it. :class:`RegionTarget` turns that into the same steps as a blocking NumPy write: device
blocks through the device snapshot, CF encoding with the template's pinned encoding (range
checks included), then :func:`~xarray_zarrwrite._write.write_encoded` with its retries, its
in-flight limit and the template-freshness gate before the first put.

The target carries the freshness token of the template the client planned with and a
:class:`DaskGate` (the token, the plan's :class:`~._growth.Layout` and its writes), never a
template object: a worker of a long-lived cluster uses its cached template only if it was read
under that token (or is that template grown by ``extend``).

The gate runs once per compute call, not once per block: :func:`gated` puts a gate task in
front of the targets (every block's store waits for it; it runs beside the blocks' own
computation), and the blocks of that compute call reuse its result for at most
:data:`GATE_WINDOW_S`; a block starting later checks again, once per process (one check in
flight, the others wait for it). A template replaced between planning and computing, or between
two compute calls, is never written with the old layout: the gate raises
:class:`~xarray_zarrwrite.errors.TemplateChangedError` before any put of that compute call. A
template that was only extended is written, except blocks in the old end's partial write unit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._compat import async_array, sync
from ._empty import configured
from ._encoding import check_time_representable
from ._growth import Growth, Layout, layout_of
from ._open import StaleTemplateError, Verifier, layout_for, template_for_root
from ._runtime import runtime
from ._staging import to_host
from ._store import store_key
from ._write import EncodedWrite, encode_for_template, write_encoded
from .codecs.cf import check_packed_values, needs_range_check, template_encoding
from .errors import TemplateChangedError

if TYPE_CHECKING:
    import dask.array as da
    import zarr
    from dask.delayed import Delayed
    from zarr.abc.store import Store

    from ._open import TemplateInfo
    from .codecs.cf import OnOutOfRange

__all__ = ["GATE_WINDOW_S", "DaskGate", "RegionTarget", "gated", "range_checked"]

#: How long (seconds) the blocks of one compute call trust a freshness gate that passed: the
#: gate runs once per compute call (a task every block depends on), and again, once per
#: process, when a block starts later than this after it (long computations).
GATE_WINDOW_S = 2.0

Writes = tuple[tuple[str, tuple[slice, ...]], ...]


@dataclass(frozen=True)
class DaskGate:
    """The template-freshness gate shared by every block of one dask write (picklable).

    ``root`` is the freshness token the client planned under, ``layout`` what the plan
    depends on (a template that only grew since is still written, see :mod:`._growth`),
    ``writes`` every (variable, selection) of the write. ``gate_id`` names one execution of
    the gate: the gate task of each compute call opens a new one, and ``started`` is when
    its check began (wall clock; NaN: not checked yet).
    """

    root: bytes
    layout: Layout
    writes: Writes
    gate_id: str = ""
    started: float = float("nan")
    #: how the template had grown when the gate task checked it (None: not checked)
    growth: Growth | None = None


class RegionTarget:
    """Array-like target of ``da.store`` for one variable of a template (picklable)."""

    def __init__(
        self,
        store: Store,
        name: str,
        root: bytes,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        on_out_of_range: OnOutOfRange = "raise",
        *,
        gate: DaskGate | None = None,
        write_empty_chunks: bool | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.root = root
        self.shape = shape
        self.dtype = dtype
        self.on_out_of_range: OnOutOfRange = on_out_of_range
        self.gate = gate
        #: as ``write_region(write_empty_chunks=)``; None: the template's default
        self.write_empty_chunks = write_empty_chunks

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def zarr_array(self, info: TemplateInfo) -> zarr.Array[Any]:
        """The template array the blocks are stored into, with ``write_empty_chunks``."""
        return configured(info.zarr_arrays[self.name], self.write_empty_chunks)

    def __setitem__(self, key: Any, value: Any) -> None:
        selection = _selection(key, self.shape)
        if self.gate is None:  # a bare target: every block runs the gate
            verify: Verifier | None = Verifier(self.store, self.root, layout_for(self.root))
            try:
                info = template_for_root(self.store, self.root)
            except StaleTemplateError as e:
                raise _changed(self.store, self.name, selection) from e
        else:
            info, grown = _passed(self.store, self.gate)
            if not grown.allows(self.name, selection):
                raise TemplateChangedError(_edge_message(self.store, self.name, selection, grown))
            verify = None
        target = info.arrays[self.name]
        var = xr.Variable(target.dims, to_host(value))
        data = encode_for_template(self.name, var, target, info.zarr_format, self.on_out_of_range)
        write = EncodedWrite(self.name, np.asarray(data), selection, target.chunks)
        arrays = {self.name: async_array(self.zarr_array(info))}
        try:
            sync(write_encoded([write], arrays, verify))
        except StaleTemplateError as e:
            raise _changed(self.store, self.name, selection) from e

    def __repr__(self) -> str:
        return f"<RegionTarget {self.name!r} of {self.store} shape={self.shape}>"


def _changed(store: Store, name: str, selection: tuple[slice, ...]) -> TemplateChangedError:
    return TemplateChangedError(
        f"the template in {store} was replaced after this dask write of {name!r} was "
        f"planned; nothing of block {_fmt(selection)} was written. Plan and compute the write "
        "again against the new template."
    )


def gated(
    targets: Sequence[RegionTarget],
    info: TemplateInfo,
    root: bytes,
    regions: Sequence[tuple[slice, ...]],
) -> list[Delayed]:
    """Give ``targets`` one shared :class:`DaskGate` and return them as ``da.store`` targets
    behind a gate task: every block's store waits for it, so each compute call checks the
    template once (not once per block) before its first put.

    The targets themselves get the gate with a fresh id too (for callers that store into
    them directly, e.g. Icechunk forks): their first block in each process checks.
    """
    from dask.delayed import delayed

    if not targets:
        return []
    layout = layout_for(root)
    if layout is None:
        layout = layout_of(info, {n: z.metadata for n, z in info.zarr_arrays.items()})
    writes = tuple((t.name, r) for t, r in zip(targets, regions, strict=True))
    gate = DaskGate(root, layout, writes, gate_id=uuid.uuid4().hex)
    for t in targets:
        t.gate = gate
    opened = delayed(open_gate, pure=False)(targets[0].store, gate)
    return [delayed(_with_gate, pure=False)(t, opened) for t in targets]


def _with_gate(target: RegionTarget, gate: DaskGate) -> RegionTarget:
    out = copy_target(target)
    out.gate = gate
    return out


def copy_target(target: RegionTarget) -> RegionTarget:
    """A shallow copy of ``target``."""
    out = object.__new__(type(target))
    out.__dict__.update(target.__dict__)
    return out


def open_gate(store: Store, gate: DaskGate) -> DaskGate:
    """The gate task: check the template now, under a new gate id that the blocks of this
    compute call share (raises :class:`TemplateChangedError` if it was replaced)."""
    opened = replace(gate, gate_id=uuid.uuid4().hex, started=time.time())
    _, grown = _passed(store, opened, fresh=True)
    return replace(opened, growth=grown)


class _Entry:
    """One process's gate result for one :class:`DaskGate` execution (one store object)."""

    def __init__(self, store: Store, started: float) -> None:
        self.store = store  # held: the key uses its id
        self.started = started  # time.monotonic() when its check began
        self.result: Future[tuple[TemplateInfo, Growth]] = Future()


def _passed(store: Store, gate: DaskGate, fresh: bool = False) -> tuple[TemplateInfo, Growth]:
    """The template to write with once ``gate`` has passed in this process, and how it grew
    since the plan (each block checks that it lies in units whole in the old extent).

    One check in flight per (store, gate execution) and process; blocks arriving meanwhile
    wait for its result, blocks within :data:`GATE_WINDOW_S` of it reuse it. A gate opened by
    the gate task in another process counts from when it started there.
    """
    key = (store_key(store), id(store), gate.root, gate.gate_id)
    entries: dict[tuple[Any, ...], _Entry] = runtime.slot("dask_gates", dict)
    now = time.monotonic()
    with runtime.lock:
        entry = entries.get(key)
        reuse = entry is not None and (
            not entry.result.done() or now - entry.started < GATE_WINDOW_S
        )
        if not reuse:
            age = time.time() - gate.started  # NaN: never checked
            trusted = not fresh and 0 <= age < GATE_WINDOW_S
            entry = entries[key] = _Entry(store, now - age if trusted else now)
            _prune(entries, now)
    assert entry is not None
    if reuse:
        return entry.result.result()
    try:
        info = _check(store, gate, trusted)
    except BaseException as e:
        entry.result.set_exception(e)
        with runtime.lock:
            if entries.get(key) is entry:
                del entries[key]  # the next block checks again
        raise
    entry.result.set_result(info)
    return info


def _check(store: Store, gate: DaskGate, trusted: bool) -> tuple[TemplateInfo, Growth]:
    """The template to write with and how it grew; with ``trusted`` (the gate task passed
    it moments ago), the check is the cached template (read only if this process has none).
    """
    try:
        info = template_for_root(store, gate.root, gate.layout)
        if trusted and gate.growth is not None:
            return info, gate.growth
        # () : any growth is taken here; each block checks its own selection
        grown = sync(Verifier(store, gate.root, gate.layout).check(()))
        return info, grown
    except StaleTemplateError as e:
        names = sorted({n for n, _ in gate.writes})
        raise TemplateChangedError(
            f"the template in {store} was replaced after this dask write of {names} was "
            "planned; nothing of it was written since. Plan and compute the write again "
            "against the new template."
        ) from e


def _edge_message(store: Store, name: str, block: tuple[slice, ...], grown: Growth) -> str:
    return (
        f"the template in {store} was extended ({grown.describe()}) after this dask write "
        f"of {name!r} was planned, and block {_fmt(block)} lies in the old end's partial "
        "write unit, whose extent grew (writing it whole would overwrite the new labels' "
        "part); nothing of the block was written. Write it again against the extended "
        "template (or with part.fastzarr.append)."
    )


def _prune(entries: dict[tuple[Any, ...], _Entry], now: float) -> None:
    """Forget finished gates long past their window (called under the runtime lock)."""
    old = [
        k for k, e in entries.items() if e.result.done() and now - e.started > 10 * GATE_WINDOW_S
    ]
    for k in old:
        del entries[k]


def _selection(key: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``da.store``'s block index as concrete ``start:stop`` slices."""
    if not isinstance(key, tuple):
        key = (key,)
    out = []
    for k, n in zip(key, shape, strict=True):
        if not isinstance(k, slice):
            raise TypeError(f"RegionTarget takes slices, got {key!r}")
        start, stop, step = k.indices(n)
        if step != 1:
            raise TypeError(f"RegionTarget takes contiguous slices, got {key!r}")
        out.append(slice(start, stop))
    return tuple(out)


def _fmt(block: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in block) + "]"


def range_checked(
    sources: Sequence[da.Array],
    names: Sequence[str],
    info: TemplateInfo,
    on_out_of_range: OnOutOfRange = "raise",
) -> list[da.Array]:
    """``sources`` (the dask data of ``names``) made to store nothing until every block of
    every checked variable has passed the template's range and time checks.

    Variables stored as integers or packed (and times with pinned units) get a reduction
    over all their blocks (:func:`~xarray_zarrwrite.codecs.cf.check_packed_values`,
    :func:`~xarray_zarrwrite._encoding.check_time_representable`); the sources' graphs are
    cloned to depend on it, so a block that does not fit raises before any block is stored
    and the store is left unchanged. Memory stays bounded: the check reads the blocks once
    and drops them, the store reads them again. Sources needing no check are returned as
    they are.
    """
    import dask.array as da
    from dask.graph_manipulation import bind

    gates = []
    for data, name in zip(sources, names, strict=True):
        target = info.arrays[name]
        if data.dtype.kind in "mM":
            enc = {**target.encoding, "dtype": target.stored_dtype}
            if "units" not in enc:
                continue
        else:
            enc = template_encoding(target)
            if not needs_range_check(data.dtype, enc):
                continue
        ones = tuple((1,) * len(c) for c in data.chunks)
        ok = da.map_blocks(  # type: ignore[no-untyped-call]  # dask: unannotated
            _block_fits, data, enc, on_out_of_range, name, dtype=bool, chunks=ones
        )
        gates.append(ok.all())
    if not gates:
        return list(sources)
    return list(bind(list(sources), gates))


def _block_fits(
    x: np.ndarray, enc: dict[str, Any], on_out_of_range: OnOutOfRange, name: str
) -> np.ndarray:
    """One block's check: raises as the write would; a single True per block otherwise."""
    if x.dtype.kind in "mM":
        check_time_representable(x, enc, name=name)
    else:
        check_packed_values(x, enc, on_out_of_range, name=name)
    return np.ones((1,) * x.ndim, dtype=bool)
