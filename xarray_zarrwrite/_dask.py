"""Dask-backed region writes: the ``da.store`` target whose ``__setitem__`` is our pipeline.

``da.store`` hands every block to ``target[selection] = block`` on whichever worker computed
it. :class:`RegionTarget` turns that into the same steps as a blocking NumPy write: device
blocks through the device snapshot, CF encoding with the template's pinned encoding (range
checks included), then :func:`~xarray_zarrwrite._write.write_encoded` with its retries, its
in-flight limit and the template-freshness gate before the first put.

The target carries the root document of the template the client planned with (its freshness
token), never a template object: a worker of a long-lived cluster uses its cached template
only if it was read under that root document, and every block proves, before its first put,
that the store still holds it. A template replaced between planning and computing is never
written with the old layout: the block raises :class:`~xarray_zarrwrite.errors.TemplateChangedError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._compat import async_array, sync
from ._encoding import check_time_representable
from ._open import StaleTemplateError, template_for_root, verifier
from ._staging import to_host
from ._write import EncodedWrite, encode_for_template, write_encoded
from .codecs.cf import check_packed_values, needs_range_check, template_encoding
from .errors import TemplateChangedError

if TYPE_CHECKING:
    import dask.array as da
    from zarr.abc.store import Store

    from ._open import TemplateInfo
    from .codecs.cf import OnOutOfRange

__all__ = ["RegionTarget", "range_checked"]


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
    ) -> None:
        self.store = store
        self.name = name
        self.root = root
        self.shape = shape
        self.dtype = dtype
        self.on_out_of_range: OnOutOfRange = on_out_of_range

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __setitem__(self, key: Any, value: Any) -> None:
        selection = _selection(key, self.shape)
        try:
            info = template_for_root(self.store, self.root)
            target = info.arrays[self.name]
            host = to_host(value)
            var = xr.Variable(target.dims, host)
            data = encode_for_template(
                self.name, var, target, info.zarr_format, self.on_out_of_range
            )
            write = EncodedWrite(self.name, np.asarray(data), selection, target.chunks)
            arrays = {self.name: async_array(info.zarr_arrays[self.name])}
            sync(write_encoded([write], arrays, verifier(self.store, self.root)))
        except StaleTemplateError as e:
            raise TemplateChangedError(
                f"the template in {self.store} was replaced after this dask write of "
                f"{self.name!r} was planned; nothing of block {_fmt(selection)} was written. "
                "Plan and compute the write again against the new template."
            ) from e

    def __repr__(self) -> str:
        return f"<RegionTarget {self.name!r} of {self.store} shape={self.shape}>"


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
