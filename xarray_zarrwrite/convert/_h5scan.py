"""Scanning NetCDF4/HDF5 sources with h5py alone: one open per file, no xarray open.

The scan needs a source's dimensions, data variables (dims, decoded dtype, attributes),
coordinate labels, CF encodings and chunk byte ranges. Before, each file was opened through
xarray's netCDF4 backend (netCDF-C's open, xarray's lazy array machinery) and then a second
time with h5py for the chunk index; now one ``h5py.File`` open reads all of it. Measured (2
cores, load 1.5, 1,461 small daily files): 10.6-12.9 ms per file, the xarray path 9.9-11.1
ms: h5py's Python overhead per object and attribute eats the saved open; it is one open and
no netCDF-C handle per file, not yet a faster scan. Files laid out like one scanned before skip
this scan altogether: :mod:`._fastscan` compares their bytes instead (under 1 ms per file).

Exactness: the raw variables and attributes are read here as netCDF4-python presents them
(hidden netCDF-4/HDF5 bookkeeping attributes dropped, fixed-length strings decoded from their
stored bytes with the NULs dropped, one-element arrays as scalars), and xarray's own
``decode_cf_variables`` (what ``xr.open_dataset`` runs on a store's variables, with the same
defaults) decodes them: the same masks, scales, (cftime or numpy) times and coordinates. Data
variables are not read: they stand in as zero-strided views of the right shape and raw dtype
(their decoding is lazy). Anything this reader is not sure to present as netCDF4-python does
(other engines or ``open_kwargs``, NUL dataspaces, string or compound variables, netCDF-4 name
mangling, dimensions of a parent group) returns None and the source is scanned through xarray.

Threads or processes: h5py serialises every call on one global lock and netCDF-C shares the
HDF5 library, so the scan of a file holds ``_open_lock`` from open to close and threads do not
scan in parallel. Measured on 1,461 daily files (2 cores, load ~1, the ``scanned`` phase of
``convert``): 1 thread 17.6 s, 2 threads 19.0 s, ``executor="processes"`` (2 processes)
11.6 s. Processes are 1.6x faster for thousands of files, but the default stays threads: a
process pool re-imports the user's script (the main-guard trap issue 12 removed), so the
scan runs in processes only where the tasks do (``executor="processes"``, or the workers with
``client=``); docs/benchmarks.md says so.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import numpy as np
import xarray as xr

from .._compat import decode_cf_variables
from ._index import SourceIndex, index_open_hdf5

#: Attributes netCDF-C keeps for itself (netCDF4-python does not show them).
_HIDDEN: Final = frozenset(
    {
        "CLASS",
        "NAME",
        "DIMENSION_LIST",
        "REFERENCE_LIST",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_NCProperties",
        "_nc3_strict",
        "_IsNetcdf4",
        "_SuperblockVersion",
    }
)
_PHONY: Final = b"This is a netCDF dimension but not a netCDF variable"
#: Variables read whole: dimension coordinates, scalars and small 1-d variables; the others
#: (data, read by the tasks) stand in without data.
_READ_LIMIT: Final = 1 << 20
#: ``open_kwargs`` this reader reproduces (anything else: the xarray path).
_KNOWN_KWARGS: Final = frozenset({"drop_variables"})


class _Unsupported(Exception):
    """Something this reader does not present exactly as netCDF4-python: use xarray."""


def h5_scannable(path: str | None, engine: str | None, open_kwargs: Mapping[str, Any]) -> bool:
    """Whether :func:`scan_hdf5` may stand in for ``xr.open_dataset(path, engine=engine,
    **open_kwargs)``: the netCDF4 engine (xarray's choice for a NetCDF4 file when netCDF4 is
    installed), no option other than ``drop_variables``, h5py importable."""
    if path is None or engine not in (None, "netcdf4"):
        return False
    if set(open_kwargs) - _KNOWN_KWARGS:
        return False
    return _h5py_and_netcdf4()


@functools.cache
def _h5py_and_netcdf4() -> bool:
    try:
        importlib.import_module("h5py")
        importlib.import_module("netCDF4")  # else xarray would open it with h5netcdf
    except ImportError:
        return False
    return True


def scan_hdf5(
    path: str,
    storage_options: Mapping[str, Any],
    drop_variables: Sequence[str],
    names_of: Callable[[xr.Dataset], Sequence[str]],
    saved: SourceIndex | None = None,
) -> tuple[xr.Dataset, SourceIndex | None] | None:
    """The source as ``xr.open_dataset`` decodes it (data variables without data) and the
    byte-range index of the variables ``names_of(dataset)`` (``saved`` when given: its file
    is unchanged), from one h5py open. None: scan it through xarray instead.

    ``names_of`` may raise (e.g. a missing variable): the file is closed and it propagates.
    """
    h5py: Any = importlib.import_module("h5py")
    remote = "://" in path or "::" in path
    handle: Any = path
    if remote:
        import fsspec

        handle = fsspec.open(path, "rb", **dict(storage_options)).open()
    try:
        with h5py.File(handle, "r") as f:
            try:
                ds = _decoded(f, h5py, set(drop_variables))
            except _Unsupported:
                return None
            names = names_of(ds)
            if saved is not None:
                return ds, saved
            index = index_open_hdf5(f, path, ds, names, storage_options)
            if index is not None and not remote:
                st = os.stat(path)
                index = replace(index, stamp=_stamp(st))
            return ds, index
    except (OSError, ValueError, TypeError, KeyError):
        return None
    finally:
        if remote:
            handle.close()


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return (st.st_size, st.st_mtime_ns)


def _decoded(f: Any, h5py: Any, drop: set[str]) -> xr.Dataset:
    variables: dict[str, xr.Variable] = {}
    for name, obj in f.items():
        if not isinstance(obj, h5py.Dataset):
            continue  # groups: not part of the root dataset
        if "_nc4_non_coord_" in name:
            raise _Unsupported(name)
        if name in drop:
            continue
        keys = list(obj.attrs)
        kind = _kind(obj, keys)
        if kind == "phony":
            continue
        variables[name] = _variable(obj, h5py, keys, kind == "scale")
    with warnings.catch_warnings():
        # xr.open_dataset warns the same (e.g. about time units); the scan through xarray of
        # sources that need it shows it, here the decoding is the same
        warnings.simplefilter("ignore")
        # exactly what xr.open_dataset does with a store's variables (backends/store.py)
        decoded, attrs, coord_names = decode_cf_variables(variables, _attrs(f, list(f.attrs)))
    data_vars, coord_vars = {}, {}
    for name, var in decoded.items():
        if name in coord_names or var.dims == (name,):
            coord_vars[name] = var
        else:
            data_vars[name] = var
    return xr.Dataset(data_vars, coords=xr.Coordinates(coord_vars, indexes={}), attrs=attrs)


def h5ds_is_scale(dsid: Any) -> bool:
    """Whether the dataset is a dimension scale (HDF5's own test, no attribute read)."""
    h5py: Any = importlib.import_module("h5py")
    return bool(h5py.h5ds.is_scale(dsid))


def _kind(dset: Any, keys: list[str]) -> str:
    """``"phony"`` (a netCDF dimension without a coordinate variable: not a variable for
    netCDF4), ``"scale"`` (a dimension's coordinate variable) or ``""``."""
    if "CLASS" not in keys or not h5ds_is_scale(dset.id):
        return ""
    name = dset.attrs["NAME"] if "NAME" in keys else b""
    if isinstance(name, bytes | np.bytes_) and bytes(name).startswith(_PHONY):
        return "phony"
    return "scale"


def _variable(dset: Any, h5py: Any, keys: list[str], scale: bool) -> xr.Variable:
    dtype = dset.dtype
    if dtype.kind not in "biuf" or dtype.fields is not None or h5py.check_dtype(vlen=dtype):
        raise _Unsupported(dset.name)
    if h5py.check_dtype(enum=dtype) is not None:
        raise _Unsupported(dset.name)
    dims = _dims(dset, h5py, keys, scale)
    shape = tuple(int(n) for n in dset.shape)
    size = int(np.prod(shape, dtype=np.int64))
    if scale or (dset.ndim <= 1 and size * dtype.itemsize <= _READ_LIMIT):
        data: np.ndarray = dset[()] if size else np.empty(shape, dtype=dtype)
    else:  # not read: a zero-strided stand-in of the right shape and dtype
        data = np.broadcast_to(np.zeros((), dtype=dtype), shape)
    return xr.Variable(dims, data, attrs=_attrs(dset, keys))


def _dims(dset: Any, h5py: Any, keys: list[str], scale: bool) -> tuple[str, ...]:
    if dset.ndim == 0:
        return ()
    if "DIMENSION_LIST" not in keys:
        if dset.ndim == 1 and scale:
            return (_base(dset.name),)
        raise _Unsupported(dset.name)  # netCDF-C would invent phony dimension names
    out = []
    for entry in dset.attrs["DIMENSION_LIST"]:
        if len(entry) != 1:
            raise _Unsupported(dset.name)
        name = h5py.h5r.get_name(entry[0], dset.id).decode()
        if name.count("/") != 1:
            raise _Unsupported(dset.name)  # a dimension of a parent group
        out.append(_base(name))
    return tuple(out)


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _attrs(obj: Any, keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        if key in _HIDDEN:
            continue
        out[key] = _attr_value(obj.attrs, key)
    return out


def _attr_value(attrs: Any, key: str) -> Any:
    """An attribute as netCDF4-python returns it."""
    try:
        value = attrs[key]
    except (OSError, TypeError) as exc:  # unreadable type
        raise _Unsupported(key) from exc
    if isinstance(value, bytes | np.bytes_):  # NC_CHAR
        return _text(_raw_text(attrs, key))
    if isinstance(value, str):
        return value
    if not isinstance(value, np.ndarray):
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return value
        raise _Unsupported(key)  # h5py.Empty (a NUL dataspace), references, ...
    if value.dtype.kind == "O" or value.dtype.kind in "SU":  # NC_STRING
        texts = [_text(v) if isinstance(v, bytes | np.bytes_) else str(v) for v in value.ravel()]
        return texts[0] if len(texts) == 1 else texts
    if value.dtype.kind not in "biuf" or value.dtype.fields is not None:
        raise _Unsupported(key)
    if value.shape == ():
        return value.item()
    if value.size == 1:
        return value.ravel()[0]
    return value


def _raw_text(attrs: Any, key: str) -> bytes:
    """A fixed-length string attribute's stored bytes (h5py's conversion ends the text at
    the first NUL; netCDF4-python keeps what follows and drops the NULs only)."""
    aid = attrs.get_id(key)
    ftype = aid.get_type()
    if aid.shape != ():
        raise _Unsupported(key)
    buf = np.zeros((), dtype=f"V{ftype.get_size()}")
    aid.read(buf, mtype=ftype)
    return buf.tobytes()


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\x00", "")
