"""Telling a template that only grew (``extend``) from one that was replaced.

:func:`~xarray_zarrwrite.extend` grows a template along a dimension: new labels appended, the
shapes grown, the root document rewritten. That changes the freshness token (see
:mod:`._open`), but a write planned against the old extent is still valid wherever it lies in
write units that were whole in the old extent: same keys, same encoding, same labels.

A :class:`Layout` is what a plan depends on, compact and picklable (it travels in dask tasks):
every array's dimensions, shape and a digest of the rest of its metadata (chunks, shards,
dtype, codecs, fill value, attributes), and a digest of every index coordinate's labels.
:func:`growth` compares it with the template the store holds now and returns a
:class:`Growth` (which writes are still safe) or ``None`` (a real replacement: other start,
labels, chunking, shards, dtype, variables).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._grid import ChunkGrid

if TYPE_CHECKING:
    from ._compat import ArrayMetadata
    from ._open import TemplateInfo

__all__ = ["EXACT", "Growth", "Layout", "growth", "layout_of"]

Selection = tuple[slice, ...]


@dataclass(frozen=True)
class Layout:
    """What a plan made against a template depends on (see the module docstring)."""

    #: name -> (dims, shape, digest of the metadata without the shape)
    arrays: Mapping[str, tuple[tuple[str, ...], tuple[int, ...], str]]
    #: index coordinate -> (number of labels, digest of the labels)
    labels: Mapping[str, tuple[int, str]]
    #: non-index coordinate read with the template -> digest of its values (planning skips
    #: writing one the template holds: its values must be the same)
    coords: Mapping[str, str]


@dataclass(frozen=True)
class Growth:
    """Which writes planned against an older extent of the template are still safe.

    ``limits[name][axis]`` is the end a selection of array ``name`` may reach along a grown
    axis: the old extent, less the old edge unit when that unit was partial (its extent grew:
    a whole-unit write planned for it would overwrite the new labels' part with fill).
    """

    limits: Mapping[str, tuple[int | None, ...]]
    #: the grown dimensions, old and new size (for messages)
    sizes: Mapping[str, tuple[int, int]]

    def allows(self, name: str, selection: Selection) -> bool:
        """Whether a write of ``selection`` into array ``name`` is still safe."""
        limits = self.limits.get(name)
        if limits is None:
            return True
        return all(
            stop is None or s.stop <= stop or s.stop <= s.start
            for s, stop in zip(selection, limits, strict=True)
        )

    def describe(self) -> str:
        return ", ".join(f"{d} {a} -> {b}" for d, (a, b) in sorted(self.sizes.items()))


#: The template is the one planned with: every write is safe.
EXACT = Growth(limits={}, sizes={})


def _metadata_digest(meta: ArrayMetadata) -> str:
    doc = dict(meta.to_dict())
    doc.pop("shape", None)
    text = json.dumps(doc, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _labels_digest(index: pd.Index | np.ndarray, n: int | None = None) -> str:
    """A digest of the first ``n`` labels of ``index`` (their values and kind)."""
    values = np.asarray(index if n is None else index[:n])
    digest = hashlib.sha256(str(values.dtype).encode() + b"\0")
    if values.dtype.kind in "biufcmM":
        digest.update(np.ascontiguousarray(values).tobytes())
    else:  # cftime dates, strings: their text
        digest.update("\0".join(map(str, values.tolist())).encode())
    return digest.hexdigest()


def layout_of(info: TemplateInfo, metas: Mapping[str, ArrayMetadata]) -> Layout:
    """The :class:`Layout` of ``info`` (its arrays' metadata ``metas``)."""
    arrays = {
        name: (a.dims, a.shape, _metadata_digest(metas[name]))
        for name, a in info.arrays.items()
        if name in metas
    }
    labels = {
        name: (len(index), _labels_digest(index, len(index)))
        for name, index in info.indexes.items()
    }
    coords = {name: _labels_digest(var.values) for name, var in info.stored_coords.items()}
    return Layout(arrays=arrays, labels=labels, coords=coords)


def growth(old: Layout, new: TemplateInfo, metas: Mapping[str, ArrayMetadata]) -> Growth | None:
    """How ``new`` grew from ``old``; ``None`` unless it is ``old`` grown along some dims.

    Grown means: the same arrays with the same dimensions and metadata but for the shape, no
    size smaller, and the labels of every index coordinate (and the values of every
    coordinate read with the template) unchanged over the old extent.
    """
    if set(old.arrays) != set(metas) or set(old.labels) != set(new.indexes):
        return None
    sizes: dict[str, tuple[int, int]] = {}
    for name, (dims, shape, digest) in old.arrays.items():
        now = tuple(int(n) for n in metas[name].shape)
        if new.arrays[name].dims != dims or len(now) != len(shape):
            return None
        if _metadata_digest(metas[name]) != digest:
            return None
        for dim, a, b in zip(dims, shape, now, strict=True):
            if b < a or sizes.get(dim, (a, b))[0] != a:
                return None
            # an extend in progress resizes the arrays one by one: sizes may differ for a
            # moment; every write this allows lies inside the old extent anyway
            sizes[dim] = (a, max(b, sizes.get(dim, (a, b))[1]))
    grown = {d: ab for d, ab in sizes.items() if ab[0] != ab[1]}
    for name, (n, digest) in old.labels.items():
        index = new.indexes[name]
        if len(index) < n or _labels_digest(index, n) != digest:
            return None
    for name, digest in old.coords.items():
        var = new.stored_coords.get(name)
        if var is None:
            return None
        old_extent = {d: slice(0, a) for d, (a, _) in grown.items() if d in var.dims}
        if _labels_digest(var.isel(old_extent).values) != digest:
            return None
    if not grown:
        return EXACT
    return Growth(limits=_limits(old, new, grown), sizes=grown)


def _limits(
    old: Layout, new: TemplateInfo, grown: Mapping[str, tuple[int, int]]
) -> dict[str, tuple[int | None, ...]]:
    limits: dict[str, tuple[int | None, ...]] = {}
    for name, (dims, shape, _) in old.arrays.items():
        if not any(d in grown for d in dims):
            continue
        unit = ChunkGrid.from_array(new.zarr_arrays[name]).unit
        limits[name] = tuple(
            (n // u) * u if d in grown else None for d, n, u in zip(dims, shape, unit, strict=True)
        )
    return limits
