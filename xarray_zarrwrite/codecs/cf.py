"""CF packing: floats stored as n-bit integers with ``scale_factor``/``add_offset``.

Any CF reader decodes the result (``xarray.open_zarr``, netCDF tools after conversion). The
packing range comes from, in order: an explicit ``valid_range``, the variable's
``valid_min``/``valid_max`` attributes, or the data given to ``to_template`` (never
placeholder values). With ``bits=b`` the codes are the signed integers
``-(2**(b-1) - 1) .. 2**(b-1) - 1`` and ``-2**(b-1)`` is the ``_FillValue``: the range
maximum is a real value, never the fill, and unwritten chunks read back as NaN. The largest
error is half a quantum, ``(vmax - vmin) / (2**b - 2) / 2``.

``packing`` also selects the bit-packing codec (``{"codec": "bitpack", "bits": n}`` or
``{"codec": "bitpack", "max_error": e}``), per variable or for all float variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import xarray as xr

from .._encoding import check_time_representable
from ..errors import PackingError

if TYPE_CHECKING:
    from .._open import ArrayInfo

__all__ = [
    "OnOutOfRange",
    "check_packed_range",
    "check_packed_values",
    "needs_range_check",
    "packing_encodings",
    "storable_range",
    "template_encoding",
]

OnOutOfRange = Literal["raise", "clip"]
_OPTIONS: Final = frozenset({"codec", "bits", "max_error", "valid_range"})
_CODECS: Final = ("cf", "bitpack")


def packing_encodings(
    ds: xr.Dataset, packing: Mapping[str, Any], zarr_format: int
) -> dict[str, dict[str, Any]]:
    """Encoding entries (and attributes) that pack the float variables named by ``packing``.

    Returns ``{name: encoding}``; CF packing puts ``dtype``, ``scale_factor``, ``add_offset``
    and ``_FillValue`` there plus ``valid_min``/``valid_max`` under the private key
    ``"__attrs__"`` for the template's attributes.

    Raises
    ------
    PackingError
        Unknown options, a non-float variable, ``bits`` outside 1..32, a negative or zero
        ``max_error``, an empty or inverted range, or all-NaN data with no explicit range.
    """
    if not isinstance(packing, Mapping):
        raise PackingError(f"packing must be a mapping, got {packing!r}")
    keys = set(packing)
    if keys and keys <= _OPTIONS:
        per_var = {str(n): dict(packing) for n, v in ds.data_vars.items() if v.dtype.kind == "f"}
        if not per_var:
            raise PackingError("packing was given but the dataset has no float data variables")
    elif keys and keys <= set(map(str, ds.data_vars)):
        per_var = {}
        for name, opts in packing.items():
            if not isinstance(opts, Mapping) or not set(opts) <= _OPTIONS:
                raise PackingError(
                    f"packing[{name!r}] must be a mapping with keys among {sorted(_OPTIONS)}, "
                    f"got {opts!r}"
                )
            per_var[str(name)] = dict(opts)
    else:
        unknown = sorted(keys - _OPTIONS - set(map(str, ds.data_vars)))
        raise PackingError(
            f"packing takes either options {sorted(_OPTIONS)} for every float variable, or "
            f"{{variable: options}}; {unknown} are neither options nor data variables"
        )
    return {name: _one(ds[name], name, opts, zarr_format) for name, opts in per_var.items()}


def _one(da: xr.DataArray, name: str, opts: dict[str, Any], zarr_format: int) -> dict[str, Any]:
    if da.dtype.kind != "f":
        raise PackingError(f"variable {name!r} has dtype {da.dtype}; only floats can be packed")
    codec = opts.get("codec", "cf")
    if codec not in _CODECS:
        raise PackingError(f"packing codec must be one of {list(_CODECS)}, got {codec!r}")
    bits, max_error = opts.get("bits"), opts.get("max_error")
    if bits is not None and (
        isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 32
    ):
        raise PackingError(f"packing bits for {name!r} must be an integer in 1..32, got {bits!r}")
    if max_error is not None and not (
        isinstance(max_error, int | float) and np.isfinite(max_error) and max_error > 0
    ):
        raise PackingError(
            f"packing max_error for {name!r} must be a positive finite number, got {max_error!r}"
        )
    if codec == "bitpack":
        if (bits is None) == (max_error is None):
            raise PackingError(f"bitpack packing of {name!r} takes exactly one of bits, max_error")
        return _bitpack(None if bits is None else int(bits), max_error, zarr_format)
    if max_error is not None:
        raise PackingError(
            f"CF packing of {name!r} takes bits=, not max_error= (use codec='bitpack')"
        )
    if bits is None:
        raise PackingError(f"CF packing of {name!r} needs bits= (e.g. {{'bits': 16}})")
    if bits < 2:
        raise PackingError(f"CF packing of {name!r} needs at least 2 bits, got {bits}")
    vmin, vmax = _range(da, name, opts.get("valid_range"))
    storage = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32
    top = 2 ** (bits - 1) - 1
    scale = (vmax - vmin) / (2 * top) if vmax > vmin else 1.0
    offset = vmin + scale * top
    return {
        "dtype": np.dtype(storage),
        "scale_factor": float(scale),
        "add_offset": float(offset),
        "_FillValue": int(-(top + 1)),
        "__attrs__": {"valid_min": float(vmin), "valid_max": float(vmax)},
    }


def _bitpack(bits: int | None, max_error: float | None, zarr_format: int) -> dict[str, Any]:
    if zarr_format == 3:
        from .bitpack import BitpackCodec

        return {"serializer": BitpackCodec(bits=bits, max_error=max_error)}
    from .bitpack_v2 import Bitpack

    return {"filters": [Bitpack(bits=bits, max_error=max_error)]}


def _range(da: xr.DataArray, name: str, valid_range: Any) -> tuple[float, float]:
    if valid_range is None and "valid_min" in da.attrs and "valid_max" in da.attrs:
        valid_range = (da.attrs["valid_min"], da.attrs["valid_max"])
    if valid_range is None and "valid_range" in da.attrs:
        valid_range = tuple(np.asarray(da.attrs["valid_range"]).tolist())
    if valid_range is None:
        finite = da.where(np.isfinite(da))
        vmin, vmax = float(finite.min(skipna=True)), float(finite.max(skipna=True))
        if not (np.isfinite(vmin) and np.isfinite(vmax)):
            raise PackingError(
                f"cannot take a packing range for {name!r} from its data: it holds no finite "
                "value; give packing={'...': {'bits': n, 'valid_range': (min, max)}}"
            )
        return vmin, vmax
    try:
        vmin, vmax = (float(v) for v in valid_range)
    except (TypeError, ValueError) as e:
        raise PackingError(
            f"valid_range for {name!r} must be two numbers, got {valid_range!r}"
        ) from e
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin <= vmax):
        raise PackingError(
            f"valid_range for {name!r} must be finite and ordered, got {valid_range}"
        )
    return vmin, vmax


def check_packed_range(
    name: str, var: xr.Variable, target: ArrayInfo, on_out_of_range: OnOutOfRange = "raise"
) -> xr.Variable:
    """Refuse (or clip) values that the template's integer or packed encoding cannot store.

    The write path's entry point: applies :func:`check_packed_values` to ``var`` with the
    template's stored dtype, CF encoding and ``valid_min``/``valid_max``. Variables stored
    as floats without packing, and time variables, are returned unchanged. For dask-backed
    data the check runs lazily, block by block, on the workers.

    Raises
    ------
    PackingError
        As :func:`check_packed_values`.
    """
    if on_out_of_range not in ("raise", "clip"):
        raise PackingError(f"on_out_of_range must be 'raise' or 'clip', got {on_out_of_range!r}")
    if var.dtype.kind in "mM":
        return _check_times(name, var, {**target.encoding, "dtype": target.stored_dtype})
    enc = template_encoding(target)
    if not needs_range_check(var.dtype, enc):
        return var
    if var.chunks is not None:
        import dask.array as da

        data = da.map_blocks(  # type: ignore[no-untyped-call]  # dask: unannotated
            check_packed_values, var.data, enc, on_out_of_range, name=name, dtype=var.dtype
        )
        return var.copy(deep=False, data=data)
    return var.copy(
        deep=False, data=check_packed_values(var.values, enc, on_out_of_range, name=name)
    )


def template_encoding(target: ArrayInfo) -> dict[str, Any]:
    """The encoding values are checked against: the template's CF encoding, its stored dtype
    and its ``valid_min``/``valid_max`` attributes."""
    enc = {**target.encoding, "dtype": target.stored_dtype}
    for key in ("valid_min", "valid_max"):
        if key in target.attrs:
            enc[key] = target.attrs[key]
    return enc


def _check_times(name: str, var: xr.Variable, enc: dict[str, Any]) -> xr.Variable:
    if var.chunks is None:
        check_time_representable(var.values, enc, name=name)
        return var
    # lazily and block by block, like the range check: nothing is written if a block fails
    import dask.array as da

    def block(x: np.ndarray) -> np.ndarray:
        check_time_representable(x, enc, name=name)
        return x

    checked = da.map_blocks(block, var.data, dtype=var.dtype)  # type: ignore[no-untyped-call]
    return var.copy(deep=False, data=checked)


def needs_range_check(dtype: np.dtype[Any], encoding: Mapping[str, Any]) -> bool:
    """True when values of ``dtype`` encoded with ``encoding`` may not fit what is stored."""
    if dtype.kind not in "biuf":
        return False  # times (checked by the time encoding) and objects
    stored = np.dtype(encoding.get("dtype", dtype))
    if stored.kind in "iu":
        return True
    packed = "scale_factor" in encoding or "add_offset" in encoding
    return stored.kind == "f" and (packed or stored.itemsize < dtype.itemsize)


def check_packed_values(
    values: Any,
    encoding: Mapping[str, Any],
    on_out_of_range: OnOutOfRange = "raise",
    *,
    name: str = "values",
) -> np.ndarray:
    """Check decoded ``values`` against an integer or packed CF ``encoding``; pure NumPy.

    ``encoding`` holds the stored ``dtype`` and any of ``scale_factor``, ``add_offset``,
    ``_FillValue``, ``missing_value``, ``valid_min``, ``valid_max``. Each value is encoded as
    xarray does (``round((x - add_offset) / scale_factor)``) and must give a code the stored
    dtype holds, other than the fill value (it would read back as missing), and lie within
    ``valid_min``..``valid_max`` when given (packed: within half a quantum of them). NaN
    must have a ``_FillValue`` (or ``missing_value``) to be stored as; it never becomes a
    number.

    Returns the values, clipped into range with ``on_out_of_range="clip"``.

    Raises
    ------
    PackingError
        A value out of range (with ``"raise"``), an infinity, NaN with no fill value, or a
        value that would be stored as the fill value.
    """
    x = np.asarray(values)
    if x.dtype.kind not in "biuf" or x.size == 0:
        return x
    stored = np.dtype(encoding.get("dtype", x.dtype))
    scale = float(encoding.get("scale_factor", 1.0))
    offset = float(encoding.get("add_offset", 0.0))
    fill = encoding.get("_FillValue", encoding.get("missing_value"))
    if x.dtype.kind == "f":
        nan = np.isnan(x)
        if nan.any() and stored.kind in "iu" and _missing(fill):
            raise PackingError(
                f"{name!r} holds NaN but its stored dtype {stored} has no _FillValue to store "
                "it as; fill the gaps first, or make the template with a _FillValue"
            )
        if np.isinf(x).any():
            raise PackingError(f"{name!r} holds infinities, which {stored} cannot store")
    clo, chi = _code_limits(stored, fill)
    bad = _bad_codes(x, stored, scale, offset, fill, clo, chi)
    vlo, vhi = float(encoding.get("valid_min", -np.inf)), float(encoding.get("valid_max", np.inf))
    # packed: a value within half a quantum of valid_min/valid_max is stored as the limit's
    # code (a source's own decoding may land a rounding error beyond its nominal range)
    slack = abs(scale) / 2 if stored.kind in "iu" and "scale_factor" in encoding else 0.0
    with np.errstate(invalid="ignore"):
        bad |= (x < vlo - slack) | (x > vhi + slack)
    if not bad.any():
        return x
    a, b = clo * scale + offset, chi * scale + offset
    lo, hi = max(min(a, b), vlo), min(max(a, b), vhi)
    if on_out_of_range == "clip" and lo <= hi:
        clipped = np.clip(x, lo, hi).astype(x.dtype, copy=False)
        if not _bad_codes(clipped, stored, scale, offset, fill, clo, chi).any():
            return clipped
    vals = x[bad]
    raise PackingError(
        f"{vals.size} value(s) of {name!r} fall outside its packing range [{lo}, {hi}] "
        f"(found {vals.min()} .. {vals.max()}; stored as {stored} with scale_factor={scale}, "
        f"add_offset={offset}, _FillValue={fill}); they would not round-trip or would read "
        "back as missing. Pass on_out_of_range='clip' to clip them, or make a template with "
        "a wider valid_range"
    )


def storable_range(encoding: Mapping[str, Any]) -> tuple[float, float]:
    """The smallest and largest value an integer or packed ``encoding`` stores (codes other
    than the fill value, within ``valid_min``/``valid_max``)."""
    stored = np.dtype(encoding.get("dtype", "f8"))
    scale = float(encoding.get("scale_factor", 1.0))
    offset = float(encoding.get("add_offset", 0.0))
    clo, chi = _code_limits(stored, encoding.get("_FillValue", encoding.get("missing_value")))
    a, b = clo * scale + offset, chi * scale + offset
    vlo, vhi = float(encoding.get("valid_min", -np.inf)), float(encoding.get("valid_max", np.inf))
    return max(min(a, b), vlo), min(max(a, b), vhi)


def _missing(fill: Any) -> bool:
    return fill is None or (isinstance(fill, float | np.floating) and np.isnan(fill))


def _code_limits(stored: np.dtype[Any], fill: Any) -> tuple[float, float]:
    if stored.kind == "f":
        top = float(np.finfo(stored).max)
        return -top, top
    info = np.iinfo(stored)
    lo, hi = int(info.min), int(info.max)
    if not _missing(fill):
        lo += int(fill) == lo
        hi -= int(fill) == hi
    return float(lo), float(hi)


def _bad_codes(
    x: np.ndarray,
    stored: np.dtype[Any],
    scale: float,
    offset: float,
    fill: Any,
    clo: float,
    chi: float,
) -> np.ndarray:
    """Where a value's code, as xarray computes it, falls outside ``clo..chi`` or on the fill."""
    if x.dtype.kind in "iu" and stored.kind in "iu" and scale == 1.0 and offset == 0.0:
        info = np.iinfo(x.dtype)  # exact integer comparisons (no float64 rounding)
        lo, hi = max(int(clo), int(info.min)), min(int(chi), int(info.max))
        bad: np.ndarray = (x < x.dtype.type(lo)) | (x > x.dtype.type(hi))
        if not _missing(fill) and info.min <= int(fill) <= info.max:
            bad |= x == x.dtype.type(int(fill))
        return bad
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        codes = (x.astype(np.float64) - offset) / scale
        if stored.kind in "iu":
            codes = np.around(codes)
        bad = (codes < clo) | (codes > chi)
        if stored.kind in "iu" and not _missing(fill):
            bad |= codes == float(fill)
    return bad
