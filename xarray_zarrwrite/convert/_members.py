"""Files per ensemble member: the sources split the archive along a dimension besides time.

Ensembles come as one file per member (``t2m_member03_2001.nc``), the member given either as
a dimension coordinate of each file (ERA5's ``number``, a ``member`` dimension of length 1 or
more) or as a scalar coordinate (CMIP's ``realization``/``member_id``), which becomes a
dimension of length 1.

The member dimension is *inferred*: it is the one dimension (or scalar coordinate) along which
sources that hold the same time steps of the same variable differ. Sources that differ along
a dimension without ever holding the same steps (another grid in one yearly file) are not a
layout but a mistake, and are refused as before.

The archive's labels along it are the sorted union of the sources' labels (descending when
every source's labels descend), as ``xr.open_mfdataset(combine="by_coords")`` orders them;
labels that cannot be sorted (mixed types) keep the order in which the sources hold them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import LayoutError, RegionLabelError
from ._sources import SourceSchema, VariableSchema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberAxis:
    """The member dimension of a layout with files per member."""

    dim: str
    labels: pd.Index  # of the archive (a new one), or of the sources (their union, sorted)
    scalar: bool  # the sources hold it as a scalar coordinate


def infer_members(
    schemas: Sequence[SourceSchema],
    time_dim: str,
    template: Mapping[str, pd.Index] | None = None,
) -> MemberAxis | None:
    """The member dimension of ``schemas``, or None when the sources do not split one.

    ``template``: the indexes of an existing archive (its member dimension, if the sources
    have one, must be one of them; the labels are then the archive's).

    Raises
    ------
    LayoutError
        The sources differ along more than one dimension while holding the same steps.
    """
    found = [
        (dim, False)
        for dim in _differing_dims(schemas, time_dim)
        if _separates(schemas, functools.partial(_labels_key, dim))
    ]
    if not found:
        found = [
            (name, True)
            for name in _differing_scalars(schemas)
            if _separates(schemas, functools.partial(_scalar_key, name))
        ]
    if not found and template is not None:
        found = _archive_members(schemas, time_dim, template)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(repr(d) for d, _ in found)
        raise LayoutError(
            f"the sources differ along several dimensions ({names}) for the same time steps; "
            "convert splits the archive along time, by variable and along one member "
            "dimension: drop the others with preprocess="
        )
    dim, scalar = found[0]
    if template is not None and dim in template:
        return MemberAxis(dim, template[dim], scalar)
    if scalar:
        groups = [pd.Index([s.scalars[dim]]) for s in schemas]
    else:
        groups = [s.indexes[dim] for s in schemas]
    return MemberAxis(dim, _union(groups), scalar)


def _archive_members(
    schemas: Sequence[SourceSchema], time_dim: str, template: Mapping[str, pd.Index]
) -> list[tuple[str, bool]]:
    """The archive's member dimension for sources of fewer members than it has (a re-run with
    one member's files): a dimension of the archive that every source holds as a scalar
    coordinate, or holds in part (labels a strict subset of the archive's) before time in
    each variable's dimensions, as members come (a split of a spatial dimension is not
    taken for members: it is refused as another grid)."""
    out: list[tuple[str, bool]] = []
    for dim, labels in template.items():
        if dim == time_dim:
            continue
        if all(dim in s.scalars and dim not in s.sizes for s in schemas):
            if all(_hashable(s.scalars[dim]) in labels for s in schemas):
                out.append((dim, True))
        elif all(_part_before_time(s, dim, labels, time_dim) for s in schemas):
            out.append((dim, False))
    return out


def _part_before_time(s: SourceSchema, dim: str, labels: pd.Index, time_dim: str) -> bool:
    own = s.indexes.get(dim)
    if own is None or len(own) >= len(labels) or not own.isin(labels).all():
        return False
    dims = [v.dims for v in s.data_vars.values() if dim in v.dims and time_dim in v.dims]
    return bool(dims) and all(d.index(dim) < d.index(time_dim) for d in dims)


def _differing_dims(schemas: Sequence[SourceSchema], time_dim: str) -> list[str]:
    dims = [d for d in schemas[0].indexes if d != time_dim]
    out = []
    for dim in dims:
        if not all(dim in s.indexes for s in schemas):
            continue
        first = schemas[0].indexes[dim]
        # look-alike files (the fast scan) share their index objects: each compared once
        same: dict[int, bool] = {id(first): True}
        for s in schemas:
            key = id(s.indexes[dim])
            if key not in same:
                same[key] = bool(s.indexes[dim].equals(first))
            if not same[key]:
                out.append(dim)
                break
    return out


def _differing_scalars(schemas: Sequence[SourceSchema]) -> list[str]:
    out = []
    for name in schemas[0].scalars:
        if not all(name in s.scalars and name not in s.sizes for s in schemas):
            continue
        if len({_hashable(s.scalars[name]) for s in schemas}) > 1:
            out.append(name)
    return out


def _labels_key(dim: str, schema: SourceSchema) -> Hashable:
    return tuple(schema.indexes[dim].tolist())


def _scalar_key(name: str, schema: SourceSchema) -> Hashable:
    return _hashable(schema.scalars[name])


def _hashable(value: Any) -> Hashable:
    return value.item() if isinstance(value, np.ndarray) else value  # type: ignore[no-any-return]


def _separates(schemas: Sequence[SourceSchema], key: Callable[[SourceSchema], Hashable]) -> bool:
    """Whether two sources that differ in ``key`` hold the same time step of a variable."""
    seen: dict[tuple[str, Hashable], Hashable] = {}
    for s in schemas:
        k = key(s)
        labels = s.times.tolist()
        for name in s.data_vars:
            for t in labels:
                other = seen.setdefault((name, t), k)
                if other != k:
                    return True
    return False


def _union(groups: Sequence[pd.Index]) -> pd.Index:
    union = groups[0].append(list(groups[1:])).unique()
    try:
        ordered = union.sort_values()
    except TypeError:  # labels of mixed types: the order the sources hold them in
        return union
    descending = any(len(g) > 1 for g in groups) and all(g.is_monotonic_decreasing for g in groups)
    return ordered[::-1] if descending else ordered


def expand_schema(schema: SourceSchema, axis: MemberAxis) -> SourceSchema:
    """``schema`` with its scalar member coordinate made a dimension of length 1 (first, as
    ``Dataset.expand_dims`` puts it) of every data variable."""
    if not axis.scalar or axis.dim in schema.sizes:
        return schema
    dim = axis.dim
    return replace(
        schema,
        sizes={dim: 1, **schema.sizes},
        data_vars={
            n: VariableSchema((dim, *v.dims), v.dtype, v.attrs) for n, v in schema.data_vars.items()
        },
        indexes={dim: pd.Index([schema.scalars[dim]]), **schema.indexes},
    )


def member_positions(schema: SourceSchema, axis: MemberAxis, what: str) -> np.ndarray:
    """The archive positions of the (expanded) source's member labels.

    Raises
    ------
    RegionLabelError
        A label the archive's member dimension lacks (names the source)."""
    labels = schema.indexes[axis.dim]
    pos = axis.labels.get_indexer(labels)
    if (pos < 0).any():
        bad = labels[int(np.flatnonzero(pos < 0)[0])]
        raise RegionLabelError(
            f"source {schema.label!r} holds {axis.dim} {bad!r}, which {what} does not have "
            f"(its {axis.dim} labels: {list(axis.labels)[:10]}); convert into a new archive "
            "(resume=False) to add members"
        )
    out: np.ndarray = np.asarray(pos, dtype=np.int64)
    return out


def expand_example(example: xr.Dataset, axis: MemberAxis) -> xr.Dataset:
    """The template's example along the archive's whole member axis (the first member's
    values repeated: only the metadata and the coordinate labels are used)."""
    dim = axis.dim
    if dim not in example.dims:
        example = example.expand_dims(dim)
    along = [n for n, c in example.coords.items() if dim in c.dims and n != dim]
    if along:
        logger.warning(
            "coordinates %s along the member dimension %r are not converted (files per member)",
            along,
            dim,
        )
        example = example.drop_vars(along)
    coord = example[dim].variable
    out = example.isel({dim: np.zeros(len(axis.labels), dtype=np.int64)})
    values = np.asarray(axis.labels.values).astype(coord.dtype)
    new = xr.Variable((dim,), values, attrs=coord.attrs, encoding=coord.encoding)
    return out.assign_coords({dim: new})
