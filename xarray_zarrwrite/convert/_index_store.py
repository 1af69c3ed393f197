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

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

import zarr

from ._index import from_json, to_json
from ._sources import SourceSchema, SourceSpec

logger = logging.getLogger(__name__)

#: The subgroup of the archive holding the index of its sources.
INDEX_GROUP: Final = "xarray_zarrwrite_index"
_KEY: Final = "xarray_zarrwrite:sources"


def load_saved(target: Any, specs: Sequence[SourceSpec]) -> list[SourceSpec]:
    """``specs`` with the saved index of each source the archive has one for (the scan
    checks that the file is unchanged before it uses it)."""
    try:
        group = zarr.open_group(target, path=INDEX_GROUP, mode="r")
        saved: dict[str, Any] = dict(group.attrs.get(_KEY, {}))  # type: ignore[arg-type]
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
    docs = {
        s.path: to_json(s.index)
        for s in specs
        if s.path is not None and s.index is not None and s.index.stamp is not None
    }
    if not docs:
        return
    try:
        try:
            group = zarr.open_group(target, path=INDEX_GROUP, mode="r+")
            old: dict[str, Any] = dict(group.attrs.get(_KEY, {}))  # type: ignore[arg-type]
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
            # the archive's own format: a v3 subgroup in a v2 archive would add a root
            # zarr.json beside .zgroup, and zarr would then read the archive as v3 (empty)
            fmt = zarr.open_group(target, mode="r").metadata.zarr_format
            group = zarr.open_group(target, path=INDEX_GROUP, mode="a", zarr_format=fmt)
            old = {}
        old.update(docs)
        json.dumps(old)  # refuse anything that would not round-trip
        group.attrs[_KEY] = old
    except Exception as exc:  # noqa: BLE001  (keeping the index is optional)
        logger.warning("could not keep the source index in the archive: %s", exc)
