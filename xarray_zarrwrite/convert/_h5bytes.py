"""Where an HDF5 object's text attribute values lie in the file, from its bytes.

The fast scan (:mod:`._fastscan`) lets look-alike files differ only in the values of some
fixed-length text attributes (a time variable's ``units``, a per-file ``history``), plus the
checksums that cover them. This module finds those byte spans by walking the structures of
the HDF5 file format specification (version 3.0) that hold attributes; h5py does not expose
file offsets of attributes:

- object headers, version 1 and version 2, with their continuation chunks (IV.A.1);
- attribute messages, versions 1 to 3, stored in the header ("compact" storage) (IV.A.2.m);
- "dense" storage: an attribute info message (IV.A.2.v) names a fractal heap (III.G) whose
  root direct block holds the attribute messages; HDF5 switches to it beyond 8 attributes,
  which netCDF-C's own (``CLASS``, ``NAME``, ``REFERENCE_LIST``, ...) count towards, so a
  CF time coordinate with ``standard_name``, ``long_name``, ``axis``, ``units`` and
  ``calendar`` has it.

Every span found is checked against the value h5py reads; anything not understood (a heap
with an indirect root block, an unknown version, a value found twice) gives no span, and the
fast scan then lets nothing of that attribute differ.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

_MSG_ATTRIBUTE: Final = 0x000C
_MSG_CONTINUATION: Final = 0x0010
_MSG_ATTRIBUTE_INFO: Final = 0x0015
_MAX_CHUNKS: Final = 64
_MAX_BLOCK: Final = 1 << 20  # a direct block larger than this is not searched


@dataclass(frozen=True)
class Spans:
    """One object's attribute values: per key, the value's file range and the file ranges of
    the checksums covering it (none in version 1 headers)."""

    texts: dict[str, tuple[tuple[int, int], list[tuple[int, int]]]] = field(default_factory=dict)


def text_spans(
    f: Any, h5py: Any, obj: Any, keys: set[str] | None = None, numbers: set[str] | None = None
) -> Spans | None:
    """The spans of ``obj``'s scalar fixed-length text attributes (those in ``keys``, or
    all) and of its one-value numeric attributes named in ``numbers``, verified against
    the stored bytes h5py reads; None: the header is not understood."""
    texts = {**_texts(obj, h5py, keys), **_numbers(obj, h5py, numbers or set())}
    info = h5py.h5o.get_info(obj.id)
    addr = getattr(info, "addr", None)
    if addr is None:
        return None
    sizes = tuple(f.id.get_create_plist().get_sizes())  # (sizeof_addr, sizeof_size)
    reader = _FileBytes(f.filename)
    try:
        chunks = _header_chunks(reader, int(addr), sizes)
        header_sums = [(c.end - 4, c.end) for c in chunks if c.v2]
        found: dict[str, list[tuple[int, int]]] = {}
        for name, value_at in _header_attributes(reader, chunks):
            if name in texts:
                found.setdefault(name, []).append((value_at, value_at + len(texts[name])))
        out = Spans()
        for name, spans in found.items():
            if len(spans) == 1 and reader.read(spans[0][0], len(texts[name])) == texts[name]:
                out.texts[name] = (spans[0], header_sums)
        missing = {k: v for k, v in texts.items() if k not in found}
        for heap in _dense_heaps(reader, chunks, sizes) if missing else []:
            for name, (span, sums) in _search_block(reader, heap, missing).items():
                out.texts[name] = (span, sums)
    except (ValueError, struct.error, OSError):
        return None
    finally:
        reader.close()
    return out


def _texts(obj: Any, h5py: Any, keys: set[str] | None) -> dict[str, bytes]:
    """The stored bytes of ``obj``'s scalar fixed-length text attributes."""
    from ._h5scan import _raw_text, _Unsupported

    out = {}
    for name in obj.attrs:
        if keys is not None and name not in keys:
            continue
        try:
            aid = obj.attrs.get_id(name)
            ftype = aid.get_type()
            if ftype.get_class() != h5py.h5t.STRING or ftype.is_variable_str() or aid.shape != ():
                continue
            out[name] = _raw_text(obj.attrs, name)
        except (OSError, TypeError, ValueError, KeyError, _Unsupported):  # not a readable text
            continue
    return out


def _numbers(obj: Any, h5py: Any, keys: set[str]) -> dict[str, bytes]:
    """The stored bytes of ``obj``'s one-value integer or float attributes in ``keys``."""
    out = {}
    for name in keys & set(obj.attrs):
        aid = obj.attrs.get_id(name)
        ftype = aid.get_type()
        if ftype.get_class() not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
            continue
        if aid.shape not in ((), (1,)):
            continue
        buf = np.zeros(aid.shape, dtype=f"V{ftype.get_size()}")
        aid.read(buf, mtype=ftype)
        out[name] = buf.tobytes()
    return out


class _FileBytes:
    """Small reads of one file (object headers, heap blocks)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb")  # noqa: SIM115  (closed by close())

    def read(self, at: int, n: int) -> bytes:
        self._file.seek(at)
        data = self._file.read(n)
        if len(data) != n:
            raise ValueError(f"short read at {at}")
        return data

    def close(self) -> None:
        self._file.close()


def _uint(data: bytes) -> int:
    return int.from_bytes(data, "little")


@dataclass(frozen=True)
class _Chunk:
    """One chunk of an object header: its messages' file range and where the chunk ends."""

    start: int
    stop: int
    end: int  # the chunk's last byte + 1 (after the checksum in version 2)
    v2: bool
    prefix: int  # bytes before each message's data


def _header_chunks(reader: _FileBytes, addr: int, sizes: tuple[int, ...]) -> list[_Chunk]:
    """Every chunk of the object header at ``addr``, continuation chunks included."""
    sa, ss = sizes
    head = reader.read(addr, 16)
    if head[:4] == b"OHDR":
        if head[4] != 2:
            raise ValueError("unknown object header version")
        flags = head[5]
        at = addr + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 3)
        start = at + width
        stop = start + _uint(reader.read(at, width))
        # type (1), size (2), flags (1), creation order (2) when attribute order is tracked
        prefix = 6 if flags & 0x04 else 4
        chunks = [_Chunk(start, stop, stop + 4, True, prefix)]
    elif head[0] == 1:
        stop = addr + 16 + _uint(head[8:12])
        chunks = [_Chunk(addr + 16, stop, stop, False, 8)]  # type (2), size (2), flags, 3 pad
    else:
        raise ValueError("not an object header")
    k = 0
    while k < len(chunks):
        chunk = chunks[k]
        for mtype, data_at, _ in _messages(reader, chunk):
            if mtype != _MSG_CONTINUATION:
                continue
            block = reader.read(data_at, sa + ss)
            off, length = _uint(block[:sa]), _uint(block[sa:])
            if not chunk.v2:
                chunks.append(_Chunk(off, off + length, off + length, False, chunk.prefix))
            elif reader.read(off, 4) == b"OCHK":
                end = off + length
                chunks.append(_Chunk(off + 4, end - 4, end, True, chunk.prefix))
            else:
                raise ValueError("bad continuation chunk")
        k += 1
        if k > _MAX_CHUNKS:
            raise ValueError("too many object header chunks")
    return chunks


def _messages(reader: _FileBytes, chunk: _Chunk) -> list[tuple[int, int, int]]:
    """(type, data start, data size) of the messages of one header chunk (a version 2
    chunk may end in a gap shorter than a message prefix)."""
    data = reader.read(chunk.start, chunk.stop - chunk.start)
    out = []
    at = 0
    while at + chunk.prefix <= len(data):
        if chunk.v2:
            mtype, size = data[at], _uint(data[at + 1 : at + 3])
        else:
            mtype, size = _uint(data[at : at + 2]), _uint(data[at + 2 : at + 4])
        body = at + chunk.prefix
        if body + size > len(data):
            raise ValueError("an object header message past its chunk")
        out.append((mtype, chunk.start + body, size))
        at = body + size
    return out


def _pad8(n: int) -> int:
    return -(-n // 8) * 8


def _parse_attribute(body: bytes) -> tuple[str, int]:
    """(name, value offset in ``body``) of an attribute message (versions 1-3)."""
    version = body[0]
    name_size, type_size, space_size = struct.unpack_from("<HHH", body, 2)
    if version == 1:  # name, datatype and dataspace each padded to 8 bytes
        name_at = 8
        value_at = name_at + _pad8(name_size) + _pad8(type_size) + _pad8(space_size)
    elif version in (2, 3):  # version 3 adds the name's character set
        name_at = 8 if version == 2 else 9
        value_at = name_at + name_size + type_size + space_size
    else:
        raise ValueError("unknown attribute message version")
    raw = body[name_at : name_at + name_size]
    if len(raw) != name_size or not raw.endswith(b"\x00"):
        raise ValueError("not an attribute message")
    return raw[:-1].decode("utf-8", "replace"), value_at


def _header_attributes(reader: _FileBytes, chunks: list[_Chunk]) -> list[tuple[str, int]]:
    """(name, value's file offset) of every attribute message in the header."""
    out = []
    for chunk in chunks:
        for mtype, at, size in _messages(reader, chunk):
            if mtype == _MSG_ATTRIBUTE:
                name, value_at = _parse_attribute(reader.read(at, size))
                out.append((name, at + value_at))
    return out


@dataclass(frozen=True)
class _Block:
    """A fractal heap's root direct block: its file range and its checksum's, if any."""

    start: int
    stop: int
    checksum: tuple[int, int] | None


def _dense_heaps(reader: _FileBytes, chunks: list[_Chunk], sizes: tuple[int, ...]) -> list[_Block]:
    """The root direct blocks of the fractal heaps holding the object's dense attributes."""
    sa, _ = sizes
    out = []
    for chunk in chunks:
        for mtype, at, size in _messages(reader, chunk):
            if mtype != _MSG_ATTRIBUTE_INFO:
                continue
            body = reader.read(at, size)
            heap_at = 2 + (2 if body[1] & 0x01 else 0)  # version, flags, [max creation index]
            heap = _uint(body[heap_at : heap_at + sa])
            block = _root_block(reader, heap, sizes)
            if block is not None:
                out.append(block)
    return out


def _root_block(reader: _FileBytes, heap: int, sizes: tuple[int, ...]) -> _Block | None:
    """The root direct block of the fractal heap at ``heap`` (III.G); None if the root is
    an indirect block (a heap too big to search here) or the heap is filtered."""
    sa, ss = sizes
    head = reader.read(heap, 22 + 14 * ss + 3 * sa)
    if head[:4] != b"FRHP" or head[4] != 0:
        raise ValueError("not a fractal heap")
    filters_len, flags = _uint(head[7:9]), head[9]
    if filters_len:
        return None  # compressed heap blocks
    at = 14 + 10 * ss + 2 * sa + 2  # past the counters and the table width
    start_size = _uint(head[at : at + ss])
    max_heap_bits = _uint(head[at + 2 * ss : at + 2 * ss + 2])
    root = _uint(head[at + 2 * ss + 4 : at + 2 * ss + 4 + sa])
    rows = _uint(head[at + 2 * ss + 4 + sa : at + 2 * ss + 6 + sa])
    if rows or start_size > _MAX_BLOCK:
        return None
    prefix = reader.read(root, 5 + sa)
    if prefix[:4] != b"FHDB" or _uint(prefix[5 : 5 + sa]) != heap:
        raise ValueError("not the heap's direct block")
    sum_at = root + 5 + sa + -(-max_heap_bits // 8)
    checksum = (sum_at, sum_at + 4) if flags & 0x02 else None
    return _Block(root, root + start_size, checksum)


def _search_block(
    reader: _FileBytes, block: _Block, texts: dict[str, bytes]
) -> dict[str, tuple[tuple[int, int], list[tuple[int, int]]]]:
    """The attribute values of ``texts`` in a heap block: each name's messages are found by
    searching for the name and parsing the message around it; kept when exactly one
    message's value is the expected one."""
    data = reader.read(block.start, block.stop - block.start)
    sums = [block.checksum] if block.checksum else []
    out = {}
    for name, value in texts.items():
        needle = name.encode() + b"\x00"
        hits = []
        at = data.find(needle)
        while at >= 0:
            for name_at in (8, 9):  # versions 1 and 2, version 3
                start = at - name_at
                if start < 0:
                    continue
                try:
                    got, value_at = _parse_attribute(data[start:])
                except (ValueError, struct.error):
                    continue
                lo = start + value_at
                if got == name and data[lo : lo + len(value)] == value:
                    hits.append((block.start + lo, block.start + lo + len(value)))
            at = data.find(needle, at + 1)
        if len(set(hits)) == 1:
            out[name] = (hits[0], sums)
    return out
