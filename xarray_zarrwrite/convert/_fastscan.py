"""Scanning thousands of look-alike files: one full scan, then a byte comparison per file.

Daily (or hourly) files of one product are laid out identically: the same variables, chunks,
attributes and object headers at the same offsets, only the data and the time labels differ.
A full h5py scan (:mod:`._h5scan`) costs 10-13 ms per file, nearly all of it in h5py's
per-object and per-attribute Python calls, and it reads the same metadata every time.

Here the first file of a given size is scanned fully and becomes a :class:`Prototype`: its
schema, its index and every byte of it that is not data (the "skeleton": superblock, object
headers, attributes, B-trees, heaps, coordinate values; a few KB). Another file of the same
size is read at the skeleton's byte ranges only and compared. Equal bytes mean equal metadata,
so the prototype's schema and index describe that file too, except for what this module reads
itself from the compared bytes:

- the time labels, read from the time variable's data ranges (excluded from the comparison:
  the prototype's layout message, which is compared, says where they are) and decoded with
  xarray's own decoder, exactly as the full scan decodes them;
- the fixed-length text attributes (netCDF ``NC_CHAR``) of the time variable and of the root
  group, whose values may differ from file to file at the same length: xarray writes
  ``units="days since <the file's first day>"``, CDO and NCO a per-file ``history``;
- the CF packing of the data variables (``scale_factor``, ``add_offset``): ERA5 files from the
  CDS are packed to int16 per file.

The spans of those values are found by walking the object headers and dense attribute heaps
(:mod:`._h5bytes`) and checked against the prototype's own values; only those spans and the
checksums covering them may differ. The time variable's texts and the packings are read back
from the file's bytes; the root group's texts are not part of a scan's schema. Texts that
xarray reads to decode other variables (``coordinates``, ``bounds``) must not differ.

Any other difference (other coordinates, a scalar member label, another chunk layout, a data
variable's attributes) fails the comparison and the file is scanned fully, so the result is
always what the full scan gives (tests compare every field).

Measured on 1,461 daily files of 120 x 240 float32 (``asv_bench/compare_convert.py``): see the
figures in docs/benchmarks.md ("Conversion of many files").
"""

from __future__ import annotations

import importlib
import os
import struct
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import xarray as xr

from .._compat import decode_cf_datetime, decode_cf_variables
from ._h5bytes import text_spans
from ._index import RangeReader, SourceIndex, VarIndex, _h5_variable, _pread_into, read_raw
from ._timelabels import decode_labels

if TYPE_CHECKING:
    from ._sources import SourceSchema

#: Text attributes that xarray's CF decoding reads to decode *other* variables: never allowed
#: to differ between look-alike files (see :func:`_inspect`).
_DECODING_TEXTS: Final = frozenset({"coordinates", "bounds"})
#: Set to "0" to scan every file fully (no byte comparison with a look-alike).
FAST_SCAN_ENV: Final = "XARRAY_ZARRWRITE_FAST_SCAN"
#: Prototypes kept per process, and their skeletons' bytes in all: enough for files per
#: variable (one kind of file per variable) interleaved by date, bounded in memory.
_KEEP: Final = 64
_KEEP_BYTES: Final = 64 << 20
#: Fully scanned files remembered until a second file of their size comes (their schemas).
_KEEP_DEFERRED: Final = 256
#: Skeletons larger than this are not kept (a file that is mostly metadata).
_MAX_SKELETON: Final = 4 << 20


@dataclass(frozen=True)
class _Text:
    """A fixed-length text attribute's value bytes, as positions in the skeleton buffer."""

    owner: str  # the time variable's name, "" for the root group, or a data variable's
    key: str
    start: int
    stop: int
    dtype: str | None = None  # a number's stored dtype (a data variable's packing); None: text


@dataclass(frozen=True, eq=False)
class Prototype:
    """The first file of a kind: its scan and the bytes another file must share with it."""

    size: int
    ranges: tuple[tuple[int, int], ...]  # the skeleton: file ranges outside any data
    reference: np.ndarray  # the prototype's skeleton bytes (uint8, read-only)
    allowed: np.ndarray  # per skeleton byte: may differ (a text value, a header checksum)
    texts: tuple[_Text, ...]
    time_name: str
    time_vi: VarIndex  # where the time labels lie (uncompressed or numcodecs-readable)
    time_attrs: Mapping[str, Any]  # as netCDF4-python presents them (before decoding)
    schema: SourceSchema


# --- using a prototype -----------------------------------------------------------------------


def scan_like(path: str, label: str, proto: Prototype) -> SourceSchema | None:
    """The schema of ``path`` if it shares the prototype's skeleton (up to its time labels
    and text attributes); None: scan it fully."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size != proto.size:
            return None
        buf = _read_ranges(fd, proto.ranges, len(proto.reference))
        if buf is None:
            return None
        differ = np.flatnonzero(buf != proto.reference)
        if differ.size and not proto.allowed[differ].all():
            return None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    try:
        raw = _read_times(path, proto)
    except (OSError, ValueError):
        return None
    attrs = dict(proto.time_attrs)
    packing: dict[str, dict[str, Any]] = {}
    for text in proto.texts:
        value = buf[text.start : text.stop]
        if text.dtype is not None:  # a data variable's packing, when not the prototype's
            if (value != proto.reference[text.start : text.stop]).any():
                packing.setdefault(text.owner, {})[text.key] = _number(value, text.dtype)
        elif text.owner == proto.time_name:
            attrs[text.key] = _text(value.tobytes())
    try:
        times, calendar = decode_times(proto.time_name, proto.time_vi.dims, raw, attrs)
    except (ValueError, TypeError, OverflowError):
        return None  # undecodable here: the full scan says why
    variables = dict(proto.schema.index.variables) if proto.schema.index is not None else {}
    for name, encoding in packing.items():
        variables[name] = replace(
            variables[name], encoding={**variables[name].encoding, **encoding}
        )
    index = SourceIndex((path,), variables, stamp=(st.st_size, st.st_mtime_ns))
    return replace(proto.schema, label=label, times=times, calendar=calendar, index=index)


def _read_ranges(fd: int, ranges: Sequence[tuple[int, int]], total: int) -> np.ndarray | None:
    buf = np.empty(total, dtype=np.uint8)
    view = memoryview(buf)
    at = 0
    for start, stop in ranges:
        n = stop - start
        if _pread_into(fd, view[at : at + n], start) != n:
            return None
        at += n
    return buf


def _read_times(path: str, proto: Prototype) -> np.ndarray:
    """The raw time labels of ``path``, through the index reader (one read of contiguous
    rows, numcodecs for filtered chunks)."""
    with RangeReader(SourceIndex((path,), {proto.time_name: proto.time_vi})) as reader:
        return read_raw(reader, proto.time_vi, [slice(None)])


#: Attributes of a time variable that no xarray decoder reads besides units and calendar:
#: with only these, the labels decode with ``decode_cf_datetime`` alone (what
#: ``CFDatetimeCoder.decode`` applies), 5x cheaper than ``decode_cf_variables``.
_PLAIN_TIME_ATTRS: Final = frozenset(
    {"units", "calendar", "long_name", "standard_name", "axis", "bounds", "comment"}
)


def decode_times(
    name: str, dims: tuple[str, ...], raw: np.ndarray, attrs: Mapping[str, Any]
) -> tuple[pd.Index, str | None]:
    """xarray's decoding of a raw time variable, as ``xr.open_dataset`` decodes it."""
    from ._sources import dim_index, time_calendar

    units = attrs.get("units")
    if (
        set(attrs) <= _PLAIN_TIME_ATTRS
        and isinstance(units, str)
        and "since" in units
        and raw.dtype.kind in "iuf"
        and raw.dtype.isnative
    ):
        calendar = attrs.get("calendar")
        values = decode_labels(raw, units, calendar, _reference_decode)
        if values is None:
            values = _reference_decode(raw, units, calendar)
        if values.dtype.kind == "O":
            times: pd.Index = xr.CFTimeIndex(values, name=name)  # type: ignore[no-untyped-call]
        elif values.dtype.kind == "M":  # what pd.Index makes of it, in half the time
            times = pd.DatetimeIndex(values, name=name)
        else:
            times = pd.Index(values, name=name)
        found = calendar or getattr(times, "calendar", None)  # as time_calendar() says
        return times, None if found is None else str(found)
    variable = xr.Variable(dims, raw, attrs=dict(attrs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as the full scan: the same decoding, warned there
        decoded, _, _ = decode_cf_variables({name: variable}, {})
    var = decoded[name]
    found = dim_index(xr.Dataset(coords=xr.Coordinates({name: var}, indexes={})), name)
    if found is None:
        raise ValueError(f"{name} is not a dimension coordinate")
    return found, time_calendar(var, found)


#: The time decoder ``decode_cf_variables`` makes by default (``decode_times=True``).
_CODER: Final = xr.coders.CFDatetimeCoder(use_cftime=None)


def _reference_decode(raw: np.ndarray, units: str, calendar: str | None) -> np.ndarray:
    """What ``CFDatetimeCoder.decode`` makes of plain labels: ``decode_cf_datetime``."""
    return np.asarray(decode_cf_datetime(raw, units, calendar, _CODER.use_cftime, _CODER.time_unit))


# --- making a prototype ----------------------------------------------------------------------


def build(path: str, schema: SourceSchema, time_dim: str) -> Prototype | None:
    """A prototype from the fully scanned ``path`` (its ``schema``), or None when this module
    cannot stand in for the full scan of files like it. The caller holds the HDF5 lock."""
    if schema.index is None or schema.index.stamp is None:
        return None
    h5py: Any = importlib.import_module("h5py")
    try:
        with h5py.File(path, "r") as f:
            found = _inspect(f, h5py, time_dim, schema)
        if found is None:
            return None
        time_vi, time_attrs, texts_at = found
        st = os.stat(path)
        size = st.st_size
        if (size, st.st_mtime_ns) != tuple(schema.index.stamp):
            return None  # changed since the scan: its bytes would not be the schema's
        ranges = _skeleton(size, [*schema.index.variables.values(), time_vi])
        total = sum(b - a for a, b in ranges)
        if total > _MAX_SKELETON:
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            reference = _read_ranges(fd, ranges, total)
            if os.fstat(fd).st_mtime_ns != st.st_mtime_ns:
                return None  # written to while read
        finally:
            os.close(fd)
    except (OSError, ValueError, TypeError, KeyError, struct.error):
        return None
    if reference is None:
        return None
    marks = _allowed(ranges, reference, texts_at)
    if marks is None:
        return None
    allowed, texts = marks
    reference.flags.writeable = False
    proto = Prototype(
        size, tuple(ranges), reference, allowed, texts, time_dim, time_vi, time_attrs, schema
    )
    # the self-check: decoding the prototype's own time labels here gives the full scan's
    raw = _read_times(path, proto)
    times, calendar = decode_times(time_dim, time_vi.dims, raw, time_attrs)
    same = times.equals(schema.times) and type(times) is type(schema.times)
    if not same or times.dtype != schema.times.dtype or calendar != schema.calendar:
        return None
    return proto


_TextAt = tuple[str, str, tuple[int, int], list[tuple[int, int]], str | None]


def _inspect(
    f: Any, h5py: Any, time_dim: str, schema: SourceSchema
) -> tuple[VarIndex, dict[str, Any], list[_TextAt]] | None:
    """The time variable's index and raw attributes, and the attribute values that may
    differ: the text attributes of the time variable and the root group, the packing of the
    data variables: (owner, key, value span, checksums, a number's dtype or None)."""
    from ._h5scan import _HIDDEN, _attrs, _variable

    dset = f.get(time_dim)
    if not isinstance(dset, h5py.Dataset) or dset.ndim != 1:
        return None
    keys = list(dset.attrs)
    if _variable(dset, h5py, keys, True).dims != (time_dim,):  # as the full scan reads it
        return None
    time_vi = _h5_variable(dset, (time_dim,), {})
    if time_vi is None:
        return None
    texts_at: list[_TextAt] = []
    # the time variable's own texts (not netCDF-C's, e.g. a dimension's NAME) and the root's,
    # but none that xarray's decoding reads for other variables: "coordinates" (which
    # variables are coordinates, on any variable or the root) and "bounds" (whose variable
    # gets the time's units)
    root = set(f.attrs) - _DECODING_TEXTS
    for owner, obj, names in (
        (time_dim, dset, set(keys) - _HIDDEN - _DECODING_TEXTS),
        ("", f["/"], root),
    ):
        spans = text_spans(f, h5py, obj, names)
        if spans is None:
            continue  # nothing of this object may differ
        for key, (span, checksums) in spans.texts.items():
            texts_at.append((owner, key, span, checksums, None))
    for name, vi in schema.index.variables.items() if schema.index is not None else []:
        texts_at.extend(_packing_spans(f, h5py, name, vi))
    return time_vi, _attrs(dset, keys), texts_at


#: The CF packing of a data variable: files of one product often differ only in these
#: (ERA5 from the CDS, packed to int16 per file); read per file from the compared bytes.
_PACKING: Final = frozenset({"scale_factor", "add_offset"})


def _packing_spans(f: Any, h5py: Any, name: str, vi: VarIndex) -> list[_TextAt]:
    dset = f.get(name)
    keys = set(_PACKING & set(vi.encoding))
    if not keys or not isinstance(dset, h5py.Dataset):
        return []
    spans = text_spans(f, h5py, dset, set(), keys)
    if spans is None:
        return []
    return [
        (name, key, span, sums, dset.attrs.get_id(key).dtype.str)
        for key, (span, sums) in spans.texts.items()
    ]


# --- the skeleton ----------------------------------------------------------------------------


def _skeleton(size: int, variables: Sequence[VarIndex]) -> list[tuple[int, int]]:
    """The file ranges outside every stored chunk (or row) of ``variables``."""
    starts, stops = [], []
    for vi in variables:
        stored = vi.offsets.ravel() >= 0
        starts.append(vi.offsets.ravel()[stored])
        stops.append(vi.offsets.ravel()[stored] + vi.sizes.ravel()[stored])
    a = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    b = np.concatenate(stops) if stops else np.zeros(0, np.int64)
    order = np.argsort(a, kind="stable")
    out, at = [], 0
    for lo, hi in zip(a[order].tolist(), b[order].tolist(), strict=True):
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    if at < size:
        out.append((at, size))
    return out


def _allowed(
    ranges: Sequence[tuple[int, int]], reference: np.ndarray, texts_at: Sequence[_TextAt]
) -> tuple[np.ndarray, tuple[_Text, ...]] | None:
    """Which skeleton bytes may differ, and the text spans as skeleton positions."""
    starts = np.array([a for a, _ in ranges], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum([b - a for a, b in ranges])])

    def position(lo: int, hi: int) -> tuple[int, int] | None:
        i = int(np.searchsorted(starts, lo, side="right")) - 1
        if i < 0 or hi > ranges[i][1]:
            return None  # not inside one skeleton range
        return int(base[i] + lo - ranges[i][0]), int(base[i] + hi - ranges[i][0])

    allowed = np.zeros(len(reference), dtype=bool)
    texts = []
    for owner, key, (lo, hi), checksums, dtype in texts_at:
        spans = [position(lo, hi), *(position(a, b) for a, b in checksums)]
        if any(s is None for s in spans):
            return None
        for s in spans:
            assert s is not None
            allowed[s[0] : s[1]] = True
        first = spans[0]
        assert first is not None
        texts.append(_Text(owner, key, *first, dtype))
    allowed.flags.writeable = False
    return allowed, tuple(texts)


def _number(raw: np.ndarray, dtype: str) -> Any:
    """A one-value numeric attribute from its stored bytes, as h5py (and so the full scan)
    presents it: a NumPy scalar of the native byte order."""
    stored = np.frombuffer(raw.tobytes(), dtype=dtype)
    return stored.astype(stored.dtype.newbyteorder("=")).reshape(-1)[0]


def _text(raw: bytes) -> str:
    from ._h5scan import _text as text

    return text(raw)


# --- the prototypes of this process ----------------------------------------------------------

_protos: OrderedDict[tuple[Any, ...], Prototype] = OrderedDict()
_deferred: OrderedDict[tuple[Any, ...], tuple[str, SourceSchema]] = OrderedDict()
_protos_lock = threading.Lock()


def kind_of(time_dim: str, *selections: Sequence[str] | None) -> tuple[Any, ...]:
    """The key of scans that may share prototypes: the same time dimension and selections."""
    return (time_dim, *(None if s is None else tuple(s) for s in selections))


def local_size(path: str) -> int | None:
    """The size of a local file this module may read; None: not one (or switched off)."""
    if "://" in path or "::" in path or os.environ.get(FAST_SCAN_ENV, "1") == "0":
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def candidates(key: tuple[Any, ...], size: int) -> list[Prototype]:
    """The kept prototypes for scans keyed ``key`` of files of ``size`` bytes, most recently
    used first (they become the most recently used)."""
    with _protos_lock:
        keys = [k for k in _protos if k[:-1] == (*key, size)]
        for k in keys:
            _protos.move_to_end(k)
        return [_protos[k] for k in reversed(keys)]


def keep(key: tuple[Any, ...], proto: Prototype) -> None:
    """Keep ``proto`` for later scans keyed ``key``; the least recently used go beyond
    :data:`_KEEP` prototypes or :data:`_KEEP_BYTES` of skeletons."""
    with _protos_lock:
        _protos[(*key, proto.size, id(proto))] = proto
        total = sum(p.reference.nbytes for p in _protos.values())
        while len(_protos) > _KEEP or (total > _KEEP_BYTES and len(_protos) > 1):
            _, old = _protos.popitem(last=False)
            total -= old.reference.nbytes


def make(
    path: str, schema: SourceSchema, time_dim: str, key: tuple[Any, ...], lock: Any
) -> Prototype | None:
    """:func:`build` (under ``lock``, the process's HDF5 lock) and :func:`keep`."""
    with lock:
        made = build(path, schema, time_dim)
    if made is not None:
        keep(key, made)
    return made


def defer(key: tuple[Any, ...], size: int, path: str, schema: SourceSchema) -> None:
    """Remember the fully scanned ``path`` as the prototype-to-be of files of ``size`` bytes.

    A prototype is made only once a second file of that size comes (:func:`take_deferred`):
    making one costs about half a full scan, and files whose sizes never repeat (compressed
    files: 365 zlib daily files have 178 sizes) would pay it for nothing."""
    with _protos_lock:
        _deferred[(*key, size)] = (path, schema)
        _deferred.move_to_end((*key, size))
        while len(_deferred) > _KEEP_DEFERRED:
            _deferred.popitem(last=False)


def take_deferred(key: tuple[Any, ...], size: int) -> tuple[str, SourceSchema] | None:
    """The file :func:`defer` remembered for ``size`` (forgotten here), or None."""
    with _protos_lock:
        return _deferred.pop((*key, size), None)


def forget() -> None:
    """Drop every kept prototype (tests; a long-lived process after a run)."""
    with _protos_lock:
        _protos.clear()
        _deferred.clear()
