"""Templates: metadata-only Zarr archives that span the full extent of a dataset.

Everything is built first in a private in-memory store (validation included), then
published to the target with all keys written concurrently and the root metadata last, so a
failure before publishing writes nothing, and a crash while publishing never leaves a root that
claims arrays which are not there.
"""

from __future__ import annotations

import asyncio
import math
import re
import warnings
from collections.abc import Coroutine, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
import zarr.api.asynchronous as zasync
from zarr.storage import MemoryStore

from ._chunks import plan_chunks
from ._compat import default_buffer_prototype, sync
from ._compression import parse_compression
from ._encoding import (
    CF_ENCODING_KEYS,
    ZARR_ENCODING_KEYS,
    ZARR_FORMATS,
    ZarrFormat,
    cf_encoding,
    complete_fill,
    encode_coordinates,
    encode_variable,
    pin_time_encoding,
    zarr_fill_and_attrs,
)
from ._store import check_node_name, ensure_writable, resolve_store
from .codecs.bitpack_v2 import with_chunk_size
from .config import config
from .errors import ChunkSpecError, StoreExistsError, TemplateError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from ._store import StoreLike

__all__ = ["TemplateSpec", "open_template", "to_template"]

_MODES = ("w-", "w")


@dataclass(frozen=True)
class TemplateSpec:
    """Options of :func:`to_template`, parsed and validated once."""

    time_dim: str | None
    chunks: Mapping[str, int | None] | str | None
    access_pattern: str
    target_bytes: int
    compressors: tuple[Any, ...]
    encoding: Mapping[str, Mapping[str, Any]]
    zarr_format: ZarrFormat
    mode: str


def to_template(
    ds: xr.Dataset | xr.DataArray,
    store: StoreLike,
    *,
    time_dim: str | None = "time",
    global_start: Any = None,
    global_end: Any = None,
    freq: str | pd.DateOffset | None = None,
    extent: Mapping[str, Sequence[Any] | np.ndarray | pd.Index] | None = None,
    chunks: Mapping[str, int | None] | str | None = None,
    access_pattern: str = "balanced",
    target_chunk_mb: float | None = None,
    compression: Any = "default",
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    packing: Mapping[str, Any] | None = None,
    zarr_format: int = 3,
    storage_options: Mapping[str, Any] | None = None,
    mode: str = "w-",
) -> xr.Dataset:
    """Write a metadata-only Zarr template spanning the full extent of ``ds``.

    ``ds`` is an example of the data (one month, say). The template gets every data variable
    of ``ds`` over the full extent (the time axis from ``global_start`` to ``global_end``, and
    any dimension given in ``extent``), its coordinates written in full, attributes, pinned
    time encoding, chunking and compression. No data chunk is written: region writes fill it.

    Parameters
    ----------
    ds
        Example data: a Dataset, or a named DataArray. NumPy- or dask-backed; its values
        are only read for coordinates, packing ranges and encoding inference.
    store
        Local path, fsspec URL (``"memory://x"``, ``"s3://bucket/x"``, ``"file:///x"``) or a
        zarr Store.
    time_dim
        Name of the time dimension extended by ``global_start``/``global_end``/``freq``.
    global_start, global_end
        First and last timestamp of the full archive (default: those of ``ds``).
    freq
        Time step (pandas offset alias); inferred from ``ds`` when None.
    extent
        ``{dim: full coordinate values}`` for any other dimension to extend.
    chunks
        ``{dim: size}`` (``-1``/None for a whole dimension; dimensions left out are planned
        automatically), ``"auto"``, or None (the dask chunks of ``ds`` if it has any,
        else ``"auto"``).
    access_pattern
        ``"temporal"``, ``"spatial"`` or ``"balanced"``: how ``chunks="auto"`` spends its
        budget (see :doc:`/templates`).
    target_chunk_mb
        Uncompressed chunk size ``chunks="auto"`` aims at (default from config, 8 MiB).
    compression
        ``"default"`` (blosc zstd level 3 with shuffle), None, a string such as
        ``"blosc:lz4:5:bitshuffle"``, ``"zstd:3"``, ``"gzip:5"``, or codec object(s).
    encoding
        Per-variable xarray-style overrides: ``dtype``, ``units``, ``calendar``,
        ``scale_factor``, ``add_offset``, ``_FillValue``, ``compressors``, ``serializer``,
        ``filters``.
    packing
        Lossy packing of float variables (see :doc:`/packing`).
    zarr_format
        3 (default) or 2.
    storage_options
        fsspec options for URLs.
    mode
        ``"w-"`` (default) fails, changing nothing, if the target holds anything other than
        what an interrupted ``to_template`` left (recognised by its publish marker, which
        is written first and removed last); ``"w"`` replaces whatever is there.

    Returns
    -------
    xarray.Dataset
        The template, opened lazily from the store.

    Raises
    ------
    TemplateError
        Invalid example data or options; nothing is written. Subclasses name the cause:
        :class:`~xarray_zarrwrite.errors.ChunkSpecError`,
        :class:`~xarray_zarrwrite.errors.CompressionError`,
        :class:`~xarray_zarrwrite.errors.PackingError`.
    StoreExistsError
        ``mode="w-"`` and the target is not empty.
    ReadOnlyStoreError
        The target cannot be written.
    InvalidNameError
        A variable or dimension name could escape the store root.
    """
    ds = _as_dataset(ds)
    if zarr_format not in ZARR_FORMATS:
        raise TemplateError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if mode not in _MODES:
        raise TemplateError(f"mode must be one of {list(_MODES)}, got {mode!r}")
    if target_chunk_mb is None:
        target_chunk_mb = config.get("target_chunk_mb")
    if not isinstance(target_chunk_mb, int | float) or not target_chunk_mb > 0:
        raise ChunkSpecError(f"target_chunk_mb must be a positive number, got {target_chunk_mb!r}")
    spec = TemplateSpec(
        time_dim=time_dim,
        chunks=chunks,
        access_pattern=access_pattern,
        target_bytes=int(target_chunk_mb * 2**20),
        compressors=parse_compression(compression, zarr_format),
        encoding=_parse_encoding(ds, encoding),
        zarr_format=zarr_format,
        mode=mode,
    )
    full = _full_extent(ds, time_dim, global_start, global_end, freq, extent)
    chunking = _chunking(ds, full, spec)
    packed = _packing_encoding(ds, packing, zarr_format)
    staged = MemoryStore()
    sync(_stage(ds, full, chunking, packed, spec, staged))
    target = resolve_store(store, storage_options=storage_options)
    ensure_writable(target)
    sync(_publish(staged, target, mode))
    return open_template(target)


def open_template(store: Store) -> xr.Dataset:
    """Open a template lazily with plain xarray (consolidated metadata when present)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds: xr.Dataset = xr.open_zarr(store, consolidated=None, chunks=None)
        return ds


def _as_dataset(obj: xr.Dataset | xr.DataArray) -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        if obj.name is None:
            raise TemplateError("the DataArray has no name; set one with da.rename('name')")
        return obj.to_dataset()
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}")
    return obj


def _parse_encoding(
    ds: xr.Dataset, encoding: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    allowed = set(CF_ENCODING_KEYS) | set(ZARR_ENCODING_KEYS)
    out: dict[str, dict[str, Any]] = {}
    for name, enc in (encoding or {}).items():
        if name not in ds.variables:
            raise TemplateError(
                f"encoding names {name!r}, which is not a variable of the dataset "
                f"(variables: {sorted(map(str, ds.variables))})"
            )
        if not isinstance(enc, Mapping):
            raise TemplateError(f"encoding[{name!r}] must be a mapping, got {enc!r}")
        unknown = set(enc) - allowed
        if unknown:
            hint = " (use chunks= for chunking)" if {"chunks", "chunksizes"} & unknown else ""
            raise TemplateError(
                f"encoding[{name!r}] has unsupported keys {sorted(unknown)}{hint}; allowed: "
                f"{sorted(allowed)}"
            )
        out[str(name)] = dict(enc)
    return out


def _full_extent(
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
        full[time_dim] = _time_axis(ds, time_dim, global_start, global_end, freq)
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
        _check_index(index, f"extent[{dim!r}]")
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
        _check_index(own, f"coordinate {dim!r} of the example data")
        pos = index.get_indexer(own)
        if (pos < 0).any():
            bad = own[int(np.flatnonzero(pos < 0)[0])]
            raise TemplateError(
                f"label {bad!r} of coordinate {dim!r} in the example data is not on the "
                f"template's {dim!r} axis ({index[0]!r} .. {index[-1]!r}, {len(index)} labels)"
            )
    for dim in ds.indexes:
        if dim not in full:
            _check_index(ds.indexes[dim], f"coordinate {dim!r}")
    return full


def _check_index(index: pd.Index, what: str) -> None:
    if len(index) == 0:
        raise TemplateError(f"{what} is empty")
    if index.hasnans:
        raise TemplateError(f"{what} holds missing values (NaN/NaT); labels must all be valid")
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise TemplateError(f"{what} holds the duplicate label {dup!r}; labels must be unique")
    if not (index.is_monotonic_increasing or index.is_monotonic_decreasing):
        raise TemplateError(f"{what} is not sorted; labels must be monotonic")


def _time_axis(ds: xr.Dataset, time_dim: str, start: Any, end: Any, freq: Any) -> pd.Index:
    own = ds.indexes.get(time_dim)
    if own is None:
        raise TemplateError(f"the time dimension {time_dim!r} has no coordinate to extend")
    _check_index(own, f"coordinate {time_dim!r}")
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


def _chunking(ds: xr.Dataset, full: dict[str, pd.Index], spec: TemplateSpec) -> dict[str, int]:
    sizes = {str(d): (len(full[d]) if d in full else n) for d, n in ds.sizes.items()}
    chunks = spec.chunks
    if chunks is None and ds.chunks:
        chunks = {str(d): c[0] for d, c in ds.chunks.items() if str(d) not in full}
    itemsize = max(v.dtype.itemsize for v in ds.data_vars.values())
    return plan_chunks(
        sizes,
        chunks,
        itemsize=itemsize,
        time_dim=spec.time_dim,
        access_pattern=spec.access_pattern,
        target_bytes=spec.target_bytes,
    )


def _packing_encoding(
    ds: xr.Dataset, packing: Mapping[str, Any] | None, zarr_format: int
) -> dict[str, dict[str, Any]]:
    if packing is None:
        return {}
    from .codecs.cf import packing_encodings

    return packing_encodings(ds, packing, zarr_format)


async def _stage(
    ds: xr.Dataset,
    full: dict[str, pd.Index],
    chunking: dict[str, int],
    packed: dict[str, dict[str, Any]],
    spec: TemplateSpec,
    staged: MemoryStore,
) -> None:
    """Create every array (metadata) and write the coordinates, into ``staged``."""
    fmt = spec.zarr_format
    variables, gattrs = encode_coordinates(ds)
    attrs = {str(k): _json_attr(v) for k, v in gattrs.items()}
    group = await zasync.open_group(store=staged, mode="w", zarr_format=fmt, attributes=attrs)
    extended = set(full)
    jobs: list[Coroutine[Any, Any, None]] = []
    try:
        for name, var in variables.items():
            user = spec.encoding.get(name, {})
            if name in ds.indexes or (name in ds.coords and not extended & set(map(str, var.dims))):
                # coordinates that do not grow are written once, in full, with their values
                # loading may read lazily opened sources through zarr's own sync API: off the loop
                values = await asyncio.to_thread(_full_variable, var, name, full)
                jobs.append(_create_coordinate(group, name, values, user, fmt))
            else:
                enc = {**cf_encoding(var.encoding), **packed.get(name, {}), **user}
                if var.dtype.kind in "mM":
                    enc = await asyncio.to_thread(_time_enc, var, name, enc, user, full, spec)
                enc = complete_fill(var.dtype, enc)
                extra = enc.pop("__attrs__", {})
                if extra:
                    var = var.copy(deep=False)
                    var.attrs = {**var.attrs, **extra}
                jobs.append(_create_data_array(group, name, var, enc, full, chunking, spec))
    except BaseException:
        for job in jobs:  # never awaited: close them, so none is left dangling
            job.close()
        raise
    await asyncio.gather(*jobs)


def _time_enc(
    var: xr.Variable,
    name: str,
    enc: dict[str, Any],
    user: Mapping[str, Any],
    full: dict[str, pd.Index],
    spec: TemplateSpec,
) -> dict[str, Any]:
    axis = full.get(spec.time_dim) if spec.time_dim is not None else None
    reference = axis[0] if isinstance(axis, pd.DatetimeIndex) else None
    # time variables are small (valid_time(time, step) and the like): load them whole
    return pin_time_encoding(var.values, name, enc, user, reference)


def _full_variable(var: xr.Variable, name: str, full: dict[str, pd.Index]) -> xr.Variable:
    if name in full:
        values: Any = full[name]
        if isinstance(values, pd.DatetimeIndex):
            values = values.values
        elif isinstance(values, xr.CFTimeIndex):
            values = np.asarray(values)
        return xr.Variable(var.dims, values, var.attrs, {**var.encoding})
    return var.load() if not isinstance(var.data, np.ndarray) else var


async def _create_coordinate(
    group: zarr.AsyncGroup,
    name: str,
    var: xr.Variable,
    user: Mapping[str, Any],
    fmt: ZarrFormat,
) -> None:
    var = var.copy(deep=False)
    var.encoding = complete_fill(var.dtype, {**cf_encoding(var.encoding), **user})
    codec_kwargs = {k: var.encoding.pop(k) for k in ZARR_ENCODING_KEYS if k in var.encoding}
    encoded = encode_variable(var, name, fmt)
    data = np.asarray(encoded.values)
    fill, attrs = zarr_fill_and_attrs(encoded, fmt, codec_kwargs.pop("fill_value", None))
    arr = await group.create_array(
        name,
        shape=data.shape,
        chunks=data.shape if data.ndim else (),
        dtype=data.dtype,
        fill_value=fill,
        attributes=attrs,
        **_dim_kwargs(encoded.dims, fmt),
        **_codec_kwargs(codec_kwargs, fmt),
    )
    await arr.setitem(Ellipsis, data)


async def _create_data_array(
    group: zarr.AsyncGroup,
    name: str,
    var: xr.Variable,
    enc: dict[str, Any],
    full: dict[str, pd.Index],
    chunking: dict[str, int],
    spec: TemplateSpec,
) -> None:
    # Encode a one-element sample: gives the stored dtype and CF attributes without touching
    # (or computing) the example's data.
    sample = var.isel({d: slice(0, 1) for d in var.dims}).copy(deep=False)
    sample.encoding = {k: v for k, v in enc.items() if k in CF_ENCODING_KEYS}
    try:
        loaded = await asyncio.to_thread(sample.load)  # off the loop (lazy zarr sources)
        encoded = encode_variable(loaded, name, spec.zarr_format)
    except (ValueError, TypeError, OverflowError) as e:
        raise TemplateError(f"cannot encode variable {name!r} with {sample.encoding}: {e}") from e
    codec_kwargs: dict[str, Any] = {k: enc[k] for k in ZARR_ENCODING_KEYS if k in enc}
    codec_kwargs.setdefault("compressors", spec.compressors)
    fill, attrs = zarr_fill_and_attrs(
        encoded, spec.zarr_format, codec_kwargs.pop("fill_value", None)
    )
    shape = tuple(len(full[d]) if d in full else n for d, n in var.sizes.items())
    chunks = tuple(min(chunking[str(d)], max(n, 1)) for d, n in zip(var.dims, shape, strict=True))
    for key in ("filters", "compressors"):  # v2 bitpack decoders learn the chunk size
        if key in codec_kwargs:
            codec_kwargs[key] = with_chunk_size(codec_kwargs[key], math.prod(chunks))
    try:
        await group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=encoded.dtype,
            fill_value=fill,
            attributes=attrs,
            **_dim_kwargs(var.dims, spec.zarr_format),
            **_codec_kwargs(codec_kwargs, spec.zarr_format),
        )
    except (ValueError, TypeError) as e:
        raise TemplateError(f"cannot create array {name!r}: {e}") from e


def _dim_kwargs(dims: tuple[Hashable, ...], fmt: int) -> dict[str, Any]:
    return {"dimension_names": [str(d) for d in dims]} if fmt == 3 else {}


def _codec_kwargs(kwargs: dict[str, Any], fmt: int) -> dict[str, Any]:
    out = dict(kwargs)
    comp = out.pop("compressors", ())
    if fmt == 2:
        comp = tuple(comp) if isinstance(comp, list | tuple) else (comp,)
        out["compressors"] = comp[:1] if comp else None
        if len(comp) > 1:
            raise TemplateError("zarr format 2 arrays take at most one compressor")
    else:
        out["compressors"] = comp
    return out


def _json_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_ROOT_DOCS = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zmetadata", ".zarray"})
_GROUP_DOCS = ("zarr.json", ".zgroup")  # the documents that make a group: written last
_ARRAY_KEY = re.compile(r"^[^/]+/(zarr\.json|\.zarray|\.zattrs|c/[0-9/]+|[0-9.]+)$")
#: Written before anything else when publishing, removed last: leftovers are ours only with it.
PUBLISH_MARKER = ".xarray_zarrwrite-publishing"
_MARKER_BODY = b'{"xarray_zarrwrite": "template publish in progress"}\n'


async def _interrupted_publish(target: Store) -> list[str] | None:
    """The keys an interrupted publish of ours left, or None when the target is not that.

    Ours means: the publish marker is there, no group document is (the group document is
    the last thing a publish writes, so a root means a finished template), and every other
    key is an array document or chunk, as a publish writes them. Anything else is kept.
    """
    keys = [k async for k in target.list()]
    if PUBLISH_MARKER not in keys or any(k in keys for k in _GROUP_DOCS):
        return None
    rest = [k for k in keys if k != PUBLISH_MARKER]
    if all(k in _ROOT_DOCS or _ARRAY_KEY.match(k) for k in rest):
        return rest
    return None


async def _clear(target: Store, mode: str) -> None:
    """Make room for the publish: refuse (``"w-"``) unless what is there is ours."""
    if await target.is_empty(""):
        return
    if mode == "w":
        await target.delete_dir("")
        return
    leftovers = await _interrupted_publish(target)
    if leftovers is None:
        raise StoreExistsError(
            f"the target {target} already holds data; nothing was changed. Pass mode='w' to "
            "replace it, or choose an empty location"
        )
    # the marker stays: a crash while clearing still leaves leftovers that are ours
    limit = asyncio.Semaphore(int(config.get("concurrency")))

    async def delete(key: str) -> None:
        async with limit:
            await target.delete(key)

    await asyncio.gather(*(delete(k) for k in leftovers))


async def _publish(staged: MemoryStore, target: Store, mode: str) -> None:
    """Copy ``staged`` to ``target``: marker first, arrays, root documents, group document
    last, then remove the marker."""
    await _clear(target, mode)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        await zasync.consolidate_metadata(staged)
    proto = default_buffer_prototype()
    await target.set(PUBLISH_MARKER, proto.buffer.from_bytes(_MARKER_BODY))
    keys = [k async for k in staged.list()]
    roots = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"}
    limit = asyncio.Semaphore(int(config.get("concurrency")))

    async def copy(key: str) -> None:
        async with limit:
            buf = await staged.get(key, prototype=proto)
            assert buf is not None
            await target.set(key, buf)

    await asyncio.gather(*(copy(k) for k in keys if k not in roots))
    await asyncio.gather(*(copy(k) for k in keys if k in roots and k not in _GROUP_DOCS))
    await asyncio.gather(*(copy(k) for k in keys if k in _GROUP_DOCS))  # publishes the rest
    await target.delete(PUBLISH_MARKER)
