"""Reference sources: kerchunk references (JSON or parquet) and VirtualiZarr virtual datasets.

They are byte-range indexes already: each variable's chunks as ``[url, offset, size]``, its
codecs as zarr v2 metadata. A reference source is opened through fsspec's reference filesystem
for its metadata (xarray's ``zarr`` engine reads it, on the client, in milliseconds) and read by
the tasks through the same byte-range path as an indexed HDF5 file (:mod:`._index`); a variable
whose references the index cannot describe (whole-file references, unknown codecs) is read
through xarray and the reference filesystem instead.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import xarray as xr

from ._index import SourceIndex, VarIndex, cf_encoding, decodes_like

#: ``SourceSpec.engine`` of reference sources.
ENGINE: Final = "kerchunk"


def is_reference_path(path: str) -> bool:
    """Whether a local path or URL names a kerchunk reference set: a ``.json`` file, or a
    directory (``.parq``/``.parquet``) holding kerchunk's parquet references."""
    bare = path.rstrip("/")
    if bare.endswith((".json", ".json.gz", ".json.zst")):
        return True
    if bare.endswith((".parq", ".parquet")):
        return True
    return (
        os.path.isdir(path)
        and os.path.exists(os.path.join(path, ".zmetadata"))
        and any(n.endswith(".parq") for _, _, files in os.walk(path) for n in files)
    )


def is_virtual_dataset(ds: xr.Dataset) -> bool:
    """Whether ``ds`` holds VirtualiZarr ``ManifestArray`` variables."""
    return any(type(v.data).__name__ == "ManifestArray" for v in ds.variables.values())


def virtual_references(ds: xr.Dataset) -> dict[str, Any]:
    """A VirtualiZarr dataset as kerchunk references (an in-memory dict)."""
    refs = ds.vz.to_kerchunk(format="dict")
    return dict(refs)


def open_references(
    fo: Any, storage_options: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> xr.Dataset:
    """A reference set (path, URL or dict) opened lazily through fsspec's reference filesystem."""
    options: dict[str, Any] = {"fo": fo}
    if storage_options:
        options["remote_options"] = dict(storage_options)
        protocol = storage_options.get("protocol")
        if protocol:
            options["remote_protocol"] = protocol
    kw = {k: v for k, v in kwargs.items() if k not in ("fo",)}
    return xr.open_dataset(
        "reference://", engine="zarr", consolidated=False, storage_options=options, **kw
    )


def _value(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str) and raw.startswith("base64:"):
        return base64.b64decode(raw[7:])
    return raw


def _meta(raw: Any) -> dict[str, Any]:
    raw = _value(raw)
    return dict(json.loads(raw.decode() if isinstance(raw, bytes) else raw))


def _fill(meta: Mapping[str, Any], dtype: np.dtype[Any]) -> Any:
    fill = meta.get("fill_value")
    if fill is None:
        return None
    if isinstance(fill, str) and fill in ("NaN", "Infinity", "-Infinity"):
        return dtype.type(float(fill.replace("Infinity", "inf")))
    if isinstance(fill, str):  # base64 of the raw value (zarr v2, non-float types)
        return np.frombuffer(base64.b64decode(fill), dtype=dtype)[0]
    return dtype.type(fill)


def _variable(refs: Any, name: str, var: xr.Variable, urls: dict[str, int]) -> VarIndex | None:
    try:
        meta = _meta(refs[f"{name}/.zarray"])
    except KeyError:
        return None
    if meta.get("zarr_format") != 2 or not isinstance(meta.get("dtype"), str):
        return None
    dtype = np.dtype(meta["dtype"])
    shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
    if shape != tuple(var.shape) or not decodes_like(dtype, var):
        return None
    codecs = [
        *(meta.get("filters") or []),
        *([meta["compressor"]] if meta.get("compressor") else []),
    ]
    try:
        import numcodecs

        for c in codecs:
            numcodecs.get_codec(dict(c))
    except (ValueError, TypeError, KeyError):
        return None
    sep = meta.get("dimension_separator") or "."
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True)) if shape else ()
    offsets = np.full(grid, -1, dtype=np.int64)
    sizes = np.zeros(grid, dtype=np.int64)
    url_ids = np.zeros(grid, dtype=np.int64)
    inline: dict[int, bytes] = {}
    for flat, pos in enumerate(np.ndindex(*grid)):
        key = f"{name}/{sep.join(map(str, pos)) if pos else '0'}"
        try:
            ref = refs[key]
        except KeyError:
            continue  # not stored: the fill value
        if isinstance(ref, list | tuple):
            if len(ref) != 3:  # a whole file: its size is not in the reference
                return None
            url, off, size = ref
            url = str(url).removeprefix("file://")
            url_ids[pos] = urls.setdefault(url, len(urls))
            offsets[pos], sizes[pos] = int(off), int(size)
        else:
            data = _value(ref)
            inline[flat] = data.encode() if isinstance(data, str) else bytes(data)
            offsets[pos] = 0
    return VarIndex(
        dims=tuple(map(str, var.dims)),
        shape=shape,
        chunks=chunks if shape else (),
        dtype=dtype.str,
        codecs=tuple(codecs),
        offsets=offsets,
        sizes=sizes,
        fill=_fill(meta, dtype),
        encoding=cf_encoding(var),
        url_ids=url_ids,
        inline=inline,
        order=str(meta.get("order", "C")),
        decoded=var.dtype.str,
    )


def index_references(
    fo: Any, ds: xr.Dataset, names: Sequence[str], storage_options: Mapping[str, Any]
) -> SourceIndex | None:
    """The byte-range index of a reference set (``ds``: it opened through xarray)."""
    import fsspec

    fs = fsspec.filesystem("reference", fo=fo, **_ref_options(storage_options))
    refs = fs.references
    urls: dict[str, int] = {}
    found = {}
    for name in names:
        var = ds.variables.get(name)
        if var is None:
            continue
        vi = _variable(refs, name, var, urls)
        if vi is not None:
            found[name] = vi
    if not found:
        return None
    ordered = sorted(urls, key=urls.__getitem__)
    return SourceIndex(tuple(ordered), found, dict(storage_options), None)


def _ref_options(storage_options: Mapping[str, Any]) -> dict[str, Any]:
    return {"remote_options": dict(storage_options)} if storage_options else {}
