"""Step arrays of any framework: xarray objects holding torch/JAX/DLPack data, and the plain
``{name: array}`` steps of :meth:`~xarray_zarrwrite.StreamWriter.write_arrays`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._staging import as_array, is_native
from .errors import DimensionMismatchError, RegionError, VariableNotInTemplateError

if TYPE_CHECKING:
    from ._open import TemplateInfo

__all__ = ["arrays_dataset", "native", "take"]


def take(staged: tuple[Any, Any]) -> np.ndarray:
    """The host copy of a device snapshot (its pinned buffer goes back to the pool)."""
    st, pool = staged
    try:
        return np.array(st.wait(), copy=True)
    finally:
        pool.give(st.host)


def native(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with data of other frameworks (torch, JAX, DLPack) as NumPy or CuPy views."""
    foreign = {n: v for n, v in ds.data_vars.items() if _is_foreign(v.variable._data)}
    if not foreign:
        return ds
    return ds.assign(
        {n: v.copy(data=as_array(v.variable._data, str(n))) for n, v in foreign.items()}
    )


def _is_foreign(data: Any) -> bool:
    """An array of another framework that xarray kept as it is (torch, JAX, DLPack)."""
    exports = hasattr(data, "__dlpack__") or hasattr(data, "__cuda_array_interface__")
    return exports and not is_native(data)


def arrays_dataset(
    info: TemplateInfo, arrays: Mapping[str, Any], coords: Mapping[str, Any]
) -> xr.Dataset:
    """The Dataset of one ``write_arrays`` step, validated against the template."""
    if not isinstance(arrays, Mapping) or not arrays:
        raise RegionError(f"arrays must be a non-empty mapping of name to array, got {arrays!r}")
    for dim in coords:
        if dim not in info.sizes:
            raise DimensionMismatchError(
                f"coords names {dim!r}, which is not a dimension of the template "
                f"(template dimensions: {dict(info.sizes)})"
            )
    sizes = {d: len(np.atleast_1d(np.asarray(c))) for d, c in coords.items()}
    data_vars = {}
    for name, arr in arrays.items():
        target = info.arrays.get(name)
        if target is None or target.is_coord:
            raise VariableNotInTemplateError(
                f"{name!r} is not a data variable of the template (template variables: "
                f"{sorted(n for n, a in info.arrays.items() if not a.is_coord)})"
            )
        data = as_array(arr, name)
        want = tuple(sizes.get(d, info.sizes[d]) for d in target.dims)
        shape = tuple(int(n) for n in getattr(data, "shape", ()))
        if shape != want:
            raise DimensionMismatchError(
                f"array {name!r} has shape {shape}, but the template's dimensions "
                f"{target.dims} with these coords need {want} (a dimension missing from "
                "coords means the template's full extent); reshape it, or pass coords for "
                "every dimension it covers in part"
            )
        data_vars[name] = (target.dims, data)
    full = {
        d: info.indexes[d]
        for a in arrays
        for d in info.arrays[a].dims
        if d not in coords and d in info.indexes
    }
    return xr.Dataset(data_vars, coords={**full, **coords})
