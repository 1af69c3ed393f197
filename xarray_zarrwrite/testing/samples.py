"""Sample NetCDF files for the documentation, the quickstart and ``xarray-zarrwrite demo``.

:func:`sample_files` writes small reanalysis-like files (daily data on a coarse grid) in the
layouts people receive: one file per month, one file per variable and month (ERA5, CMIP), one
file per ensemble member and month. Values depend only on the timestamps, so every layout of
the same period holds the same numbers, and the files are identical on every run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import OptionError
from .datasets import era5_like

__all__ = ["LAYOUTS", "sample_files"]

Layout = Literal["monthly", "per-variable", "per-member"]
LAYOUTS: tuple[Layout, ...] = ("monthly", "per-variable", "per-member")
#: Every file of every layout shares this time encoding, as an archive's sources usually do.
TIME_ENCODING = {"units": "days since 2000-01-01", "calendar": "proleptic_gregorian"}


def sample_files(
    directory: str | os.PathLike[str] = ".",
    *,
    start: str = "2000-01",
    months: int = 12,
    layout: Layout = "monthly",
    prefix: str = "t2m_",
    variables: Sequence[str] = ("t2m", "tcwv"),
    members: int = 3,
    nlat: int = 12,
    nlon: int = 24,
) -> list[str]:
    """Write sample NetCDF files of daily data into ``directory``; returns their paths.

    Parameters
    ----------
    directory
        Folder to write into (created if needed).
    start
        First month, ``"YYYY-MM"``.
    months
        Number of months (one file per month, per variable or member in those layouts).
    layout
        ``"monthly"``: ``<prefix>YYYY-MM.nc`` holding every variable;
        ``"per-variable"``: ``<variable>_YYYY-MM.nc`` holding one variable each;
        ``"per-member"``: ``<prefix>mK_YYYY-MM.nc`` holding member ``K`` (a ``member``
        coordinate of length 1) of every variable.
    prefix
        Start of the file names (``"monthly"`` and ``"per-member"``).
    variables
        Data variables, ``float32`` on ``(time, lat, lon)`` (``(time, member, lat, lon)``
        per member).
    members
        Ensemble members of the ``"per-member"`` layout.
    nlat, nlon
        Grid size.

    Returns
    -------
    list of str
        The paths written, sorted.

    Raises
    ------
    OptionError
        An unknown ``layout``, a non-positive size or a malformed ``start``.

    Examples
    --------
    >>> from xarray_zarrwrite.testing import sample_files
    >>> paths = sample_files("data", months=2)  # doctest: +SKIP
    >>> paths  # doctest: +SKIP
    ['data/t2m_2000-01.nc', 'data/t2m_2000-02.nc']
    """
    edges = _month_edges(start, months, layout, members, nlat, nlon)
    os.makedirs(directory, exist_ok=True)
    days = int((edges[-1] - edges[0]).days)
    whole = era5_like(str(edges[0].date()), days, nlat=nlat, nlon=nlon, variables=tuple(variables))
    paths: list[str] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        month = whole.sel(time=slice(a, b - pd.Timedelta(days=1)))
        for name, part in _parts(month, layout, prefix, members):
            path = os.path.join(os.fspath(directory), f"{name}{a:%Y-%m}.nc")
            _write(part, path)
            paths.append(path)
    return sorted(paths)


def _month_edges(
    start: str, months: int, layout: str, members: int, nlat: int, nlon: int
) -> pd.DatetimeIndex:
    if layout not in LAYOUTS:
        raise OptionError(f"layout must be one of {list(LAYOUTS)}; got {layout!r}")
    for what, n in (("months", months), ("members", members), ("nlat", nlat), ("nlon", nlon)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptionError(f"{what} must be a positive integer; got {n!r}")
    try:
        first = pd.Timestamp(start).to_period("M").to_timestamp()
    except (ValueError, TypeError) as e:
        raise OptionError(f"start must be a month such as '2000-01'; got {start!r}") from e
    return pd.date_range(first, periods=months + 1, freq="MS")


def _parts(
    month: xr.Dataset, layout: str, prefix: str, members: int
) -> list[tuple[str, xr.Dataset]]:
    if layout == "monthly":
        return [(prefix, month)]
    if layout == "per-variable":
        return [(f"{name}_", month[[name]]) for name in map(str, month.data_vars)]
    out = []
    for k in range(members):
        # each member a little warmer, reproducibly; a member coordinate of length 1
        member = month.map(
            lambda v, k=k: (v + np.float32(0.25 * k)).astype(v.dtype), keep_attrs=True
        )
        member = member.expand_dims(member=[k], axis=1)
        out.append((f"{prefix}m{k}_", member))
    return out


def _write(ds: xr.Dataset, path: str) -> None:
    encoding: dict[str, dict[str, object]] = {"time": dict(TIME_ENCODING)}
    for name in ds.data_vars:
        encoding[str(name)] = {"_FillValue": np.float32(np.nan)}
    ds.to_netcdf(path, encoding=encoding)
