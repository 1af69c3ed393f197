"""Pictures of a :class:`~xarray_zarrwrite.CheckReport`: a completeness map per write unit.

:func:`to_dataarray` turns the report into an :class:`xarray.DataArray` with one cell per write
unit (0 missing, 1 partial, 2 written), :func:`plot` draws it with matplotlib (imported lazily:
the ``plot`` extra) and :func:`to_html` is the notebook representation.

Variables may be chunked differently along the same dimension: the cells along a dimension are
then the intervals between the unit boundaries of every variable, and each variable's value in
a cell is the state of the unit of that variable that holds it. A variable without one of the
dimensions has the state of its unit in every cell along it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import xarray as xr

from .errors import MissingDependencyError

if TYPE_CHECKING:
    from ._check import CheckReport, VariableCompleteness

__all__ = [
    "FLAG_MEANINGS",
    "MISSING",
    "PARTIAL",
    "WRITTEN",
    "plot",
    "to_dataarray",
    "to_html",
    "to_svg",
]

MISSING: Final = 0
PARTIAL: Final = 1
WRITTEN: Final = 2
FLAG_MEANINGS: Final = "missing partial written"
#: Colours of the three states: missing, partial, written.
COLOURS: Final = ("#d62728", "#ffbf00", "#2ca02c")


def _dims(report: CheckReport) -> list[str]:
    """``(time dim, other dims in order of appearance)`` over every variable checked."""
    seen: list[str] = []
    for v in report.variables.values():
        seen.extend(d for d in v.dims if d not in seen)
    if report.time_dim in seen:
        seen.remove(report.time_dim)
        seen.insert(0, report.time_dim)
    return seen


def _boundaries(report: CheckReport, dim: str) -> np.ndarray:
    """Sorted unit starts along ``dim`` over every variable that has it, and the dim's end."""
    starts: set[int] = set()
    end = 0
    for v in report.variables.values():
        if dim in v.dims:
            axis = v.dims.index(dim)
            size, unit = v.shape[axis], v.chunks[axis]
            starts.update(range(0, size, unit) if size else [0])
            end = max(end, size)
    return np.array([*sorted(starts), end], dtype=np.int64)


def _labels(report: CheckReport, dim: str, positions: np.ndarray) -> np.ndarray:
    index = report.indexes.get(dim)
    if index is None or len(index) == 0:
        return positions
    return np.asarray(index[np.minimum(positions, len(index) - 1)])


def _unit_states(v: VariableCompleteness) -> np.ndarray:
    """The state of every write unit of ``v``, shaped like its unit grid."""
    grid = tuple(-(-s // c) if s else 1 for s, c in zip(v.shape, v.chunks, strict=True))
    states = np.full(grid, WRITTEN, dtype=np.int8)
    for idx in v.missing_chunks:
        states[idx] = MISSING
    for idx in v.partial_chunks:
        states[idx] = PARTIAL
    return states


def _cells(
    v: VariableCompleteness, dims: Sequence[str], starts: Mapping[str, np.ndarray]
) -> np.ndarray:
    """``v``'s unit states on the common cells of ``dims`` (broadcast where ``v`` lacks one)."""
    states = _unit_states(v)
    take: list[Any] = []
    for axis, d in enumerate(v.dims):
        unit = v.chunks[axis]
        take.append(starts[d] // unit if unit else np.zeros(len(starts[d]), dtype=np.int64))
    values = states[np.ix_(*take)] if take else states.reshape(())
    order = [v.dims.index(d) for d in dims if d in v.dims]
    values = values.transpose(order)
    shape = [len(starts[d]) if d in v.dims else 1 for d in dims]
    return np.broadcast_to(values.reshape(shape), [len(starts[d]) for d in dims])


def to_dataarray(report: CheckReport) -> xr.DataArray:
    """The completeness map of ``report``: see :meth:`CheckReport.to_dataarray`."""
    all_dims = _dims(report)
    bounds = {d: _boundaries(report, d) for d in all_dims}
    dims = [d for d in all_dims if d == report.time_dim or len(bounds[d]) > 2]
    starts = {d: b[:-1] for d, b in bounds.items()}
    # dims with a single cell everywhere are summarised: every variable has one unit there
    names = list(report.variables)
    data = np.stack(
        [_cells(report.variables[n], all_dims, starts) for n in names]
        if names
        else [np.zeros([len(starts[d]) for d in all_dims], dtype=np.int8)]
    )
    squeeze = tuple(1 + i for i, d in enumerate(all_dims) if d not in dims)
    data = data.reshape([s for i, s in enumerate(data.shape) if i not in squeeze])
    coords: dict[str, Any] = {"variable": np.array(names, dtype=object)}
    for d in dims:
        coords[d] = (d, _labels(report, d, starts[d]), {"long_name": f"first {d} of the unit"})
        last = _labels(report, d, bounds[d][1:] - 1)
        coords[f"{d}_last"] = (d, last, {"long_name": f"last {d} of the unit"})
        coords[f"{d}_index"] = (d, starts[d], {"long_name": f"first position along {d}"})
    return xr.DataArray(
        data[: len(names)].astype(np.int8),
        dims=("variable", *dims),
        coords=coords,
        name="completeness",
        attrs={
            "long_name": "completeness of each write unit",
            "flag_values": np.array([MISSING, PARTIAL, WRITTEN], dtype=np.int8),
            "flag_meanings": FLAG_MEANINGS,
            "store": report.store,
        },
    )


def _rows(da: xr.DataArray, time_dim: str | None) -> tuple[np.ndarray, list[str], str | None]:
    """A 2-d ``(rows, columns)`` view: rows are variables (x other dims), columns time."""
    dims = [str(d) for d in da.dims]
    xdim = time_dim if time_dim in dims else (dims[1] if len(dims) > 1 else None)
    other = [d for d in dims if d not in ("variable", xdim)]
    order = ["variable", *other] + ([xdim] if xdim else [])
    arr = da.transpose(*order).values
    nrows = int(np.prod(arr.shape[: 1 + len(other)]))
    grid = arr.reshape(nrows, -1)
    labels: list[str] = []
    for idx in np.ndindex(*arr.shape[: 1 + len(other)]):
        parts = [str(da["variable"].values[idx[0]])]
        parts += [f"{d}={_short(da[d].values[i])}" for d, i in zip(other, idx[1:], strict=True)]
        labels.append(" ".join(parts))
    return grid, labels, xdim


def _short(value: Any) -> str:
    if isinstance(value, np.datetime64):
        ts = pd.Timestamp(value)
        return str(ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat())
    return str(value)


def plot(report: CheckReport, ax: Any = None, title: str | None = None) -> Any:
    """Draw the completeness map of ``report``: see :meth:`CheckReport.plot`."""
    try:
        import matplotlib.pyplot as plt
        from matplotlib.colors import BoundaryNorm, ListedColormap
        from matplotlib.patches import Patch
    except ImportError as e:
        raise MissingDependencyError(
            "CheckReport.plot needs matplotlib: pip install 'xarray_zarrwrite[plot]' "
            "(or pip install matplotlib)"
        ) from e
    da = to_dataarray(report)
    grid, labels, xdim = _rows(da, report.time_dim)
    if ax is None:
        height = min(2.0 + 0.3 * len(labels), 12.0)
        _, ax = plt.subplots(figsize=(10, height), layout="constrained")
    cmap = ListedColormap(list(COLOURS))
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    ax.set_yticks(range(len(labels)), labels)
    if xdim is not None:
        ncol = grid.shape[1]
        ticks = np.unique(np.linspace(0, ncol - 1, min(ncol, 8)).round().astype(int))
        ax.set_xticks(ticks, [_short(da[xdim].values[t]) for t in ticks], rotation=30, ha="right")
        ax.set_xlabel(f"{xdim} (one column per write unit)")
    done = int((grid == WRITTEN).sum())
    ax.set_title(title or f"{report.store}: {done}/{grid.size} cells written")
    handles = [Patch(color=c, label=m) for c, m in zip(COLOURS, FLAG_MEANINGS.split(), strict=True)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return ax


def to_html(report: CheckReport) -> str:
    """A small HTML table of ``report`` for notebooks: see :meth:`CheckReport._repr_html_`."""
    state = "complete" if report.complete else "INCOMPLETE"
    rows = []
    for v in report.variables.values():
        spans = ", ".join(f"{a} .. {b}" for a, b in v.missing[:8])
        if len(v.missing) > 8:
            spans += f" (+{len(v.missing) - 8} more)"
        colour = COLOURS[WRITTEN] if v.complete else COLOURS[MISSING]
        rows.append(
            f"<tr><td><b>{html.escape(v.name)}</b></td>"
            f"<td style='color:{colour}'>{v.written}/{v.total}</td>"
            f"<td>{len(v.partial_chunks)}</td><td>{html.escape(spans)}</td></tr>"
        )
    head = (
        f"<p><b>{html.escape(report.store)}</b>: {state}, "
        f"{report.written}/{report.total} write units written</p>"
    )
    table = (
        "<table><thead><tr><th>variable</th><th>written</th><th>partial</th>"
        f"<th>missing along {html.escape(str(report.time_dim))}</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    stray = f"<p>{len(report.stray)} leftover temporary file(s)</p>" if report.stray else ""
    return f"<div class='xzw-check'>{head}{to_svg(report)}{table}{stray}</div>"


def to_svg(report: CheckReport, width: int = 600, row: int = 14) -> str:
    """The completeness map as a small inline SVG: one rectangle per cell, runs merged."""
    if not report.variables:
        return ""
    grid, labels, _ = _rows(to_dataarray(report), report.time_dim)
    label_w = 8 * max(len(label) for label in labels) + 8
    cell = width / max(grid.shape[1], 1)
    rects: list[str] = []
    for r, states in enumerate(grid):
        rects.append(
            f"<text x='0' y='{r * row + row - 3}' font-size='11'>{html.escape(labels[r])}</text>"
        )
        start = 0
        for c in range(1, len(states) + 1):  # one rectangle per run of equal states
            if c == len(states) or states[c] != states[start]:
                rects.append(
                    f"<rect x='{label_w + start * cell:.2f}' y='{r * row}' "
                    f"width='{(c - start) * cell:.2f}' height='{row - 2}' "
                    f"fill='{COLOURS[int(states[start])]}'/>"
                )
                start = c
    height = row * len(labels)
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_w + width}' height='{height}' "
        f"role='img' aria-label='completeness map'>{''.join(rects)}</svg>"
    )
