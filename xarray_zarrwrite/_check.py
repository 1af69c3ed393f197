"""Completeness of an archive: which write units of which variables were never written.

Counted per write unit (:class:`~xarray_zarrwrite._grid.ChunkGrid`): one stored object, the
shard when the array is sharded, else the chunk. Region writes store every unit they write,
even one that holds nothing but the fill value (``write_empty_chunks=True``, the default), so
"the object exists" means "the unit was written". A unit written with
``write_empty_chunks=False`` that held only the fill value is not stored but recorded by a
record object under its array's ``.xzw_empty/`` prefix (see :mod:`._empty`): a unit is
written when its object exists or a record lists it. :func:`check` lists the objects of every
data variable (records come with the same listing), reads the records, and reports the units
neither stored nor recorded, as unit indices and as coordinate ranges (time spans) a person
can act on.

Local stores write each chunk to a temporary ``<key>.<uuid>.partial`` file and rename it into
place, so a write interrupted by a crash leaves such a file behind and never a truncated chunk:
those files are reported as :attr:`CheckReport.stray` and never counted as written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.storage import LocalStore

from ._compat import default_buffer_prototype, sync
from ._empty import is_record_key, parse_record
from ._grid import ChunkGrid
from ._icechunk import readable_store
from ._open import load_template
from ._store import group_path, resolve_store
from .errors import TemplateNotFoundError, VariableNotInTemplateError

if TYPE_CHECKING:
    from pathlib import Path

    from zarr.abc.store import Store

    from ._open import TemplateInfo
    from ._store import StoreLike

__all__ = ["CheckReport", "VariableCompleteness", "check"]

#: zarr's LocalStore writes ``<key-without-suffix>.<uuid4 hex>.partial`` and renames it.
PARTIAL_FILE: Final = re.compile(r"\.[0-9a-f]{32}\.partial$")

ChunkIndex = tuple[int, ...]
LabelRange = tuple[Any, Any]


@dataclass(frozen=True)
class VariableCompleteness:
    """Completeness of one variable.

    Attributes
    ----------
    name
        The variable.
    dims, shape
        Its dimensions and shape.
    chunks
        Shape of one stored object (the shard shape for sharded arrays).
    total
        Number of chunk objects the variable has when complete.
    written
        Number of chunk objects present.
    missing_chunks
        Chunk-grid indices of the absent objects, sorted.
    missing
        The absent data along ``range_dim`` as inclusive ``(first label, last label)`` ranges,
        merged where adjacent (dates as ISO strings).
    missing_index
        The same ranges as ``(start, stop)`` positions along ``range_dim``.
    range_dim
        The dimension ``missing`` is expressed along (the time dimension when the variable has
        one, else its first dimension); None for 0-d variables.
    partial_chunks
        Grid indices of write units stored only in part (recorded by ``convert`` when the
        sources covered them in part); counted as missing, their whole range included.
    empty_chunks
        Grid indices of write units written with ``write_empty_chunks=False`` while holding
        only the fill value: not stored, recorded, counted as written (they read back as
        fill value).
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    total: int
    written: int
    missing_chunks: tuple[ChunkIndex, ...]
    missing: tuple[LabelRange, ...]
    missing_index: tuple[tuple[int, int], ...]
    range_dim: str | None
    partial_chunks: tuple[ChunkIndex, ...] = ()
    empty_chunks: tuple[ChunkIndex, ...] = ()

    @property
    def complete(self) -> bool:
        """Whether every write unit of the variable was written (stored or recorded empty)."""
        return self.written == self.total


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found.

    Attributes
    ----------
    store
        The store checked, as text.
    variables
        ``{name: VariableCompleteness}`` for every variable checked.
    time_dim
        The dimension missing data is reported along, when variables have it.
    stray
        Temporary files of interrupted writes (``*.partial``), which are never read as data.
    indexes
        ``{dimension: pandas.Index}`` of the archive's coordinates, which label the cells of
        :meth:`to_dataarray`.
    """

    store: str
    variables: Mapping[str, VariableCompleteness]
    time_dim: str | None
    stray: tuple[str, ...] = ()
    indexes: Mapping[str, pd.Index] = field(default_factory=dict, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        """Whether every chunk of every variable checked has been written."""
        return all(v.complete for v in self.variables.values())

    @property
    def missing(self) -> dict[str, list[LabelRange]]:
        """``{variable: [(first label, last label), ...]}`` of unwritten data, inclusive."""
        return {n: list(v.missing) for n, v in self.variables.items() if not v.complete}

    @property
    def missing_chunks(self) -> dict[str, list[ChunkIndex]]:
        """``{variable: [chunk index, ...]}`` of unwritten chunk objects."""
        return {n: list(v.missing_chunks) for n, v in self.variables.items() if not v.complete}

    @property
    def written(self) -> int:
        """Chunk objects present, over all variables checked."""
        return sum(v.written for v in self.variables.values())

    @property
    def total(self) -> int:
        """Chunk objects of a complete archive, over all variables checked."""
        return sum(v.total for v in self.variables.values())

    def summary(self) -> str:
        """A few lines for people: one per variable, missing ranges included."""
        state = "complete" if self.complete else "INCOMPLETE"
        lines = [f"{self.store}: {state}, {self.written}/{self.total} chunks written"]
        for v in self.variables.values():
            line = f"  {v.name}: {v.written}/{v.total} chunks"
            if v.empty_chunks:
                line += f" ({len(v.empty_chunks)} only fill value: recorded, not stored)"
            if not v.complete:
                spans = ", ".join(f"{a} .. {b}" for a, b in v.missing[:8])
                more = f" (+{len(v.missing) - 8} more)" if len(v.missing) > 8 else ""
                line += f"; missing along {v.range_dim}: {spans}{more}"
            lines.append(line)
        if self.stray:
            lines.append(
                f"  {len(self.stray)} leftover temporary file(s) of interrupted writes "
                f"(never read as data), e.g. {self.stray[0]}"
            )
        return "\n".join(lines)

    def to_dataarray(self) -> xr.DataArray:
        """The completeness map: one cell per write unit, 0 missing, 1 partial, 2 written.

        Returns
        -------
        xarray.DataArray
            ``int8`` values with dims ``("variable", <time dim>, <other chunked dims>...)``:
            the time dimension when a variable has it, then every dimension cut into more than
            one write unit. Each cell is labelled with the first coordinate label of its unit
            (``<dim>_last`` holds the last label and ``<dim>_index`` the first position).
            Attributes ``flag_values`` (0, 1, 2) and ``flag_meanings``
            (``"missing partial written"``) follow the CF conventions. Where variables are
            chunked differently along a dimension, the cells are the intervals between all
            their unit boundaries; a variable without a dimension repeats along it.

        Examples
        --------
        >>> cells = check("era5.zarr").to_dataarray()  # doctest: +SKIP
        >>> (cells == 2).mean("time")  # doctest: +SKIP
        """
        from ._checkmap import to_dataarray

        return to_dataarray(self)

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Draw the completeness map with matplotlib (the ``plot`` extra).

        Rows are variables (one row per variable and label of each other chunked dimension,
        e.g. ensemble member), columns are the write units along the time dimension; red is
        missing, amber partial, green written.

        Parameters
        ----------
        ax
            A matplotlib ``Axes`` to draw on; default: a new figure sized to the rows.
        title
            Title; default: the store and the count of written cells.

        Returns
        -------
        matplotlib.axes.Axes
            The axes drawn on (``ax.figure.savefig("map.png")`` saves it).

        Raises
        ------
        MissingDependencyError
            matplotlib is not installed.
        """
        from ._checkmap import plot

        return plot(self, ax=ax, title=title)

    def _repr_html_(self) -> str:
        """A table per variable for Jupyter notebooks."""
        from ._checkmap import to_html

        return to_html(self)


#: Root attribute of an archive that lists its partial write units and the labels they lack
#: (written by :func:`~xarray_zarrwrite.convert`): ``{variable: {chunk key: [labels]}}``.
PARTIAL_ATTR: Final = "xarray_zarrwrite:partial"

Record = dict[str, dict[str, list[str]]]


def read_record(store: Any) -> Record:
    """The partial-write-unit record of the archive in ``store`` (empty when it has none)."""
    group = zarr.open_group(store=store, mode="r")
    raw: Any = group.attrs.get(PARTIAL_ATTR) or {}
    if not isinstance(raw, Mapping):
        return {}
    return {
        str(var): {str(k): [str(x) for x in labels] for k, labels in chunks.items()}
        for var, chunks in raw.items()
        if isinstance(chunks, Mapping)
    }


def check(
    store: StoreLike,
    *,
    time_dim: str | None = "time",
    variables: Iterable[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    branch: str | None = None,
    group: str | None = None,
) -> CheckReport:
    """Report which chunks of which variables of the archive in ``store`` are unwritten.

    Exact even where written data equals the fill value: every unit a region write stores
    exists as an object, and a unit of only fill values written with
    ``write_empty_chunks=False`` (not stored) is recorded as written empty; a unit with
    neither is unwritten.

    Parameters
    ----------
    store
        Path, fsspec URL or zarr Store of an archive made by :func:`to_template` or
        :func:`convert`; or an Icechunk ``Session`` (what it holds, committed or not) or
        ``Repository`` (the tip of ``branch``).
    time_dim
        Dimension to express missing data along (variables without it use their first
        dimension).
    variables
        Variables to check; default: every data variable.
    storage_options
        fsspec options for URLs.
    branch
        With an Icechunk ``Repository``: the branch to check (default ``"main"``).
    group
        The archive's group inside ``store`` (``"a/b"``), for templates made with
        ``to_template(group=)``; as ``xr.open_zarr(group=)``.

    Returns
    -------
    CheckReport

    Raises
    ------
    TemplateNotFoundError
        No archive at ``store``.
    VariableNotInTemplateError
        ``variables`` names an array that is not in the archive (also a ``KeyError``).

    Examples
    --------
    >>> status = check("era5.zarr")  # doctest: +SKIP
    >>> status.complete, status.missing  # doctest: +SKIP
    (False, {'t2m': [('2000-03-01', '2000-04-09')]})
    """
    target = resolve_store(
        readable_store(store, branch), storage_options=storage_options, group=group
    )
    info = load_template(target)
    if variables is None:
        names = [n for n, a in info.arrays.items() if not a.is_coord]
        if not names:
            _refuse_a_root_of_groups(store, target, group)
    else:
        names = list(variables)
        unknown = [n for n in names if n not in info.arrays]
        if unknown:
            raise VariableNotInTemplateError(
                f"{unknown} are not arrays of the archive (arrays: {sorted(info.arrays)}); "
                "leave variables out to check every data variable"
            )
    found, empty, stray = scan_units(target, info, names)
    for n in names:
        empty[n] -= found[n]  # stored since: written, whatever a record says
        found[n] |= empty[n]
    record = read_record(target)
    partial: dict[str, set[ChunkIndex]] = {}
    for n in names:
        grid = ChunkGrid.from_array(info.zarr_arrays[n])
        keys = (grid.parse_key(k) for k in record.get(n, {}))
        partial[n] = {k for k in keys if k is not None}
        found[n] -= partial[n]  # a partial unit exists but is not written in full
    out = {
        n: dataclasses.replace(
            _completeness(info, n, found[n], time_dim, partial[n]),
            empty_chunks=tuple(sorted(empty[n])),
        )
        for n in names
    }
    url = store_url(store, target)
    return CheckReport(
        store=url if group is None else f"{url} (group {group_path(group)})",
        variables=out,
        time_dim=time_dim,
        stray=tuple(stray),
        indexes=dict(info.indexes),
    )


def _refuse_a_root_of_groups(given: Any, target: Store, group: str | None) -> None:
    """Raise when ``target`` has no data variable of its own but groups below it do: checking
    it would report an empty archive "complete" (the archive is in a group)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        root = zarr.open_group(store=target, mode="r")
        holders = sorted(
            {
                path.rpartition("/")[0]
                for path, node in root.members(max_depth=None)
                if isinstance(node, zarr.Array) and "/" in path
            }
        )
    if not holders:
        return
    base = f"{group_path(group)}/" if group is not None else ""
    groups = [base + h for h in holders]
    raise TemplateNotFoundError(
        f"{store_url(given, target)} has no data variables at "
        f"{'its root' if group is None else repr(group)}, but its groups {groups} hold "
        f"arrays: check one of them with group={groups[0]!r}"
    )


def store_url(given: Any, store: Store) -> str:
    """``given`` as people typed it (a path or URL), else the store's own URL or path."""
    if isinstance(given, str | os.PathLike):
        return str(os.fspath(given))
    root = getattr(store, "root", None)
    if root is not None:
        return str(os.fspath(root))
    path = getattr(store, "path", None)
    fs = getattr(store, "fs", None)
    if isinstance(path, str) and fs is not None:
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        return f"{protocol}://{path}"
    return str(store)


# -- chunk objects ----------------------------------------------------------------------------


def object_chunks(arr: zarr.Array[Any]) -> tuple[int, ...]:
    """Shape of one stored object of ``arr``: its write unit (the shard if sharded)."""
    return ChunkGrid.from_array(arr).unit


def existing_chunks(
    store: Store, info: TemplateInfo, names: Iterable[str]
) -> tuple[dict[str, set[ChunkIndex]], list[str]]:
    """Write units written for each array in ``names`` (stored, or recorded as written
    empty), and stray temporary files."""
    found, empty, stray = scan_units(store, info, names)
    return {n: found[n] | empty[n] for n in found}, stray


def scan_units(
    store: Store, info: TemplateInfo, names: Iterable[str]
) -> tuple[dict[str, set[ChunkIndex]], dict[str, set[ChunkIndex]], list[str]]:
    """Per array in ``names``: the units stored, the units recorded as written empty, and
    the stray temporary files, from one listing of each array (and a read of each record)."""
    names = list(names)
    listed = sync(_list_all(store, names))
    found: dict[str, set[ChunkIndex]] = {}
    empty: dict[str, set[ChunkIndex]] = {}
    stray: list[str] = []
    records: list[tuple[str, str]] = []  # (array, key) of the records of units written empty
    for name, keys in zip(names, listed, strict=True):
        grid = ChunkGrid.from_array(info.zarr_arrays[name])
        got: set[ChunkIndex] = set()
        for key in keys:
            if PARTIAL_FILE.search(key):
                stray.append(key)
                continue
            rel = key[len(name) + 1 :]
            idx = grid.parse_key(rel)
            if idx is not None:
                got.add(idx)
            elif is_record_key(rel):
                records.append((name, key))
        found[name], empty[name] = got, set()
    bodies = sync(_read_all(store, [key for _, key in records]))
    for (name, _), body in zip(records, bodies, strict=True):
        grid = ChunkGrid.from_array(info.zarr_arrays[name])
        for unit in parse_record(body):
            if (idx := grid.parse_key(unit)) is not None:
                empty[name].add(idx)
    return found, empty, sorted(stray)


async def _read_all(store: Store, keys: list[str]) -> list[bytes | None]:
    """The bytes of the objects ``keys`` (None where one is gone), read concurrently."""
    proto = default_buffer_prototype()

    async def one(key: str) -> bytes | None:
        buf = await store.get(key, prototype=proto)
        return None if buf is None else buf.to_bytes()

    return list(await asyncio.gather(*(one(k) for k in keys)))


async def _list_all(store: Store, names: list[str]) -> list[list[str]]:
    async def one(name: str) -> list[str]:
        if isinstance(store, LocalStore):  # os.walk: several times faster than rglob
            return await asyncio.to_thread(_walk, store.root, name)
        return [k async for k in store.list_prefix(f"{name}/")]

    return list(await asyncio.gather(*(one(n) for n in names)))


def _walk(root: Path, name: str) -> list[str]:
    base = os.path.join(root, name)
    keys: list[str] = []
    for folder, _, files in os.walk(base):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        keys.extend(f"{rel}/{f}" for f in files)
    return keys


# -- reporting ranges -------------------------------------------------------------------------


def _completeness(
    info: TemplateInfo,
    name: str,
    found: set[ChunkIndex],
    time_dim: str | None,
    partial: set[ChunkIndex] = frozenset(),  # type: ignore[assignment]
) -> VariableCompleteness:
    grid = ChunkGrid.from_array(info.zarr_arrays[name])
    a = info.arrays[name]
    chunks = grid.unit
    total = grid.nunits
    if len(found) == total:
        missing_idx: list[ChunkIndex] = []
    else:
        missing_idx = [idx for idx in grid.all_coords() if idx not in found]
    range_dim = time_dim if time_dim in a.dims else (a.dims[0] if a.dims else None)
    spans: list[tuple[int, int]] = []
    if range_dim is not None and missing_idx:
        axis = a.dims.index(range_dim)
        blocks = sorted({idx[axis] for idx in missing_idx})
        for b in blocks:
            coords = tuple(b if i == axis else 0 for i in range(grid.ndim))
            unit = grid.unit_selection(coords)[axis]
            lo, hi = unit.start, unit.stop
            if spans and spans[-1][1] == lo:
                spans[-1] = (spans[-1][0], hi)
            else:
                spans.append((lo, hi))
    fmt = label_formatter(info.indexes.get(range_dim) if range_dim else None)
    labels = tuple((fmt(lo), fmt(hi - 1)) for lo, hi in spans)
    return VariableCompleteness(
        name=name,
        dims=a.dims,
        shape=a.shape,
        chunks=chunks,
        total=total,
        written=total - len(missing_idx),
        missing_chunks=tuple(missing_idx),
        missing=labels,
        missing_index=tuple(spans),
        range_dim=range_dim,
        partial_chunks=tuple(sorted(partial)),
    )


def label_formatter(index: pd.Index | None) -> Callable[[int], Any]:
    """A function from a position along ``index`` to its label, for people.

    Dates become ISO strings, without a time part when every label is at midnight; without an
    index, positions are returned as they are.
    """
    if index is None:
        return lambda i: i
    if isinstance(index, pd.DatetimeIndex):
        daily = bool((index.normalize() == index).all())
        return lambda i: index[i].strftime("%Y-%m-%d") if daily else index[i].isoformat()

    def label(i: int) -> Any:
        value = index[i]
        if hasattr(value, "isoformat"):  # cftime dates
            return value.isoformat()
        return value.item() if isinstance(value, np.generic) else value

    return label
