"""``write_empty_chunks=False``: units that hold only the fill value, and their record.

With ``write_empty_chunks=False`` (xarray's and zarr's keyword, same meaning) a write unit
(the shard when the array is sharded, else the chunk) whose every value equals the array's
fill value (all NaN for a NaN fill) is not stored, and an object stored earlier for that
unit is deleted, so the unit reads back as fill value, exactly as zarr does.

:func:`~xarray_zarrwrite.check` counts "the object exists" as written. So that units skipped
this way are not reported missing, every write call that skips units of an array stores one
small *record* object under a reserved prefix of that array, listing their keys::

    t2m/.xzw_empty/3f2a...e1.json     {"units": ["c/12/0/0", "c/13/0/0"]}

Why objects, one per call and array, named by the digest of their content:

* never a shared attribute that writers read, modify and write back: concurrent writers
  (the normal case) store different objects, so none can lose another's entries, and no
  lock or compare-and-swap is needed on any store;
* one per call, not one per unit, so skipping units saves objects (the point of the option
  on object stores), not just bytes;
* named by content, so a re-run of the same write overwrites its own record (the same
  bytes) instead of adding one;
* under the array's own prefix, so replacing or deleting the array removes them with it; no
  zarr reader looks there, and a record key never parses as a unit key.

A unit is written when its object exists or a record lists it. Order of operations, so that
a crash never makes an unwritten unit look written: the objects of the empty units are
deleted first, the record is stored once every unit of the call is done (a crash in between
shows those units as missing, never as written). A unit stored later with data is written
whatever records say; records are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Final

from ._compat import default_buffer_prototype, with_config
from .errors import IcechunkTargetError, OptionError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import zarr
    from zarr.storage import StorePath

    from ._compat import ArraySpec, NDBuffer

__all__ = [
    "RECORD_DIR",
    "TEMPLATE_DEFAULT_ATTR",
    "check_write_empty_chunks",
    "configured",
    "is_empty",
    "is_record_key",
    "parse_record",
    "record_empty",
    "template_attrs",
]

#: Root attribute of a template made with ``to_template(write_empty_chunks=False)``: the
#: default of its region writes (absent: True).
TEMPLATE_DEFAULT_ATTR: Final = "xarray_zarrwrite:write_empty_chunks"
#: The reserved folder, under each array, of the records of units written empty.
RECORD_DIR: Final = ".xzw_empty"


def check_write_empty_chunks(value: object, store: object = None) -> bool | None:
    """``value`` checked as a ``write_empty_chunks`` keyword (None, True or False).

    Raises
    ------
    OptionError
        Not a bool or None.
    IcechunkTargetError
        ``False`` with an Icechunk target: Icechunk stores only zarr keys, so the record of
        units written empty could not be kept and :func:`~xarray_zarrwrite.check` would
        report them missing.
    """
    if value is not None and not isinstance(value, bool):
        raise OptionError(
            f"write_empty_chunks must be True, False or None, got {value!r} "
            f"({type(value).__name__})"
        )
    if value is False and store is not None:
        from ._icechunk import is_icechunk

        if is_icechunk(store):
            raise IcechunkTargetError(
                "write_empty_chunks=False cannot be used with an Icechunk target: Icechunk "
                "accepts only zarr keys, so the record of units written empty (which check() "
                "needs to tell them from unwritten ones) cannot be kept there; leave "
                "write_empty_chunks at its default (True)"
            )
    return value


def template_attrs(attrs: Mapping[Any, Any], write_empty_chunks: bool | None) -> dict[Any, Any]:
    """The root attributes of a template: ``attrs`` with the default of its region writes
    recorded when ``write_empty_chunks`` is False (an inherited record is dropped)."""
    out = {k: v for k, v in attrs.items() if k != TEMPLATE_DEFAULT_ATTR}
    if write_empty_chunks is False:
        out[TEMPLATE_DEFAULT_ATTR] = False
    return out


def configured(arr: zarr.Array[Any], write_empty_chunks: bool | None) -> zarr.Array[Any]:
    """``arr`` with ``write_empty_chunks`` in its runtime config (unchanged for None).

    The write path reads the option from the array's config (as zarr does), so the
    sharding codec also drops the empty inner chunks of a shard, as zarr does.
    """
    if write_empty_chunks is None:
        return arr
    return with_config(arr, {"write_empty_chunks": write_empty_chunks})


def is_empty(buf: NDBuffer, spec: ArraySpec) -> bool:
    """Whether every value of the unit ``buf`` equals the fill value (NaN equal to NaN).

    The same test zarr applies with ``write_empty_chunks=False``: a zarr v2 array without a
    fill value compares with its dtype's default (zero).
    """
    fill = spec.fill_value
    if fill is None:
        fill = spec.dtype.default_scalar()
    return bool(buf.all_equal(fill))


def record_body(keys: Iterable[str]) -> bytes:
    """The record of units written empty (their keys relative to the array)."""
    doc = {"units": sorted(set(keys)), "written_by": "xarray_zarrwrite", "empty": True}
    return json.dumps(doc, separators=(",", ":")).encode()


def record_key(body: bytes) -> str:
    """The key of a record relative to its array: named by its content."""
    return f"{RECORD_DIR}/{hashlib.sha256(body).hexdigest()[:32]}.json"


def is_record_key(key: str) -> bool:
    """Whether ``key`` (relative to an array) names a record of units written empty."""
    return key.startswith(RECORD_DIR + "/") and key.endswith(".json") and key.count("/") == 1


def parse_record(body: bytes | None) -> list[str]:
    """The unit keys a record lists (none for an unreadable or foreign object)."""
    if body is None:
        return []
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    units = doc.get("units") if isinstance(doc, dict) else None
    return [u for u in units if isinstance(u, str)] if isinstance(units, list) else []


async def record_empty(arr_path: StorePath, keys: Iterable[str]) -> None:
    """Store the record of the units ``keys`` of the array at ``arr_path`` (written empty:
    their objects already deleted)."""
    body = record_body(keys)
    proto = default_buffer_prototype()
    await (arr_path / record_key(body)).set(proto.buffer.from_bytes(body))
