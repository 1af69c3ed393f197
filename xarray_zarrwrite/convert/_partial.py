"""The archive's record of partly written write units (``xarray_zarrwrite:partial``).

A write unit the sources cover only in part is written whole (fill values where no source has
data) and recorded in the root attributes of the archive under :data:`PARTIAL_ATTR`::

    {"t2m": {"c/7/0/0": ["2001-12-31T00:00:00", ...]}, ...}

that is, per variable, the store key of each partial chunk (relative to the array) and the
time labels it still lacks. A later :func:`~xarray_zarrwrite.convert` with more sources merges
the stored chunk with the new data, writes it whole and drops it from the record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import zarr

from .._check import PARTIAL_ATTR, Record, read_record
from .._compat import sync
from .._grid import ChunkGrid
from ._plan import Task

if TYPE_CHECKING:
    from .._open import TemplateInfo

__all__ = ["PARTIAL_ATTR", "PartialState", "read_record", "write_record"]


ChunkIndex = tuple[int, ...]


def label_text(value: Any) -> str:
    """A time label as the record spells it (ISO 8601 for dates, cftime dates included)."""
    if isinstance(value, pd.Timestamp | np.datetime64):
        return str(pd.Timestamp(value).isoformat())
    iso = getattr(value, "isoformat", None)
    return str(iso()) if callable(iso) else str(value)


def write_record(store: Any, record: Record) -> None:
    """Store ``record`` in the archive's root attributes (the key removed when empty)."""
    group = zarr.open_group(store=store, mode="r+")
    attrs = dict(group.attrs)
    clean = {v: dict(sorted(c.items())) for v, c in sorted(record.items()) if c}
    if clean:
        attrs[PARTIAL_ATTR] = clean
    elif PARTIAL_ATTR not in attrs:
        return
    else:
        del attrs[PARTIAL_ATTR]
    group.attrs.put(attrs)
    if group.metadata.zarr_format == 2 and sync(store.exists(".zmetadata")):
        zarr.consolidate_metadata(store, zarr_format=2)


@dataclass
class PartialState:
    """What is stored and what is missing, per chunk, for one run (on the client).

    Attributes
    ----------
    record
        The partial-chunk record, updated as the run goes.
    found
        Chunk indices present in the store, per array (before the run; updated by :meth:`done`).
    """

    info: TemplateInfo
    time_dim: str
    #: per array, bool per template position along time: a source of this run has it; with
    #: files per member, an array along ``member_dim`` has one row per member (members x time)
    covered: Mapping[str, np.ndarray]
    record: Record
    found: dict[str, set[ChunkIndex]]
    member_dim: str | None = None

    def __post_init__(self) -> None:
        self._n = len(self.info.indexes[self.time_dim])
        self._grids = {n: ChunkGrid.from_array(a) for n, a in self.info.zarr_arrays.items()}

    @cached_property
    def _labels(self) -> list[str]:
        """The record's spelling of every time label (only built when a chunk is partial:
        1,461 labels take ~10 ms)."""
        return [label_text(v) for v in self.info.indexes[self.time_dim]]

    @cached_property
    def _position(self) -> dict[str, int]:
        return {text: i for i, text in enumerate(self._labels)}

    def _span(self, name: str, idx: ChunkIndex) -> tuple[int, int]:
        axis = self.info.arrays[name].dims.index(self.time_dim)
        unit = self._grids[name].unit[axis]
        return idx[axis] * unit, min((idx[axis] + 1) * unit, self._n)

    def stored_missing(self, name: str, idx: ChunkIndex) -> set[int] | None:
        """Positions a stored chunk lacks: None if not stored, empty if stored whole."""
        if idx not in self.found.get(name, ()):
            return None
        labels = self.record.get(name, {}).get(self._grids[name].key(idx))
        if labels is None:
            return set()
        return {self._position[t] for t in labels if t in self._position}

    def missing_after(self, name: str, idx: ChunkIndex) -> set[int]:
        """Positions the chunk lacks once this run writes it."""
        before = self.stored_missing(name, idx)
        if before is None:
            lo, hi = self._span(name, idx)
            before = set(range(lo, hi))
        cov = self._covered(name, idx)
        return {p for p in before if not cov[p]}

    def _covered(self, name: str, idx: ChunkIndex) -> np.ndarray:
        """Bool per time position: this run's sources give chunk ``idx`` of ``name`` that step
        (with files per member: every member of the chunk has it)."""
        found = self.covered.get(name)
        if found is None:  # an array no source of this run holds
            return np.zeros(self._n, dtype=bool)
        if found.ndim == 1:
            return found
        axis = self.info.arrays[name].dims.index(str(self.member_dim))
        unit = self._grids[name].unit[axis]
        return np.asarray(found[idx[axis] * unit : (idx[axis] + 1) * unit].all(axis=0))

    def chunks(self, task: Task) -> list[tuple[str, ChunkIndex]]:
        if self.time_dim not in task.region:
            return []
        return [(n, i) for n, idx in task.chunk_indices(self.info).items() for i in idx]

    def is_done(self, task: Task) -> bool:
        """Every chunk of ``task`` is stored and this run's sources add nothing to any."""
        for name, idx in self.chunks(task) or self._static_chunks(task):
            have = self.stored_missing(name, idx)
            if have is None or any(self._covered(name, idx)[p] for p in have):
                return False
        return True

    def _static_chunks(self, task: Task) -> list[tuple[str, ChunkIndex]]:
        return [(n, i) for n, idx in task.chunk_indices(self.info).items() for i in idx]

    def _set(self, name: str, idx: ChunkIndex, missing: set[int]) -> None:
        key = self._grids[name].key(idx)
        chunks = self.record.setdefault(name, {})
        if missing:
            chunks[key] = [self._labels[p] for p in sorted(missing)]
        else:
            chunks.pop(key, None)

    def claim(self, tasks: Sequence[Task]) -> bool:
        """Before the run: record as partial every unstored chunk that the run leaves partly
        empty, so that a run interrupted after writing it cannot leave it looking whole.
        Returns whether the record changed."""
        changed = False
        for task in tasks:
            for name, idx in self.chunks(task):
                if self.stored_missing(name, idx) is None:
                    missing = self.missing_after(name, idx)
                    if missing:
                        self._set(name, idx, missing)
                        changed = True
        return changed

    def done(self, tasks: Sequence[Task]) -> bool:
        """After the run: the chunks of ``tasks`` (which succeeded) are stored; returns whether
        the record changed."""
        changed = False
        for task in tasks:
            for name, idx in self.chunks(task):
                missing = self.missing_after(name, idx)
                key = self._grids[name].key(idx)
                old = self.record.get(name, {}).get(key)
                self._set(name, idx, missing)
                changed |= old != self.record.get(name, {}).get(key)
            for name, idx in self.chunks(task) or self._static_chunks(task):
                self.found.setdefault(name, set()).add(idx)
        return changed

    def missing_positions(self, names: Sequence[str]) -> np.ndarray:
        """Bool per template position: some array of ``names`` lacks it in the store."""
        missing = np.zeros(self._n, dtype=bool)
        for name in names:
            grid = self._grids[name]
            axis = self.info.arrays[name].dims.index(self.time_dim)
            per_step = grid.nunits // max(grid.grid_shape[axis], 1)
            counts = np.zeros(grid.grid_shape[axis], dtype=np.int64)
            for idx in self.found.get(name, ()):
                counts[idx[axis]] += 1
            for t in np.flatnonzero(counts < per_step).tolist():
                lo, hi = self._span(name, tuple(t if a == axis else 0 for a in range(grid.ndim)))
                missing[lo:hi] = True
            for labels in self.record.get(name, {}).values():
                missing[[self._position[t] for t in labels if t in self._position]] = True
        return missing
