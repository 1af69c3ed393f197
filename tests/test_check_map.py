"""CheckReport.to_dataarray / plot / _repr_html_: one cell per write unit, known states."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from xarray_zarrwrite._check import PARTIAL_ATTR, check
from xarray_zarrwrite.api import to_template, write_region
from xarray_zarrwrite.errors import MissingDependencyError
from xarray_zarrwrite.testing.datasets import era5_like

CHUNKS = {"time": 10, "lat": 6, "lon": 24}  # 37 x 2 x 1 units over a leap year


def mark_partial(path, record) -> None:
    """What convert records for units its sources covered only in part."""
    zarr.open_group(path, mode="a").attrs[PARTIAL_ATTR] = record


def expected_grid(year_days: int = 366) -> np.ndarray:
    """(variable, time unit, lat unit) states the scenario of ``scenario`` leaves."""
    grid = np.zeros((2, 37, 2), dtype=np.int8)
    grid[:, 0:6, :] = 2  # January and February, both variables
    grid[0, 36, :] = 2  # t2m's last (short) unit
    grid[1, 3, 1] = 0  # tcwv unit (3, 1, 0) deleted
    grid[0, 36, 1] = 1  # t2m's last unit, south half: recorded partial
    return grid


def scenario(tmp_path, year):
    path = tmp_path / "a.zarr"
    to_template(year.isel(time=slice(0, 31)), path, global_end="2000-12-31", chunks=CHUNKS)
    write_region(year.sel(time=slice("2000-01-01", "2000-02-29")), path)
    write_region(year[["t2m"]].isel(time=slice(360, 366)), path)
    (path / "tcwv" / "c" / "3" / "1" / "0").unlink()
    mark_partial(path, {"t2m": {"c/36/1/0": ["2000-12-31"]}})
    return path


def test_to_dataarray_states_and_labels(tmp_path, year):
    path = scenario(tmp_path, year)
    da = check(path).to_dataarray()
    assert da.dims == ("variable", "time", "lat")  # lon has one unit: summarised
    assert list(da["variable"].values) == ["t2m", "tcwv"]
    np.testing.assert_array_equal(da.values, expected_grid())
    assert da.dtype == np.int8
    assert da.attrs["flag_meanings"] == "missing partial written"
    assert list(da.attrs["flag_values"]) == [0, 1, 2]
    # each cell labelled with its unit's first label; the last unit is short (6 days)
    assert da["time"].values[0] == np.datetime64("2000-01-01")
    assert da["time"].values[-1] == np.datetime64("2000-12-26")
    assert da["time_last"].values[-1] == np.datetime64("2000-12-31")
    assert list(da["time_index"].values[-2:]) == [350, 360]
    np.testing.assert_array_equal(da["lat"].values, year.lat.values[[0, 6]])
    assert da["lat_last"].values[-1] == year.lat.values[-1]
    # the map agrees with the report's own counts
    status = check(path)
    assert int((da.sel(variable="tcwv") == 2).sum()) == status.variables["tcwv"].written
    back = xr.open_zarr(path, chunks=None)
    assert back.t2m.isel(time=-1).values.tobytes() == year.t2m.isel(time=-1).values.tobytes()


def test_variable_without_a_dim_repeats_and_member_dim(tmp_path):
    base = era5_like("2000-01-01", 20, nlat=4, nlon=8, variables=("t2m",))
    ens = xr.concat([base, base + 1], dim=xr.DataArray([0, 1], dims="member", name="member"))
    ens["gm"] = ens.t2m.mean(("lat", "lon", "member"))
    path = tmp_path / "e.zarr"
    to_template(
        ens.isel(time=slice(0, 5)),
        path,
        global_end=ens.time.values[-1],
        chunks={"time": 5, "member": 1, "lat": -1, "lon": -1},
    )
    write_region(
        ens.isel(time=slice(0, 10), member=[0]),
        path,
        region={
            "time": slice(0, 10),
            "member": slice(0, 1),
            "lat": slice(0, 4),
            "lon": slice(0, 8),
        },
    )
    write_region(ens[["gm"]].isel(time=slice(15, 20)), path)
    da = check(path).to_dataarray()
    assert da.dims == ("variable", "time", "member")
    assert list(da["member"].values) == [0, 1]
    assert sorted(da["variable"].values) == ["gm", "t2m"]
    t2m = np.array([[2, 0], [2, 0], [0, 0], [0, 0]])
    gm = np.array([[2, 2], [2, 2], [0, 0], [2, 2]])  # no member dim: repeated along it
    np.testing.assert_array_equal(da.sel(variable="t2m").values, t2m)
    np.testing.assert_array_equal(da.sel(variable="gm").values, gm)


def test_plot_draws_the_map(tmp_path, year):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    status = check(scenario(tmp_path, year))
    ax = status.plot()
    try:
        drawn = np.asarray(ax.images[0].get_array())
        # rows: variable x lat, columns: time units
        want = expected_grid().transpose(0, 2, 1).reshape(4, 37)
        np.testing.assert_array_equal(drawn, want)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == [
            "t2m lat=90.0",
            f"t2m lat={year.lat.values[6]}",
            "tcwv lat=90.0",
            f"tcwv lat={year.lat.values[6]}",
        ]
        png = tmp_path / "map.png"
        ax.figure.savefig(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        plt.close(ax.figure)


def test_plot_without_matplotlib(tmp_path, year, monkeypatch):
    status = check(scenario(tmp_path, year))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependencyError, match=r"xarray_zarrwrite\[plot\]"):
        status.plot()


def test_html_repr(tmp_path, year):
    status = check(scenario(tmp_path, year))
    text = status._repr_html_()
    assert "INCOMPLETE" in text and "<table>" in text
    assert "t2m" in text and "tcwv" in text
    assert f"{status.variables['tcwv'].written}/{status.variables['tcwv'].total}" in text
    assert str(tmp_path / "a.zarr") in text  # the store as a path, not a repr
    # the map as SVG: rows variable x lat; one rectangle per run of equal states
    assert text.count("<svg") == 1 and text.count("<text") == 4
    runs = sum(
        1 + int(np.count_nonzero(np.diff(states)))
        for states in expected_grid().transpose(0, 2, 1).reshape(4, 37)
    )
    assert text.count("<rect") == runs
    assert "#ffbf00" in text and "#d62728" in text and "#2ca02c" in text


def test_variables_chunked_differently_share_cells():
    from xarray_zarrwrite._check import CheckReport, VariableCompleteness

    def var(name, dims, shape, chunks, missing=(), partial=()):
        return VariableCompleteness(
            name=name,
            dims=dims,
            shape=shape,
            chunks=chunks,
            total=0,
            written=0,
            missing_chunks=tuple(missing),
            missing=(),
            missing_index=(),
            range_dim=dims[0] if dims else None,
            partial_chunks=tuple(partial),
        )

    time = pd.date_range("2001-01-01", periods=30, freq="D")
    report = CheckReport(
        store="x.zarr",
        variables={
            "a": var("a", ("time",), (30,), (10,), missing=[(1,)]),
            "b": var("b", ("time",), (30,), (15,), missing=[(0,)], partial=[(0,)]),
            "c": var("c", (), (), (), missing=[]),
        },
        time_dim="time",
        indexes={"time": time},
    )
    da = report.to_dataarray()
    assert da.dims == ("variable", "time")
    # cells between every unit boundary of every variable: 0, 10, 15, 20, 30
    assert list(da["time_index"].values) == [0, 10, 15, 20]
    assert list(da["time"].values) == list(time[[0, 10, 15, 20]].values)
    assert list(da["time_last"].values) == list(time[[9, 14, 19, 29]].values)
    np.testing.assert_array_equal(da.sel(variable="a").values, [2, 0, 0, 2])
    np.testing.assert_array_equal(da.sel(variable="b").values, [1, 1, 2, 2])
    np.testing.assert_array_equal(da.sel(variable="c").values, [2, 2, 2, 2])  # 0-d: repeated
