"""xarray's CF/Zarr encoding conventions, in one place.

Templates and region writes must encode exactly as ``xarray.Dataset.to_zarr`` does, so that
plain ``xarray.open_zarr`` reads our archives. Rather than re-implementing the conventions we
call xarray's own encoders; they are not public API, so they come through ``_compat``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import pandas as pd
import xarray as xr

from ._compat import (
    FillValueCoder,
    encode_dataset_coordinates,
    encode_zarr_attr_value,
    encode_zarr_variable,
)
from .errors import TemplateError, TimeEncodingError

__all__ = [
    "CF_ENCODING_KEYS",
    "ZARR_ENCODING_KEYS",
    "ZARR_FORMATS",
    "ZarrFormat",
    "NAT_FILL",
    "cf_encoding",
    "check_time_representable",
    "complete_fill",
    "pin_time_encoding",
    "time_encoding",
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


#: The int64 code xarray stores NaT as; the fill value of the time variables of a template.
NAT_FILL: Final = int(np.iinfo(np.int64).min)
_UNIT_NS: Final = {
    "nanoseconds": 1,
    "microseconds": 10**3,
    "milliseconds": 10**6,
    "seconds": 10**9,
    "minutes": 60 * 10**9,
    "hours": 3600 * 10**9,
    "days": 86400 * 10**9,
}
_STANDARD: Final = frozenset({"standard", "gregorian", "proleptic_gregorian"})


def complete_fill(dtype: np.dtype[Any], encoding: Mapping[str, Any]) -> dict[str, Any]:
    """``encoding`` with the ``_FillValue`` it needs for every write to be storable.

    A lone scalar ``missing_value`` becomes the ``_FillValue`` too (xarray stores NaN as it
    and requires the two to agree); floats stored as integers with neither get the dtype's
    most negative (unsigned: largest) value, so NaN never becomes a number.
    """
    enc = dict(encoding)
    if "_FillValue" not in enc and "missing_value" in enc:
        mv = np.asarray(enc["missing_value"])
        if mv.size == 1:
            enc["_FillValue"] = mv.reshape(()).item()
    stored = np.dtype(enc.get("dtype", dtype))
    if dtype.kind == "f" and stored.kind in "iu" and "_FillValue" not in enc:
        info = np.iinfo(stored)
        enc["_FillValue"] = int(info.min if stored.kind == "i" else info.max)
    return enc


def time_encoding(values: Any, reference: Any = None) -> dict[str, Any]:
    """Units, dtype and fill value that store ``values`` (datetime64 or timedelta64) and any
    later value at one-second resolution, exactly (finer when ``values`` need it).

    Datetimes count from ``reference`` (the template's start; default: the earliest value),
    timedeltas count plain units. The codes are int64; NaT is stored as :data:`NAT_FILL`.
    With an xarray that does not record a timedelta's dtype next to explicit units, the
    result for timedeltas is empty: that xarray's own default encoding is exact.
    """
    x = np.asarray(values)
    if x.dtype.kind not in "mM":
        raise TypeError(f"time_encoding takes datetime64 or timedelta64 values, got {x.dtype}")
    ns = x.astype(f"{x.dtype.kind}8[ns]").view(np.int64).ravel()
    ns = ns[ns != NAT_FILL]
    ref_ns = 0
    if x.dtype.kind == "M":
        if reference is None:
            reference = np.datetime64(int(ns.min()), "ns") if ns.size else "1970-01-01"
        ref = pd.Timestamp(reference).as_unit("ns")
        ref_ns = int(ref.value)
    unit = "seconds"
    for name in ("seconds", "milliseconds", "microseconds", "nanoseconds"):
        unit = name
        step = _UNIT_NS[name]
        if not (ns % step).any() and ref_ns % step == 0:
            break
    if x.dtype.kind == "m":
        if not _records_timedelta_dtype():
            # older xarray: explicit units lose the "dtype" attribute that readers decode
            # by, while its default (counts of the native resolution) is exact
            return {}
        return {"units": unit, "dtype": np.dtype("int64"), "_FillValue": NAT_FILL}
    since = ref.isoformat(sep=" ")
    return {"units": f"{unit} since {since}", "dtype": np.dtype("int64"), "_FillValue": NAT_FILL}


def pin_time_encoding(
    values: Any,
    name: str,
    inherited: Mapping[str, Any],
    user: Mapping[str, Any],
    reference: Any = None,
) -> dict[str, Any]:
    """The template encoding of a growing time variable, whatever the example held.

    :func:`time_encoding` (one-second resolution or finer, counted from ``reference``, the
    template's start), keeping the inherited ``calendar``; the user's own ``encoding=``
    entries win, and the example's ``values`` must then fit them.

    Raises
    ------
    TemplateError
        The example's values cannot be stored exactly with the user's encoding.
    """
    pinned = {k: v for k, v in inherited.items() if k == "calendar" or k in user}
    out = {**time_encoding(values, reference), **pinned}
    try:
        check_time_representable(values, out, name=name)
    except TimeEncodingError as e:
        raise TemplateError(f"the example data does not fit encoding[{name!r}]: {e}") from e
    return out


@functools.cache
def _records_timedelta_dtype() -> bool:
    """Whether this xarray records a timedelta's dtype as an attribute even when its
    encoding gives units (newer xarray does; older ones then decode only via units)."""
    probe = xr.Variable(("x",), np.array([1], dtype="m8[s]"))
    probe.encoding = {"units": "seconds", "dtype": np.dtype("int64")}
    return "dtype" in encode_zarr_variable(probe, "probe", 3).attrs


def check_time_representable(
    values: Any, encoding: Mapping[str, Any], *, name: str = "values"
) -> None:
    """Refuse datetime/timedelta ``values`` that ``encoding`` cannot store exactly.

    Checks every non-NaT value against the pinned ``units`` (``"<unit> since <date>"`` for
    datetimes, ``"<unit>"`` for timedeltas) and stored ``dtype``: the value must be a whole
    number of units from the reference, the code must fit the dtype (floats: within 2**53)
    and must not be the ``_FillValue`` (it would read back as NaT). Values of other dtypes,
    non-standard calendars and units xarray would choose itself pass unchecked.

    Raises
    ------
    TimeEncodingError
        A value that would be stored inexactly or read back as another time.
    """
    x = np.asarray(values)
    units = encoding.get("units")
    calendar = str(encoding.get("calendar", "standard")).lower()
    if x.dtype.kind not in "mM" or not isinstance(units, str) or calendar not in _STANDARD:
        return
    unit, _, since = (p.strip() for p in units.partition(" since "))
    step = _UNIT_NS.get(unit.lower())
    if step is None or (x.dtype.kind == "M") != bool(since):
        return
    ns = x.astype(f"{x.dtype.kind}8[ns]").view(np.int64).ravel()
    ns = ns[ns != NAT_FILL]
    ref_ns = int(pd.Timestamp(since).as_unit("ns").value) if since else 0
    q1, r1 = np.divmod(ns, step)
    q0, r0 = divmod(ref_ns, step)
    codes = q1 - q0
    bad = r1 != r0
    stored = np.dtype(encoding.get("dtype", np.int64))
    if stored.kind in "iu":
        info = np.iinfo(stored)
        bad |= (codes < info.min) | (codes > info.max)
    else:
        bad |= np.abs(codes) > 2**53
    fill = encoding.get("_FillValue")
    if fill is not None and not (isinstance(fill, float) and np.isnan(fill)):
        bad |= codes == fill
    if bad.any():
        first = x.ravel()[x.ravel().view(np.int64) != NAT_FILL][int(np.argmax(bad))]
        raise TimeEncodingError(
            f"{int(bad.sum())} value(s) of {name!r} (the first: {first}) cannot be stored "
            f"exactly with the template's units {units!r} and dtype {stored}. Round the values, or make the template with finer units, e.g. "
            f"encoding={{{name!r}: {{'units': 'seconds since ...', 'dtype': 'int64'}}}}"
        )
