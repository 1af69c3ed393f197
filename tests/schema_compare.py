"""Comparing two scans of one source field by field (the fast scans against the full one)."""

from __future__ import annotations

import numpy as np

from xarray_zarrwrite.convert import _sources


def same_value(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    same_type = type(a) is type(b)
    if isinstance(a, float | np.floating) and np.isnan(a):
        return same_type and bool(np.isnan(b))  # type: ignore[call-overload]
    return same_type and a == b


def assert_same_schema(fast: _sources.SourceSchema, slow: _sources.SourceSchema) -> None:
    assert fast.label == slow.label
    assert fast.times.equals(slow.times) and type(fast.times) is type(slow.times)
    assert fast.times.dtype == slow.times.dtype
    assert dict(fast.sizes) == dict(slow.sizes)
    assert fast.time_coords == slow.time_coords and fast.calendar == slow.calendar
    assert set(fast.indexes) == set(slow.indexes)
    for dim, idx in fast.indexes.items():
        assert idx.equals(slow.indexes[dim]) and idx.dtype == slow.indexes[dim].dtype
    assert list(fast.data_vars) == list(slow.data_vars)
    for name, var in fast.data_vars.items():
        other = slow.data_vars[name]
        assert (var.dims, var.dtype) == (other.dims, other.dtype), name
        assert list(var.attrs) == list(other.attrs), name
        for key, value in var.attrs.items():
            assert same_value(value, other.attrs[key]), (name, key, value, other.attrs[key])
    assert fast.index is not None and slow.index is not None
    assert set(fast.index.variables) == set(slow.index.variables)
    for name, vi in fast.index.variables.items():
        other_vi = slow.index.variables[name]
        assert (vi.dims, vi.dtype, vi.decoded, vi.codecs) == (
            other_vi.dims,
            other_vi.dtype,
            other_vi.decoded,
            other_vi.codecs,
        )
        assert set(vi.encoding) == set(other_vi.encoding), name
        for key, value in vi.encoding.items():
            assert same_value(value, other_vi.encoding[key]), (name, key)
        assert np.array_equal(vi.offsets, other_vi.offsets)
    assert fast.index.stamp == slow.index.stamp
