"""Extents of templates: the full index of every extended dimension, the time axis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ._store import check_node_name
from .errors import TemplateError

__all__ = ["check_index", "full_extent", "time_axis"]


def full_extent(
    ds: xr.Dataset,
    time_dim: str | None,
    global_start: Any,
    global_end: Any,
    freq: Any,
    extent: Mapping[str, Any] | None,
) -> dict[str, pd.Index]:
    """Full index of every extended dimension (time and ``extent``), validated against ds."""
    for name in list(ds.variables) + list(ds.dims):
        check_node_name(name, "variable or dimension")
    if not ds.data_vars:
        raise TemplateError("the dataset has no data variables to make a template for")
    for name, var in ds.data_vars.items():
        if var.dtype.kind not in "biufcmM":
            raise TemplateError(
                f"data variable {name!r} has dtype {var.dtype}; templates support numeric, "
                "boolean and datetime data variables (encode strings as fixed-width bytes "
                "or categorical codes)"
            )
        if 0 in var.shape:
            raise TemplateError(
                f"data variable {name!r} has a zero-length dimension {dict(var.sizes)}; "
                "give at least one element of every dimension as the example"
            )
    full: dict[str, pd.Index] = {}
    extending_time = global_start is not None or global_end is not None or freq is not None
    if extending_time:
        if time_dim is None or time_dim not in ds.dims:
            raise TemplateError(
                f"global_start/global_end/freq extend the time dimension {time_dim!r}, which "
                f"is not a dimension of the dataset (dimensions: {list(ds.dims)}); set time_dim="
            )
        full[time_dim] = time_axis(ds, time_dim, global_start, global_end, freq)
    for dim, values in (extent or {}).items():
        if dim not in ds.dims:
            raise TemplateError(
                f"extent names {dim!r}, which is not a dimension of the dataset "
                f"(dimensions: {list(ds.dims)})"
            )
        if dim in full:
            raise TemplateError(
                f"dimension {dim!r} is given both by extent and by global_start/global_end"
            )
        index = pd.Index(np.asarray(values))
        check_index(index, f"extent[{dim!r}]")
        full[str(dim)] = index
    for dim, index in full.items():
        if dim not in ds.indexes:
            if len(index) < ds.sizes[dim]:
                raise TemplateError(
                    f"extent of {dim!r} has {len(index)} labels, fewer than the "
                    f"{ds.sizes[dim]} the example data already has"
                )
            continue
        own = ds.indexes[dim]
        check_index(own, f"coordinate {dim!r} of the example data")
        pos = index.get_indexer(own)
        if (pos < 0).any():
            bad = own[int(np.flatnonzero(pos < 0)[0])]
            raise TemplateError(
                f"label {bad!r} of coordinate {dim!r} in the example data is not on the "
                f"template's {dim!r} axis ({index[0]!r} .. {index[-1]!r}, {len(index)} labels)"
            )
    for dim in ds.indexes:
        if dim not in full:
            check_index(ds.indexes[dim], f"coordinate {dim!r}")
    return full


def check_index(index: pd.Index, what: str) -> None:
    if len(index) == 0:
        raise TemplateError(f"{what} is empty")
    if index.hasnans:
        raise TemplateError(f"{what} holds missing values (NaN/NaT); labels must all be valid")
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise TemplateError(f"{what} holds the duplicate label {dup!r}; labels must be unique")
    if not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
        raise TemplateError(f"{what} is not sorted; labels must be monotonic")


def time_axis(ds: xr.Dataset, time_dim: str, start: Any, end: Any, freq: Any) -> pd.Index:
    own = ds.indexes.get(time_dim)
    if own is None:
        raise TemplateError(f"the time dimension {time_dim!r} has no coordinate to extend")
    check_index(own, f"coordinate {time_dim!r}")
    if not own.is_monotonic_increasing:
        raise TemplateError(f"coordinate {time_dim!r} must be increasing to be extended")
    if freq is None:
        if len(own) < 3:
            raise TemplateError(
                f"cannot infer the time step from {len(own)} timestamp(s); pass freq="
            )
        freq = xr.infer_freq(own)  # type: ignore[no-untyped-call]  # xarray: unannotated
        if freq is None:
            raise TemplateError(
                f"the time step of {time_dim!r} is irregular and cannot be inferred; pass freq="
            )
    start = own[0] if start is None else start
    end = own[-1] if end is None else end
    calendar = getattr(own, "calendar", None) if isinstance(own, xr.CFTimeIndex) else None
    try:
        if calendar is not None:
            axis = xr.date_range(start, end, freq=freq, calendar=calendar, use_cftime=True)
        else:
            axis = pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=freq)
            axis = axis.as_unit(own.unit) if hasattr(own, "unit") else axis
    except (ValueError, TypeError) as e:
        raise TemplateError(
            f"cannot build the time axis from {start!r} to {end!r} with freq={freq!r}: {e}"
        ) from e
    if len(axis) == 0:
        raise TemplateError(f"global_start {start!r} is after global_end {end!r}")
    return pd.Index(axis, name=time_dim)
