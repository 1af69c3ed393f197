"""StreamWriter with arrays of other frameworks: PyTorch tensors, anything with ``__dlpack__``.

PyTorch runs on the oldest (Python 3.11) leg only, pinned to a CPU build (``torch`` extra);
the tests that need it skip cleanly elsewhere.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite._staging import as_array
from xarray_zarrwrite.errors import DtypeCastError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot

NSTEPS = 9


@pytest.fixture
def steps():
    return era5_like("2000-01-01", NSTEPS, freq="h", nlat=8, nlon=16)


@pytest.fixture
def path(tmp_path, steps):
    out = str(tmp_path / "t.zarr")
    steps.isel(time=slice(0, 3)).fastzarr.to_template(
        out, global_end=steps.time[-1].values, chunks={"time": 4}
    )
    return out


class DLPackOnly:
    """An array of some framework that offers nothing but the DLPack protocol."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = values

    def __dlpack__(self, **kwargs):
        return self._values.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._values.__dlpack_device__()


def test_dlpack_only_arrays_through_write_arrays(path, steps):
    order = list(range(NSTEPS))
    random.Random(1).shuffle(order)
    with xzw.StreamWriter(path) as writer:
        for i in order:
            writer.write_arrays(
                {n: DLPackOnly(steps[n].values[i : i + 1]) for n in ("t2m", "tcwv")},
                {"time": steps.time.values[i : i + 1]},
            )
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_as_array_views_host_dlpack_without_copy(steps):
    values = steps.t2m.values
    view = as_array(DLPackOnly(values))
    assert isinstance(view, np.ndarray) and np.shares_memory(view, values)


def test_torch_cpu_tensors_through_write_arrays(path, steps):
    torch = pytest.importorskip("torch")
    order = list(range(NSTEPS))
    random.Random(2).shuffle(order)
    with xzw.StreamWriter(path) as writer:
        for i in order:
            tensors = {n: torch.from_numpy(steps[n].values[i : i + 1]) for n in ("t2m", "tcwv")}
            tensors["t2m"].requires_grad_(True)  # a model output: detached, not refused
            writer.write_arrays(tensors, {"time": steps.time.values[i : i + 1]})
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_torch_cpu_tensors_inside_xarray_objects(path, steps):
    torch = pytest.importorskip("torch")
    with xzw.StreamWriter(path) as writer:
        for i in reversed(range(NSTEPS)):
            step = steps.isel(time=[i])
            ds = xr.Dataset(
                {n: (step[n].dims, torch.from_numpy(step[n].values)) for n in ("t2m", "tcwv")},
                coords=step.coords,
            )
            writer.write(ds)
    xr.testing.assert_identical(xr.open_zarr(path).load(), steps)


def test_torch_tensor_is_a_zero_copy_view():
    torch = pytest.importorskip("torch")
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view = as_array(tensor)
    assert isinstance(view, np.ndarray)
    assert view.ctypes.data == tensor.data_ptr()


def test_torch_dtype_without_numpy_twin_is_refused(path, steps):
    torch = pytest.importorskip("torch")
    before = snapshot(path)
    with xzw.StreamWriter(path) as writer:
        bad = torch.from_numpy(steps.t2m.values[:1]).to(torch.bfloat16)
        with pytest.raises(DtypeCastError, match="bfloat16") as info:
            writer.write_arrays({"t2m": bad}, {"time": steps.time.values[:1]})
        assert isinstance(info.value, ValueError)
    assert snapshot(path) == before
