"""Templates: metadata-only Zarr archives that span the full extent of a dataset.

Everything is built first in a private in-memory store (validation included), then
published to the target with all keys written concurrently and the root metadata last, so a
failure before publishing writes nothing, and a crash while publishing never leaves a root that
claims arrays which are not there.
"""

from __future__ import annotations

import asyncio
import math
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

from ._chunks import plan_chunks, plan_shards
from ._compat import sync
from ._compression import parse_compression
from ._empty import check_write_empty_chunks, template_attrs
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
from ._extent import full_extent
from ._extent import time_axis as _time_axis
from ._groups import NOT_CONSOLIDATED, consolidate_root, ensure_parents, tree_templates
from ._icechunk import transactional
from ._publish import PUBLISH_MARKER, publish
from ._store import ensure_writable, leaves_no_empty_root, resolve_store
from .codecs.bitpack_v2 import with_chunk_size
from .config import config
from .errors import ChunkSpecError, TemplateError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from ._store import StoreLike

# _time_axis: re-exported for convert/_placement.py (now in _extent.time_axis)
__all__ = ["PUBLISH_MARKER", "TemplateSpec", "_time_axis", "open_template", "to_template"]

_MODES = ("w-", "w")
#: Uncompressed bytes ``shards="auto"`` aims at per shard (tunable with ``target_shard_mb``).
DEFAULT_TARGET_SHARD_MB = 256.0


@dataclass(frozen=True)
class TemplateSpec:
    """Options of :func:`to_template`, parsed and validated once."""

    time_dim: str | None
    chunks: Mapping[str, int | None] | str | None
    access_pattern: str
    target_bytes: int
    shards: Mapping[str, int | None] | str | None
    target_shard_bytes: int
    compressors: tuple[Any, ...]
    encoding: Mapping[str, Mapping[str, Any]]
    zarr_format: ZarrFormat
    mode: str
    consolidated: bool = True


@leaves_no_empty_root(1)
@transactional("to_template")
def to_template(
    ds: xr.Dataset | xr.DataArray | xr.DataTree,
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
    shards: Mapping[str, int | None] | str | None = None,
    target_shard_mb: float = DEFAULT_TARGET_SHARD_MB,
    compression: Any = "default",
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    packing: Mapping[str, Any] | None = None,
    zarr_format: int = 3,
    storage_options: Mapping[str, Any] | None = None,
    mode: str = "w-",
    consolidated: bool = True,
    group: str | None = None,
    branch: str | None = None,
    message: str | None = None,
    write_empty_chunks: bool | None = None,
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
    shards
        Zarr v3 shards (one stored object holding many chunks): ``{dim: size}``, each a
        multiple of the dimension's chunk size (``-1``/None for the whole dimension; a
        dimension left out gets shards one chunk wide), ``"auto"`` (chunks grouped by
        ``access_pattern`` into shards of about ``target_shard_mb``), or None (no shards).
        Region writes must then cover whole shards (see :doc:`/templates`).
    target_shard_mb
        Uncompressed shard size ``shards="auto"`` aims at (default 256 MiB).
    compression
        ``"default"`` (blosc zstd level 3 with shuffle), None, a string such as
        ``"blosc:lz4:5:bitshuffle"``, ``"zstd:3"``, ``"gzip:5"``, or codec object(s).
    encoding
        Per-variable xarray-style overrides: ``dtype``, ``units``, ``calendar``,
        ``scale_factor``, ``add_offset``, ``_FillValue``, ``compressors``, ``serializer``,
        ``filters``, and ``chunks``/``shards`` (tuples in the variable's dimension order) as
        in :meth:`xarray.Dataset.to_zarr`. A variable's entry replaces its encoding.
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
    group
        Write the template into this group of ``store`` (``"a/b"``), as
        ``to_zarr(group=)``; region writes then take the same ``group=``. A
        :class:`xarray.DataTree` gets one template per node that has data variables, in the
        node's group (under ``group``), with the same options.
    consolidated
        Write consolidated metadata (default, as :meth:`xarray.Dataset.to_zarr`); readers
        then open the template with one read. :func:`extend` keeps it up to date.
    branch, message
        With an Icechunk ``Repository`` as ``store``: the branch to commit the template to
        (default ``"main"``) and the commit message (see :doc:`/icechunk`). An Icechunk
        ``Session`` is written to and committed by the caller.
    write_empty_chunks
        The default of the template's region writes (each may override it): ``False``
        records it in the root attribute ``xarray_zarrwrite:write_empty_chunks``, and units
        of only fill value are then recorded instead of stored (see
        :func:`~xarray_zarrwrite.write_region`); None or True: every unit is stored.

    Returns
    -------
    xarray.Dataset
        The template, opened lazily from the store (an :class:`xarray.DataTree` for
        DataTree input).

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
    if isinstance(ds, xr.DataTree):
        kwargs = {k: v for k, v in locals().items() if k not in ("ds", "store", "group")}
        return tree_templates(ds, store, group, kwargs)  # type: ignore[return-value]
    ds = _as_dataset(ds)
    ds = ds.copy(deep=False)  # the default of region writes lives in the root attributes
    ds.attrs = template_attrs(ds.attrs, check_write_empty_chunks(write_empty_chunks, store))
    if zarr_format not in ZARR_FORMATS:
        raise TemplateError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if mode not in _MODES:
        raise TemplateError(f"mode must be one of {list(_MODES)}, got {mode!r}")
    if target_chunk_mb is None:
        target_chunk_mb = config.get("target_chunk_mb")
    if not isinstance(target_chunk_mb, int | float) or not target_chunk_mb > 0:
        raise ChunkSpecError(f"target_chunk_mb must be a positive number, got {target_chunk_mb!r}")
    if not isinstance(target_shard_mb, int | float) or not target_shard_mb > 0:
        raise ChunkSpecError(f"target_shard_mb must be a positive number, got {target_shard_mb!r}")
    spec = TemplateSpec(
        time_dim=time_dim,
        chunks=chunks,
        access_pattern=access_pattern,
        target_bytes=int(target_chunk_mb * 2**20),
        shards=shards,
        target_shard_bytes=int(target_shard_mb * 2**20),
        compressors=parse_compression(compression, zarr_format),
        encoding=_parse_encoding(ds, encoding),
        zarr_format=zarr_format,
        mode=mode,
        consolidated=bool(consolidated),
    )
    _check_shard_format(spec)
    full = full_extent(ds, time_dim, global_start, global_end, freq, extent)
    chunking, sharding = _chunking(ds, full, spec)
    packed = _packing_encoding(ds, packing, zarr_format)
    staged = MemoryStore()
    sync(_stage(ds, full, (chunking, sharding), packed, spec, staged))
    target = resolve_store(store, storage_options=storage_options, group=group)
    ensure_writable(target)
    sync(publish(staged, target, mode, consolidated=spec.consolidated))
    if group is not None:
        base = resolve_store(store, storage_options=storage_options)
        ensure_parents(base, group, zarr_format)
        if spec.consolidated:  # as to_zarr: readers of the group use the root's
            consolidate_root(base)
    return open_template(target)


def open_template(store: Store) -> xr.Dataset:
    """Open a template lazily with plain xarray (consolidated metadata when present)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message=NOT_CONSOLIDATED, category=RuntimeWarning)
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
    allowed = set(CF_ENCODING_KEYS) | set(ZARR_ENCODING_KEYS) | {"chunks", "shards"}
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
            hint = " (use chunks= for chunking)" if "chunksizes" in unknown else ""
            raise TemplateError(
                f"encoding[{name!r}] has unsupported keys {sorted(unknown)}{hint}; allowed: "
                f"{sorted(allowed)}"
            )
        out[str(name)] = dict(enc)
    return out


def _check_shard_format(spec: TemplateSpec) -> None:
    with_shards = spec.shards is not None or any("shards" in e for e in spec.encoding.values())
    if with_shards and spec.zarr_format != 3:
        raise ChunkSpecError(
            f"shards are a Zarr v3 feature; got shards with zarr_format={spec.zarr_format}. "
            "Use zarr_format=3, or drop shards="
        )


Layout = tuple[dict[str, int], dict[str, int] | None]  # chunk and shard size of each dim


def _chunking(ds: xr.Dataset, full: dict[str, pd.Index], spec: TemplateSpec) -> Layout:
    sizes = {str(d): (len(full[d]) if d in full else n) for d, n in ds.sizes.items()}
    chunks = spec.chunks
    if chunks is None and ds.chunks:
        chunks = {str(d): c[0] for d, c in ds.chunks.items() if str(d) not in full}
    itemsize = max(v.dtype.itemsize for v in ds.data_vars.values())
    planned = plan_chunks(
        sizes,
        chunks,
        itemsize=itemsize,
        time_dim=spec.time_dim,
        access_pattern=spec.access_pattern,
        target_bytes=spec.target_bytes,
    )
    sharded = plan_shards(
        sizes,
        planned,
        spec.shards,
        itemsize=itemsize,
        time_dim=spec.time_dim,
        access_pattern=spec.access_pattern,
        target_bytes=spec.target_shard_bytes,
    )
    return planned, sharded


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
    chunking: Layout,
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
            user = spec.encoding.get(name)
            own = {} if user is not None else cf_encoding(var.encoding)  # replaced, as xarray
            user = user or {}
            if name in ds.indexes or (name in ds.coords and not extended & set(map(str, var.dims))):
                # coordinates that do not grow are written once, in full, with their values
                # loading may read lazily opened sources through zarr's own sync API: off the loop
                values = await asyncio.to_thread(_full_variable, var, name, full)
                layout_keys = ("chunks", "shards")  # coordinates are stored whole
                user = {k: v for k, v in user.items() if k not in layout_keys}
                jobs.append(_create_coordinate(group, name, values, {**own, **user}, fmt))
            else:
                enc = {**own, **packed.get(name, {}), **user}
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
    enc: Mapping[str, Any],
    fmt: ZarrFormat,
) -> None:
    var = var.copy(deep=False)
    var.encoding = complete_fill(var.dtype, dict(enc))
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
    chunking: Layout,
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
    chunks, shards = _array_layout(name, var.dims, shape, chunking, enc)
    if shards is not None:
        codec_kwargs["shards"] = shards
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


def _array_layout(
    name: str,
    dims: tuple[Hashable, ...],
    shape: tuple[int, ...],
    layout: Layout,
    enc: Mapping[str, Any],
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Chunk and shard shape of one array: ``encoding`` first, else the planned layout."""
    chunking, sharding = layout
    chunks = tuple(min(chunking[str(d)], max(n, 1)) for d, n in zip(dims, shape, strict=True))
    chunks = _shape_from_encoding(name, "chunks", enc.get("chunks"), shape) or chunks
    shards: tuple[int, ...] | None = None
    if sharding is not None:
        shards = tuple(
            c if c >= n else min(sharding[str(d)], math.ceil(n / c) * c)
            for d, c, n in zip(dims, chunks, shape, strict=True)
        )
    shards = _shape_from_encoding(name, "shards", enc.get("shards"), shape) or shards
    if shards is not None:
        bad = [str(d) for d, c, s in zip(dims, chunks, shards, strict=True) if s % c]
        if bad:
            raise ChunkSpecError(
                f"variable {name!r}: shards {shards} are not multiples of its chunks {chunks} "
                f"along {bad}; every shard must hold whole chunks"
            )
    return chunks, shards


def _shape_from_encoding(
    name: str, key: str, value: Any, shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, list | tuple) and len(value) == len(shape)
    ok = ok and all(type(v) is int and v > 0 for v in value)
    if not ok:
        raise ChunkSpecError(
            f"encoding[{name!r}][{key!r}] must be a tuple of {len(shape)} positive integers "
            f"(one per dimension of the variable), got {value!r}"
        )
    return tuple(int(v) for v in value)


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
