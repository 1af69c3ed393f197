"""sample_files: the documentation's sample data, in three layouts holding the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xarray_zarrwrite.errors import OptionError
from xarray_zarrwrite.testing import sample_files


def test_layouts_hold_the_same_values(tmp_path):
    monthly = sample_files(tmp_path / "m", start="2000-02", months=2, nlat=3, nlon=4)
    assert [p.rsplit("/", 1)[-1] for p in monthly] == ["t2m_2000-02.nc", "t2m_2000-03.nc"]
    per_var = sample_files(
        tmp_path / "v", start="2000-02", months=2, nlat=3, nlon=4, layout="per-variable"
    )
    assert [p.rsplit("/", 1)[-1] for p in per_var] == [
        "t2m_2000-02.nc",
        "t2m_2000-03.nc",
        "tcwv_2000-02.nc",
        "tcwv_2000-03.nc",
    ]
    members = sample_files(
        tmp_path / "e",
        start="2000-02",
        months=1,
        nlat=3,
        nlon=4,
        layout="per-member",
        members=2,
        prefix="ens_",
    )
    assert [p.rsplit("/", 1)[-1] for p in members] == ["ens_m0_2000-02.nc", "ens_m1_2000-02.nc"]
    with xr.open_mfdataset(monthly) as a, xr.open_mfdataset(per_var) as b:
        assert a.sizes["time"] == 29 + 31  # leap February, whole months
        assert str(a.time.values[-1])[:10] == "2000-03-31"
        for name in ("t2m", "tcwv"):
            assert a[name].values.tobytes() == b[name].values.tobytes()
        with xr.open_dataset(members[1]) as m1:
            assert m1.t2m.dims == ("time", "member", "lat", "lon")
            assert list(m1.member.values) == [1]
            feb = a.t2m.sel(time="2000-02").values
            np.testing.assert_array_equal(m1.t2m.values[:, 0], feb + np.float32(0.25))
    again = sample_files(tmp_path / "m2", start="2000-02", months=2, nlat=3, nlon=4)
    with xr.open_dataset(monthly[1]) as x, xr.open_dataset(again[1]) as y:
        assert x.t2m.values.tobytes() == y.t2m.values.tobytes()  # reproducible


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "daily"}, "layout must be one of"),
        ({"months": 0}, "months must be a positive integer"),
        ({"nlat": 2.5}, "nlat must be a positive integer"),
        ({"start": "not a month"}, "start must be a month"),
    ],
)
def test_bad_options(tmp_path, kwargs, match):
    with pytest.raises(OptionError, match=match):
        sample_files(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()  # nothing written
