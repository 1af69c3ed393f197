"""xarray's CF/Zarr encoding conventions, in one place.

Templates and region writes must encode exactly as ``xarray.Dataset.to_zarr`` does, so that
plain ``xarray.open_zarr`` reads our archives. Rather than re-implementing the conventions we
call xarray's own encoders; they are not public API, so they come through ``_compat``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import xarray as xr

from ._compat import (
    FillValueCoder,
    encode_dataset_coordinates,
    encode_zarr_attr_value,
    encode_zarr_variable,
)

__all__ = [
    "CF_ENCODING_KEYS",
    "ZARR_ENCODING_KEYS",
    "ZARR_FORMATS",
    "ZarrFormat",
    "cf_encoding",
    "encode_coordinates",
    "encode_variable",
    "zarr_fill_and_attrs",
]

#: A Zarr format version, as xarray's and zarr's own signatures take it.
ZarrFormat: TypeAlias = Literal[2, 3]
#: Every Zarr format version; ``fmt in ZARR_FORMATS`` narrows an ``int`` to :data:`ZarrFormat`.
ZARR_FORMATS: Final[tuple[ZarrFormat, ...]] = (2, 3)

#: Encoding entries that change the stored values; pinned by the template.
CF_ENCODING_KEYS: Final = (
    "dtype",
    "units",
    "calendar",
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
)
#: Encoding entries that choose the zarr codecs of an array.
ZARR_ENCODING_KEYS: Final = ("compressors", "serializer", "filters", "fill_value")


def cf_encoding(encoding: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of an xarray ``encoding`` dict that decides how values are encoded."""
    return {k: encoding[k] for k in CF_ENCODING_KEYS if k in encoding}


def encode_coordinates(ds: xr.Dataset) -> tuple[dict[str, xr.Variable], dict[str, Any]]:
    """Variables and global attributes with the CF ``coordinates`` attributes that tell
    readers which non-index variables are coordinates (no data is touched)."""
    variables, attrs = encode_dataset_coordinates(ds)
    return {str(k): v for k, v in variables.items()}, dict(attrs)


def encode_variable(var: xr.Variable, name: str, zarr_format: ZarrFormat) -> xr.Variable:
    """CF-encode ``var`` (its ``encoding`` included) as ``to_zarr`` would; lazy for dask."""
    return encode_zarr_variable(var, name, zarr_format)


def zarr_fill_and_attrs(
    encoded: xr.Variable, zarr_format: int, fill_value: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Return the zarr ``fill_value`` and the JSON attributes for an encoded variable.

    Follows xarray's layout: format 2 keeps ``_FillValue`` as the zarr fill value and the
    dimension names in ``_ARRAY_DIMENSIONS``; format 3 keeps ``_FillValue`` as an attribute
    and uses ``dimension_names``. Unlike ``to_zarr``, a format 3 array whose ``_FillValue`` is
    set also gets it as zarr ``fill_value``, so never-written chunks of packed integer variables
    decode to NaN instead of to ``add_offset``.
    """
    attrs = dict(encoded.attrs)
    dtype = encoded.dtype
    if zarr_format == 2:
        fill = attrs.pop("_FillValue", None)
        out = {
            k: encode_zarr_attr_value(v)  # type: ignore[no-untyped-call]  # xarray: unannotated
            for k, v in attrs.items()
        }
        out["_ARRAY_DIMENSIONS"] = list(encoded.dims)
        return fill, out
    fill = fill_value
    fv = attrs.pop("_FillValue", None)
    if fv is not None:
        attrs["_FillValue"] = FillValueCoder.encode(fv, dtype)
        if fill is None and dtype.kind in "iuf":
            fill = fv
    if fill is None and dtype.kind == "f":
        fill = np.nan  # xarray's default for floats (pydata/xarray#10646)
    return fill, {
        k: encode_zarr_attr_value(v)  # type: ignore[no-untyped-call]  # xarray: unannotated
        for k, v in attrs.items()
    }
