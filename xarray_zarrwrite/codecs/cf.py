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

from ..errors import PackingError

if TYPE_CHECKING:
    from .._open import ArrayInfo

__all__ = ["OnOutOfRange", "check_packed_range", "packing_encodings"]

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
    """Refuse (or clip) values outside a CF-packed variable's range, so nothing wraps around.

    Variables that are not CF-packed are returned unchanged. For dask-backed data the check
    runs lazily, block by block, on the workers.

    Raises
    ------
    PackingError
        A finite value falls outside ``valid_min``..``valid_max`` (with ``"raise"``), or
        ``on_out_of_range`` is unknown.
    """
    if on_out_of_range not in ("raise", "clip"):
        raise PackingError(f"on_out_of_range must be 'raise' or 'clip', got {on_out_of_range!r}")
    if target.stored_dtype.kind not in "iu" or "scale_factor" not in target.encoding:
        return var
    if "valid_min" not in target.attrs or "valid_max" not in target.attrs:
        return var
    vmin, vmax = float(target.attrs["valid_min"]), float(target.attrs["valid_max"])
    if var.chunks is not None:
        import dask.array as da

        data = da.map_blocks(  # type: ignore[no-untyped-call]  # dask: unannotated
            _check_block, var.data, name, vmin, vmax, on_out_of_range, dtype=var.dtype
        )
        return var.copy(deep=False, data=data)
    return var.copy(deep=False, data=_check_block(var.values, name, vmin, vmax, on_out_of_range))


def _check_block(x: np.ndarray, name: str, vmin: float, vmax: float, policy: str) -> np.ndarray:
    x = np.asarray(x)
    with np.errstate(invalid="ignore"):
        bad = (x < vmin) | (x > vmax)
    if np.isinf(x).any():
        raise PackingError(f"variable {name!r} holds infinities, which CF packing cannot store")
    if not bad.any():
        return x
    if policy == "clip":
        clipped: np.ndarray = np.clip(x, vmin, vmax)
        return clipped
    vals = x[bad]
    raise PackingError(
        f"{vals.size} value(s) of {name!r} fall outside its packing range [{vmin}, {vmax}] "
        f"(found {vals.min()} .. {vals.max()}); they would not round-trip. Pass "
        "on_out_of_range='clip' to clip them, or make a template with a wider valid_range"
    )
