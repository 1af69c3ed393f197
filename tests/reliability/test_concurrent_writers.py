"""8 OS processes, randomized aligned layouts: zero cells lost or wrong; misaligned: refused."""

from __future__ import annotations

import multiprocessing as mp
import random

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xarray_zarrwrite  # noqa: F401
from xarray_zarrwrite.testing.snapshot import snapshot

from ._workers import cell_values, piece, write_pieces

NPROC = 8
FAST, LONG = 4, 50
COUNTS = {"trials": 0, "cells": 0, "refused": 0}


@pytest.fixture(scope="module")
def pool():
    with mp.get_context("spawn").Pool(NPROC) as p:
        yield p


@st.composite
def layouts(draw, aligned=True):
    ct = draw(st.integers(1, 7))
    cy = draw(st.integers(1, 5))
    nt = ct * draw(st.integers(2, 8)) - draw(st.integers(0, ct - 1))  # last chunk may be partial
    ny = cy * draw(st.integers(1, 4))
    nx = draw(st.integers(1, 6))

    def cuts(n, c):
        inner = list(range(c, n, c))
        chosen = sorted(draw(st.sets(st.sampled_from(inner), max_size=len(inner))) if inner else [])
        edges = [0, *chosen, n]
        return list(zip(edges[:-1], edges[1:], strict=True))

    pieces = [(a, b, c, d) for a, b in cuts(nt, ct) for c, d in cuts(ny, cy)]
    if not aligned:
        # move one interior boundary of one piece off the chunk grid
        i = draw(st.integers(0, len(pieces) - 1))
        t0, t1, y0, y1 = pieces[i]
        if t1 - t0 > 1:
            t1 = t1 - draw(st.integers(1, t1 - t0 - 1)) if (t1 - 1) % ct or t1 == nt else t1 - 1
        pieces[i] = (t0, t1, y0, y1)
    seed = draw(st.integers(0, 2**31))
    return ct, cy, nt, ny, nx, pieces, seed


def run_trial(pool, tmp_path, layout, trial):
    ct, cy, nt, ny, nx, pieces, seed = layout
    path = str(tmp_path / f"trial{trial}.zarr")
    piece(trial, 0, nt, 0, ny, nx).isel(time=slice(0, min(3, nt))).fastzarr.to_template(
        path,
        global_end=str(piece(trial, nt - 1, nt, 0, 1, 1).time.values[0]),
        freq="h",
        extent={"y": np.arange(ny)},
        chunks={"time": ct, "y": cy, "x": -1},
        mode="w",
    )
    random.Random(seed).shuffle(pieces)
    jobs = [(path, trial, nx, pieces[i::NPROC], seed + i) for i in range(NPROC)]
    return path, [o for out in pool.starmap(write_pieces, jobs) for o in out]


@settings(max_examples=FAST, deadline=None, suppress_health_check=list(HealthCheck))
@given(layout=layouts())
def _aligned(pool, tmp_path, layout):
    COUNTS["trials"] += 1
    trial = COUNTS["trials"]
    path, outcomes = run_trial(pool, tmp_path, layout, trial)
    assert set(outcomes) == {"ok"}, outcomes
    _, _, nt, ny, nx, _, _ = layout
    back = xr.open_zarr(path).load()
    expected = cell_values(0, nt, 0, ny, nx, trial)
    np.testing.assert_array_equal(back.a.values, expected)  # bit for bit, last indices too
    np.testing.assert_array_equal(back.b.values, (-expected).astype("float32"))
    COUNTS["cells"] += 2 * expected.size


def test_aligned_layouts_lose_nothing(pool, tmp_path):
    _aligned(pool, tmp_path)


@pytest.mark.slow
def test_aligned_layouts_lose_nothing_50_trials(pool, tmp_path):
    settings(max_examples=LONG, deadline=None, suppress_health_check=list(HealthCheck))(
        given(layout=layouts())(_aligned.hypothesis.inner_test)
    )(pool, tmp_path)


@settings(max_examples=FAST, deadline=None, suppress_health_check=list(HealthCheck))
@given(layout=layouts(aligned=False))
def _misaligned(pool, tmp_path, layout):
    ct, cy, nt, ny, nx, pieces, seed = layout
    bad = [p for p in pieces if (p[0] % ct) or (p[1] % ct and p[1] != nt)]
    if not bad:
        return  # hypothesis could not move a boundary (piece of length 1)
    path = str(tmp_path / "mis.zarr")
    piece(0, 0, nt, 0, ny, nx).isel(time=slice(0, min(3, nt))).fastzarr.to_template(
        path,
        global_end=str(piece(0, nt - 1, nt, 0, 1, 1).time.values[0]),
        freq="h",
        extent={"y": np.arange(ny)},
        chunks={"time": ct, "y": cy, "x": -1},
        mode="w",
    )
    before = snapshot(path)
    jobs = [(path, 0, nx, bad[i::NPROC], seed + i) for i in range(NPROC)]
    outcomes = [o for out in pool.starmap(write_pieces, jobs) for o in out]
    assert outcomes == ["RegionAlignmentError"] * len(bad)
    assert snapshot(path) == before
    COUNTS["refused"] += len(bad)


def test_misaligned_layouts_refused(pool, tmp_path):
    _misaligned(pool, tmp_path)


@pytest.mark.slow
def test_misaligned_layouts_refused_50_trials(pool, tmp_path):
    settings(max_examples=LONG, deadline=None, suppress_health_check=list(HealthCheck))(
        given(layout=layouts(aligned=False))(_misaligned.hypothesis.inner_test)
    )(pool, tmp_path)


def teardown_module():
    print(f"\nconcurrent writers: {COUNTS}")
