"""Re-runs into an existing archive: the options a call asks for against the archive's.

A ``convert`` that resumes an archive writes with the archive's layout; an option the call
gives explicitly (not left at its default) that would make another archive is refused, naming
each difference, rather than silently ignored. The comparison builds the template the call
would make (metadata only, in memory) and compares, per array, the aspects the given options
decide."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from ..errors import ArchiveMismatchError, PartialChunkWarning

if TYPE_CHECKING:
    from .._open import TemplateInfo

#: convert's template options and their defaults; only options given otherwise are compared.
DEFAULTS: Final[Mapping[str, Any]] = {
    "chunks": None,
    "access_pattern": "balanced",
    "shards": None,
    "compression": "default",
    "packing": None,
    "encoding": None,
    "zarr_format": None,
}
#: Which aspects of an array each option decides.
_ASPECTS: Final[Mapping[str, tuple[str, ...]]] = {
    "chunks": ("chunks",),
    "access_pattern": ("chunks",),
    "shards": ("shards",),
    "compression": ("codecs",),
    "packing": ("packing",),
}
#: Which aspect each key of a variable's ``encoding`` entry decides.
_ENCODING_ASPECTS: Final[Mapping[str, str]] = {
    "chunks": "chunks",
    "preferred_chunks": "chunks",
    "shards": "shards",
    "compressors": "codecs",
    "compressor": "codecs",
    "filters": "codecs",
    "serializer": "codecs",
    "dtype": "packing",
    "scale_factor": "packing",
    "add_offset": "packing",
}


def given_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The template options not left at their defaults."""
    return {k: v for k, v in options.items() if k in DEFAULTS and not _is_default(k, v)}


def _is_default(name: str, value: Any) -> bool:
    default = DEFAULTS[name]
    if value is default:
        return True
    if default is None:  # None, or an empty mapping: nothing asked for
        return value is None or (isinstance(value, Mapping) and not value)
    # compression=None asks for no compression: only the default's own value is default
    return isinstance(value, str) and value == default


def check_rerun(
    info: TemplateInfo,
    time_dim: str,
    options: Mapping[str, Any],
    example: Callable[[], xr.Dataset],
) -> None:
    """Refuse options that differ from the archive's (:class:`ArchiveMismatchError`).

    ``example`` returns the data a template would be made from (called only when some option
    is given)."""
    given = given_options(options)
    if not given:
        return
    diffs: list[str] = []
    fmt = given.pop("zarr_format", None)
    if fmt is not None and int(fmt) != info.zarr_format:
        diffs.append(f"zarr_format: the archive is {info.zarr_format}, this call asks for {fmt}")
    if given:
        would = _would_be(info, time_dim, options, example())
        aspects = {a for k in given if k != "encoding" for a in _ASPECTS[k]}
        encoding: Mapping[str, Mapping[str, Any]] = given.get("encoding") or {}
        for name, have in info.zarr_arrays.items():
            want = would.get(name)
            if want is None or info.arrays[name].is_coord:
                continue
            mine = set(aspects)
            for key in encoding.get(name, {}):
                if key in _ENCODING_ASPECTS:
                    mine.add(_ENCODING_ASPECTS[key])
            if "packing" in mine and _packing(have) != _packing(want):
                mine.discard("codecs")  # a codec's element size follows the stored dtype
            diffs.extend(_compare(name, info, have, want, mine))
    if diffs:
        raise ArchiveMismatchError(
            "the archive was made with other options than this convert asks for:\n  "
            + "\n  ".join(diffs)
            + "\nleave these options out to resume the archive as it is, or pass "
            "resume=False to replace it"
        )


def _would_be(
    info: TemplateInfo, time_dim: str, options: Mapping[str, Any], example: xr.Dataset
) -> dict[str, zarr.Array[Any]]:
    """The arrays the template this call would make has (in memory)."""
    from .._template import to_template

    axis = info.indexes[time_dim]
    kw = {k: v for k, v in options.items() if k in DEFAULTS}
    if kw.get("zarr_format") is None:
        kw["zarr_format"] = info.zarr_format
    store = zarr.storage.MemoryStore()
    freq = _freq(axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        to_template(
            example,
            store,
            time_dim=time_dim,
            global_start=axis[0],
            global_end=axis[-1],
            freq=freq,
            mode="w",
            **kw,
        )
    group = zarr.open_group(store, mode="r")
    return dict(group.arrays())


def _freq(axis: pd.Index) -> Any:
    try:
        freq = xr.infer_freq(axis)  # type: ignore[no-untyped-call]  # xarray: unannotated
    except (TypeError, ValueError):
        freq = None
    if freq is None and len(axis) > 1:
        return pd.Timedelta(axis[1] - axis[0])
    return freq


def _codecs(arr: zarr.Array[Any]) -> str:
    parts = []
    for group in (arr.filters, (arr.serializer,), arr.compressors):
        for c in group or ():
            if c is None:
                continue
            cfg = c.to_dict() if hasattr(c, "to_dict") else c.get_config()
            parts.append(json.dumps(cfg, sort_keys=True, default=str))
    return "[" + ", ".join(parts) + "]"


def _packing(arr: zarr.Array[Any]) -> str:
    """Stored dtype and whether CF packing applies (its scale and offset follow the data's
    range, so they are not compared)."""
    attrs = dict(arr.attrs)
    packed = [k for k in ("scale_factor", "add_offset") if k in attrs]
    return f"stored as {np.dtype(arr.dtype)}" + (f" with {'/'.join(packed)}" if packed else "")


def _compare(
    name: str,
    info: TemplateInfo,
    have: zarr.Array[Any],
    want: zarr.Array[Any],
    aspects: set[str],
) -> list[str]:
    out: list[str] = []
    dims = info.arrays[name].dims
    if "chunks" in aspects and tuple(have.chunks) != tuple(want.chunks):
        what = ", ".join(
            f"chunks of {h} along {d!r} (asked for {w})"
            for d, h, w in zip(dims, have.chunks, want.chunks, strict=True)
            if h != w
        )
        out.append(f"{name!r}: the archive has {what}")
    if "shards" in aspects and have.shards != want.shards:
        out.append(f"{name!r}: the archive has shards {have.shards}, asked for {want.shards}")
    if "codecs" in aspects and _codecs(have) != _codecs(want):
        out.append(
            f"{name!r}: the archive compresses with {_codecs(have)}, asked for {_codecs(want)}"
        )
    if "packing" in aspects and _packing(have) != _packing(want):
        out.append(f"{name!r}: packing: the archive is {_packing(have)}, asked: {_packing(want)}")
    return out


def warn_partial_last_chunk(info: TemplateInfo, time_dim: str, names: list[str]) -> None:
    """Warn (:class:`PartialChunkWarning`) when an explicit ``global_end`` given as a date
    (its label at midnight) ends a sub-daily time axis one step into a new day, in the middle
    of a chunk: ``global_end="2024-12-31"`` with hourly data is read as 2024-12-31T00:00, so
    the last chunk holds 1 of its steps (the rest of that day is not in the archive)."""
    n = info.sizes.get(time_dim)
    axis = info.indexes[time_dim]
    if not n or n < 2 or not names or not isinstance(axis, pd.DatetimeIndex | xr.CFTimeIndex):
        return
    last = axis[-1]
    step = pd.Timedelta(axis[-1] - axis[-2])
    if step >= pd.Timedelta(days=1) or (last.hour, last.minute, last.second) != (0, 0, 0):
        return
    for name in names:
        a = info.arrays[name]
        c = a.chunks[a.dims.index(time_dim)]
        if n % c:
            warnings.warn(
                f"the archive's time axis ends at {last} (global_end is read as midnight of "
                f"that day): {name!r} has chunks of {c} along {time_dim!r}, so its last chunk "
                f"holds only {n % c} of {c} steps and the rest of that day is not in the "
                f"archive. To end with the day, pass its last step as global_end (e.g. "
                f"{last + step * (math.ceil(n / c) * c - n)!s}); to end before it, the "
                "step before",
                PartialChunkWarning,
                stacklevel=3,
            )
            return
