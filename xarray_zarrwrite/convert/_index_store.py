"""The byte-range index kept next to the archive, so that a resumed convert does not index
its sources again.

It is kept *inside* the archive, as the attributes of a subgroup named :data:`INDEX_GROUP`
(one zarr group, no arrays): plain zarr readers see an ordinary, empty group (no "not
recognized as a component" warning from zarr 3.4 when iterating members, no variable in
``xr.open_zarr``), it travels with the archive to any store (local, S3, memory) and it is
replaced, not merged, when the archive is (``resume=False``). Entries are keyed by the source's
path and stamped with its size and modification time: a file that changed is indexed again.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import numpy as np
import zarr

from ._index import SourceIndex, VarIndex
from ._sources import SourceSchema, SourceSpec

logger = logging.getLogger(__name__)

#: The subgroup of the archive holding the index of its sources.
INDEX_GROUP: Final = "xarray_zarrwrite_index"
_KEY: Final = "xarray_zarrwrite:sources"
#: Since 2026-12: the same mapping as one zlib-compressed, base64 JSON text. Thousands of
#: entries as plain attributes took zarr's (pure Python) JSON encoder 0.4 s for 1,461 daily
#: files; look-alike files' entries differ only in path and stamp, and compress 100-fold.
_PACKED: Final = "xarray_zarrwrite:sources.zlib"


def _read(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The saved entries, from either form (archives of earlier versions have ``_KEY``)."""
    if _PACKED in attrs:
        text = zlib.decompress(base64.b64decode(str(attrs[_PACKED])))
        return dict(json.loads(text))
    return dict(attrs.get(_KEY, {}))


def load_saved(target: Any, specs: Sequence[SourceSpec]) -> list[SourceSpec]:
    """``specs`` with the saved index of each source the archive has one for (the scan
    checks that the file is unchanged before it uses it)."""
    try:
        group = zarr.open_group(target, path=INDEX_GROUP, mode="r")
        saved = _read(group.attrs)
    except Exception:  # noqa: BLE001  (no saved index, or an unreadable one: index again)
        return list(specs)
    out = []
    for spec in specs:
        doc = saved.get(spec.path) if spec.path is not None else None
        if doc is not None and spec.index is None:
            try:
                spec = replace(spec, index=from_json(doc, spec.storage_options))
            except (KeyError, ValueError, TypeError) as exc:
                logger.info("saved index of %s unusable (%s): indexing it again", spec.path, exc)
        out.append(spec)
    return out


def attach(specs: Sequence[SourceSpec], schemas: Sequence[SourceSchema]) -> list[SourceSpec]:
    """``specs`` carrying the index their scan made (or confirmed)."""
    return [
        replace(s, index=sc.index) if s.path is not None else s
        for s, sc in zip(specs, schemas, strict=True)
    ]


def save(target: Any, specs: Sequence[SourceSpec]) -> None:
    """Keep the index of every indexed local file in the archive (see the module doc)."""
    shared: dict[int, dict[str, Any]] = {}  # look-alike files share their VarIndex objects
    docs = {
        s.path: to_json(s.index, shared)
        for s in specs
        if s.path is not None and s.index is not None and s.index.stamp is not None
    }
    if not docs:
        return
    try:
        try:
            group = zarr.open_group(target, path=INDEX_GROUP, mode="r+")
            old = _read(group.attrs)
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
            # the archive's own format: a v3 subgroup in a v2 archive would add a root
            # zarr.json beside .zgroup, and zarr would then read the archive as v3 (empty)
            fmt = zarr.open_group(target, mode="r").metadata.zarr_format
            group = zarr.open_group(target, path=INDEX_GROUP, mode="a", zarr_format=fmt)
            old = {}
        old.update(docs)
        text = json.dumps(old)  # refuse anything that would not round-trip
        packed = base64.b64encode(zlib.compress(text.encode(), 6)).decode()
        group.attrs.put({_PACKED: packed})  # replaces the older form, if any
    except Exception as exc:  # noqa: BLE001  (keeping the index is optional)
        logger.warning("could not keep the source index in the archive: %s", exc)


# --- the JSON form of an index ------------------------------------------------------


def _pack(a: np.ndarray | None) -> Any:
    if a is None:
        return None
    raw = np.ascontiguousarray(a, dtype="<i8").tobytes()
    return {"shape": list(a.shape), "z": base64.b64encode(zlib.compress(raw, 1)).decode()}


def _unpack(d: Any) -> np.ndarray | None:
    if d is None:
        return None
    raw = zlib.decompress(base64.b64decode(d["z"]))
    return np.frombuffer(raw, dtype="<i8").reshape(d["shape"]).astype(np.int64)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"__nd__": v.dtype.str, "v": [_jsonable(x) for x in v.tolist()]}
    if isinstance(v, np.generic):
        return {"__np__": v.dtype.str, "v": _jsonable(v.item())}
    if isinstance(v, float) and not np.isfinite(v):
        return {"__f__": repr(v)}
    if isinstance(v, bytes):
        return {"__b__": base64.b64encode(v).decode()}
    return v


def _from_json(v: Any) -> Any:
    if isinstance(v, dict):
        if "__nd__" in v:
            return np.array([_from_json(x) for x in v["v"]], dtype=v["__nd__"])
        if "__np__" in v:
            return np.array(_from_json(v["v"]), dtype=v["__np__"])[()]
        if "__f__" in v:
            return float(v["__f__"])
        if "__b__" in v:
            return base64.b64decode(v["__b__"])
    return v


def to_json(index: SourceIndex, shared: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A JSON-able form of ``index`` (kept in the archive, see :mod:`._index_store`);
    ``shared`` keeps the forms of variable indexes by identity, for indexes that share them."""
    memo = {} if shared is None else shared
    out = {}
    for n, v in index.variables.items():
        if id(v) not in memo:
            memo[id(v)] = _variable_json(v)
        out[n] = memo[id(v)]
    return {
        "urls": list(index.urls),
        "stamp": list(index.stamp) if index.stamp else None,
        "variables": out,
    }


def _variable_json(v: VarIndex) -> dict[str, Any]:
    return {
        "dims": list(v.dims),
        "shape": list(v.shape),
        "chunks": list(v.chunks),
        "dtype": v.dtype,
        "codecs": [dict(c) for c in v.codecs],
        "offsets": _pack(v.offsets),
        "sizes": _pack(v.sizes),
        "url_ids": _pack(v.url_ids),
        "masks": _pack(v.masks),
        "fill": _jsonable(v.fill),
        "encoding": {k: _jsonable(x) for k, x in v.encoding.items()},
        "inline": {str(k): _jsonable(b) for k, b in v.inline.items()},
        "order": v.order,
        "decoded": v.decoded,
    }


def from_json(doc: Mapping[str, Any], storage_options: Mapping[str, Any]) -> SourceIndex:
    variables = {}
    for n, v in doc["variables"].items():
        offsets, sizes = _unpack(v["offsets"]), _unpack(v["sizes"])
        assert offsets is not None and sizes is not None
        variables[n] = VarIndex(
            dims=tuple(v["dims"]),
            shape=tuple(v["shape"]),
            chunks=tuple(v["chunks"]),
            dtype=v["dtype"],
            codecs=tuple(v["codecs"]),
            offsets=offsets,
            sizes=sizes,
            url_ids=_unpack(v["url_ids"]),
            masks=_unpack(v["masks"]),
            fill=_from_json(v["fill"]),
            encoding={k: _from_json(x) for k, x in v["encoding"].items()},
            inline={int(k): _from_json(b) for k, b in v["inline"].items()},
            order=v["order"],
            decoded=v.get("decoded", ""),
        )
    stamp = (int(doc["stamp"][0]), int(doc["stamp"][1])) if doc.get("stamp") else None
    return SourceIndex(tuple(doc["urls"]), variables, dict(storage_options), stamp)
