"""Icechunk targets: a Session (the caller commits) or a Repository + branch (we commit once),
forks merged into one commit for parallel writers, commit_every, and typed conflicts.

Every write is read back through a read-only session of the committed branch with plain
``xr.open_zarr`` and compared bit for bit, last index of each dimension included.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite.errors import (
    CommitConflictError,
    IcechunkTargetError,
    InputError,
    RegionError,
    StoreExistsError,
    WriteFailedError,
)
from xarray_zarrwrite.testing.datasets import era5_like

icechunk = pytest.importorskip("icechunk")

DAYS = 12


@pytest.fixture
def repo(tmp_path):
    # local storage: forks pickled to dask workers write their chunks where the client reads
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))


@pytest.fixture
def data():
    return era5_like("2000-01-01", DAYS, nlat=6, nlon=8)


def _template(ds, store, **kw):
    return xzw.to_template(
        ds.isel(time=slice(0, 2)),
        store,
        global_start=ds.time.values[0],
        global_end=ds.time.values[-1],
        freq="D",
        chunks={"time": 2, "lat": -1, "lon": -1},
        **kw,
    )


def _history(repo, branch="main"):
    return [s.message for s in repo.ancestry(branch=branch)]


def _read(repo, branch="main", snapshot_id=None):
    if snapshot_id is not None:
        session = repo.readonly_session(snapshot_id=snapshot_id)
    else:
        session = repo.readonly_session(branch=branch)
    return xr.open_zarr(session.store, consolidated=False).load()


def _assert_bits(got: xr.Dataset, want: xr.Dataset) -> None:
    for name in want.data_vars:
        a, b = got[name].values, want[name].values
        assert a.shape == b.shape
        assert a.tobytes() == b.tobytes(), name
        assert a[-1, -1, -1] == b[-1, -1, -1]
    np.testing.assert_array_equal(got.time.values, want.time.values)


# -- Repository: one commit per call, nothing on failure ----------------------------------------
def test_template_and_region_write_commit_once_each(repo, data):
    _template(data, repo, message="template")
    assert _history(repo) == ["template", "Repository initialized"]
    res = xzw.write_region(data, repo, message="all days")
    assert res.region["time"] == slice(0, DAYS)
    assert _history(repo) == ["all days", "template", "Repository initialized"]
    _assert_bits(_read(repo), data)
    report = xzw.check(repo)
    assert report.complete
    assert xzw.check(repo, branch="main").complete


def test_region_write_to_another_branch(repo, data):
    _template(data, repo)
    repo.create_branch("dev", repo.lookup_branch("main"))
    xzw.write_region(data.isel(time=slice(0, 4)), repo, branch="dev", message="dev days")
    assert _history(repo, "dev")[0] == "dev days"
    assert len(_history(repo, "main")) == 2  # main untouched
    assert not xzw.check(repo, branch="main").variables["t2m"].written
    assert xzw.check(repo, branch="dev").variables["t2m"].written == 2


def test_invalid_write_commits_nothing(repo, data):
    _template(data, repo)
    tip = repo.lookup_branch("main")
    bad = data.isel(time=slice(1, 3))  # not chunk-aligned
    with pytest.raises(RegionError):
        xzw.write_region(bad, repo)
    assert repo.lookup_branch("main") == tip


def test_failing_dask_block_commits_nothing(repo, data):
    da = pytest.importorskip("dask.array")
    _template(data, repo)
    tip = repo.lookup_branch("main")

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 3:
            raise RuntimeError("block 3 failed")
        return block

    chunked = data.chunk({"time": 2})
    chunked["t2m"] = chunked.t2m.copy(
        data=da.map_blocks(boom, chunked.t2m.data, dtype=chunked.t2m.dtype)
    )
    with pytest.raises(RuntimeError, match="block 3 failed"):
        xzw.write_region(chunked, repo)
    assert repo.lookup_branch("main") == tip
    assert len(_history(repo)) == 2


def test_interrupted_write_commits_nothing(repo, data, monkeypatch):
    """Interrupted after every chunk is in the session, before the commit: nothing lands."""
    from xarray_zarrwrite import api

    _template(data, repo)
    tip = repo.lookup_branch("main")
    original = api._write_region

    def write_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_write_region", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        xzw.write_region(data, repo)
    assert repo.lookup_branch("main") == tip
    assert xzw.check(repo).variables["t2m"].written == 0
    assert np.isnan(_read(repo).t2m.values).all()


def test_template_modes_on_a_branch(repo, data):
    _template(data, repo)
    tip = repo.lookup_branch("main")
    with pytest.raises(StoreExistsError):
        _template(data, repo)
    assert repo.lookup_branch("main") == tip
    other = era5_like("2001-01-01", 4, nlat=6, nlon=8)
    _template(other, repo, mode="w", message="replaced")
    assert _history(repo)[0] == "replaced"
    assert _read(repo).sizes["time"] == 4


# -- Session: we write, the caller commits -------------------------------------------------------
def test_session_is_written_not_committed(repo, data):
    session = repo.writable_session("main")
    tip = repo.lookup_branch("main")
    _template(data, session)
    xzw.write_region(data, session)
    assert repo.lookup_branch("main") == tip  # nothing committed by us
    assert xzw.check(session).complete
    session.commit("mine")
    assert _history(repo)[0] == "mine"
    _assert_bits(_read(repo), data)


def test_session_non_blocking_writes_share_one_writer(repo, data):
    from xarray_zarrwrite._runtime import runtime

    session = repo.writable_session("main")
    _template(data, session)
    futures = [
        xzw.write_region(data.isel(time=slice(i, i + 4)), session, blocking=False)
        for i in range(0, DAYS, 4)
    ]
    store = session.__dict__["_xarray_zarrwrite_store"]  # the session's one store
    mine = [w for w in list(runtime.live) if w.store is store]
    assert len(mine) == 1  # one StreamWriter for the session, not one per call
    for fut in futures:
        fut.result()
    mine[0].close()
    session.commit("non-blocking")
    _assert_bits(_read(repo), data)


def test_session_dask_write_merges_forks(repo, data):
    pytest.importorskip("dask.array")
    session = repo.writable_session("main")
    _template(data, session)  # uncommitted metadata, then a forked dask write on top
    xzw.write_region(data.chunk({"time": 4}), session)
    session.commit("template and data")
    assert len(_history(repo)) == 2
    _assert_bits(_read(repo), data)


# -- dask workers through forks, merged into one commit --------------------------------------
@pytest.fixture
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_dask_cluster_write_is_one_commit(repo, data, client):
    _template(data, repo)
    res = xzw.write_region(data.chunk({"time": 2}), repo, message="from workers")
    assert res.nchunks == 2 * DAYS // 2
    assert _history(repo)[0] == "from workers"
    assert len(_history(repo)) == 3  # init, template, one commit for every worker's blocks
    _assert_bits(_read(repo), data)


def test_map_blocks_style_write_on_cluster(repo, data, client):
    """``xr.map_blocks`` output (dask, lazy) written block by block through forks."""
    _template(data, repo)
    doubled = xr.map_blocks(lambda b: b * 2, data.chunk({"time": 4}))
    xzw.write_region(doubled, repo, message="doubled")
    _assert_bits(_read(repo), data * 2)


# -- convert: one commit, or none --------------------------------------------------------------
def _months(ds):
    return [ds.isel(time=slice(i, i + 3)) for i in range(0, DAYS, 3)]


def test_convert_is_one_commit_equal_to_sources(repo, data):
    report = xzw.convert(
        _months(data), repo, chunks={"time": 2}, progress=False, message="converted"
    )
    assert report.ok
    assert _history(repo) == ["converted", "Repository initialized"]
    _assert_bits(_read(repo), data)
    assert xzw.check(repo).complete


def test_convert_partial_record_then_completion(repo, data):
    """The completeness record (partial write units, in the root attributes) on Icechunk: an
    incomplete run commits what it wrote and its record; the next run completes it."""
    parts = _months(data)  # 3 days each; chunks of 2 days: day 8 shares a chunk with day 9
    end = data.time.values[-1]
    first = xzw.convert(
        parts[:3], repo, chunks={"time": 2}, global_end=end, progress=False, message="first"
    )
    assert first.status == "incomplete"
    status = xzw.check(repo)
    assert not status.complete
    assert (4, 0, 0) in status.variables["t2m"].partial_chunks
    got = _read(repo)
    _assert_bits(got.isel(time=slice(0, 9)), data.isel(time=slice(0, 9)))
    second = xzw.convert(parts, repo, progress=False, message="second")
    assert second.ok
    assert _history(repo) == ["second", "first", "Repository initialized"]
    assert xzw.check(repo).complete
    _assert_bits(_read(repo), data)


def test_convert_into_a_session_leaves_the_commit_to_the_caller(repo, data):
    session = repo.writable_session("main")
    assert xzw.convert(_months(data), session, chunks={"time": 2}, progress=False).ok
    assert _history(repo) == ["Repository initialized"]
    assert xzw.check(session).complete
    session.commit("mine")
    _assert_bits(_read(repo), data)


def test_convert_with_a_failed_task_commits_nothing(repo, data):
    da = pytest.importorskip("dask.array")
    tip = repo.lookup_branch("main")
    parts = _months(data)

    def boom(block):
        raise OSError("source unreadable")

    broken = parts[2].chunk({"time": -1})
    broken["t2m"] = broken.t2m.copy(data=da.map_blocks(boom, broken.t2m.data, dtype="f4"))
    parts[2] = broken
    with pytest.raises(WriteFailedError):
        xzw.convert(parts, repo, chunks={"time": 3}, progress=False, retries=0)
    assert repo.lookup_branch("main") == tip
    assert _history(repo) == ["Repository initialized"]
    report = xzw.convert(
        parts, repo, chunks={"time": 3}, progress=False, retries=0, raise_on_failure=False
    )
    assert report.status == "failed"
    assert repo.lookup_branch("main") == tip


def test_convert_on_other_processes_is_one_commit(repo, data, tmp_path):
    """Tasks on a process pool write through pickled forks, merged into one commit."""
    files = []
    for i, part in enumerate(_months(data)):
        files.append(str(tmp_path / f"part{i}.nc"))
        part.to_netcdf(files[-1])
    report = xzw.convert(
        files,
        repo,
        chunks={"time": 2},
        progress=False,
        executor="processes",
        max_workers=2,
        message="on processes",
    )
    assert report.ok
    assert _history(repo) == ["on processes", "Repository initialized"]
    _assert_bits(_read(repo), data)
    assert xzw.check(repo).complete


def test_forked_task_changes_merge_into_one_commit(repo, data):
    """What convert does with tasks on other processes: one fork per task, pickled there and
    back, merged into the one session that is committed."""
    import pickle
    from types import SimpleNamespace

    from xarray_zarrwrite._icechunk import fork_changes, merge_task_changes

    session = repo.writable_session("main")
    _template(data, session)
    outcomes = {}
    for i, start in enumerate(range(0, DAYS, 4)):
        fork_store = pickle.loads(pickle.dumps(session.fork().store))  # to the worker
        xzw.write_region(data.isel(time=slice(start, start + 4)), fork_store)
        back = pickle.loads(pickle.dumps(fork_changes(fork_store)))  # and back
        outcomes[i] = SimpleNamespace(ok=True, changes=back)
    outcomes[99] = SimpleNamespace(ok=False, changes=None)
    assert fork_changes(session.store) is None  # only forks travel
    merge_task_changes(session.store, outcomes)
    session.commit("tasks")
    assert _history(repo) == ["tasks", "Repository initialized"]
    _assert_bits(_read(repo), data)


# -- StreamWriter: commit_every ----------------------------------------------------------------
def test_stream_commit_every_history(repo, data):
    _template(data, repo, message="template")
    with xzw.StreamWriter(repo, commit_every=5, message="stream") as writer:
        for i in range(DAYS):
            writer.write(data.isel(time=slice(i, i + 1)))
    history = list(repo.ancestry(branch="main"))
    messages = [s.message for s in history]
    assert messages[-2:] == ["template", "Repository initialized"]
    assert len(messages) == 5  # steps 1-5, 6-10, the last 2 at close
    assert messages[2].startswith("stream (steps 1-5")
    # each snapshot holds exactly the steps written before it (fill beyond)
    for snap, upto in zip(history[:3], (DAYS, 10, 5), strict=True):
        got = _read(repo, snapshot_id=snap.id)
        _assert_bits(got.isel(time=slice(0, upto)), data.isel(time=slice(0, upto)))
        assert np.isnan(got.t2m.values[upto:]).all()


def test_stream_body_failure_commits_nothing_more(repo, data):
    _template(data, repo)
    with pytest.raises(KeyError, match="stop"):
        with xzw.StreamWriter(repo, commit_every=4) as writer:
            for i in range(6):
                writer.write(data.isel(time=slice(i, i + 1)))
            raise KeyError("stop")
    assert len(_history(repo)) == 3  # steps 1-4 only
    got = _read(repo)
    _assert_bits(got.isel(time=slice(0, 4)), data.isel(time=slice(0, 4)))
    assert np.isnan(got.t2m.values[4:]).all()


# -- concurrent commits: disjoint ones rebase and land, overlapping ones raise -------------------
def test_disjoint_concurrent_commits_both_land(repo, data):
    _template(data, repo)
    writer = xzw.StreamWriter(repo, message="late writer")  # its session starts here
    xzw.write_region(data.isel(time=slice(0, 6)), repo, message="early writer")
    writer.write(data.isel(time=slice(6, DAYS)))
    writer.close()  # rebased over "early writer": other chunks, no conflict
    assert _history(repo)[:2] == ["late writer", "early writer"]
    _assert_bits(_read(repo), data)


def test_overlapping_concurrent_commits_raise_typed_error(repo, data):
    _template(data, repo)
    writer = xzw.StreamWriter(repo, message="late writer")
    xzw.write_region(data.isel(time=slice(0, 4)), repo, message="early writer")
    tip = repo.lookup_branch("main")
    writer.write(data.isel(time=slice(2, 6)) + 1)  # chunk 1 (days 2-3) written by both
    with pytest.raises(CommitConflictError) as info:
        writer.close()
    err = info.value
    assert isinstance(err, WriteFailedError)
    assert err.branch == "main"
    assert "'main'" in str(err)
    assert "t2m" in str(err)
    assert any("t2m" in path for path in err.conflicts)
    assert repo.lookup_branch("main") == tip  # the late writer committed nothing
    _assert_bits(_read(repo).isel(time=slice(0, 4)), data.isel(time=slice(0, 4)))


def test_template_replaced_by_another_commit_is_a_conflict(repo, data):
    """The freshness gate reads the writer's own snapshot; a template replaced on the branch
    meanwhile makes the writer's commit conflict instead of landing old-layout chunks."""
    _template(data, repo)
    writer = xzw.StreamWriter(repo)
    other = era5_like("2000-01-01", DAYS, nlat=6, nlon=8, seed=1)
    _template(other, repo, mode="w", message="replaced")
    tip = repo.lookup_branch("main")
    writer.write(data.isel(time=slice(0, 2)))
    with pytest.raises(CommitConflictError, match="'main'"):
        writer.close()
    assert repo.lookup_branch("main") == tip


# -- bad options are refused before anything is written -------------------------------------
def test_option_errors(repo, data, tmp_path):
    _template(data, repo)
    tip = repo.lookup_branch("main")
    with pytest.raises(IcechunkTargetError, match="no branch 'nope'"):
        xzw.write_region(data, repo, branch="nope")
    with pytest.raises(IcechunkTargetError, match="Repository"):
        xzw.write_region(data, str(tmp_path / "plain.zarr"), branch="main")
    session = repo.writable_session("main")
    with pytest.raises(IcechunkTargetError, match="commit the session yourself"):
        xzw.write_region(data, session, message="x")
    with pytest.raises(IcechunkTargetError, match="commit_every"):
        xzw.StreamWriter(session, commit_every=2)
    with pytest.raises(IcechunkTargetError, match="positive integer"):
        xzw.StreamWriter(repo, commit_every=0)
    with pytest.raises(IcechunkTargetError, match="compute=False"):
        xzw.write_region(data.chunk({"time": 2}), repo, compute=False)
    with pytest.raises(IcechunkTargetError, match="blocking=False"):
        xzw.write_region(data, repo, blocking=False)
    with pytest.raises(IcechunkTargetError):
        xzw.check(repo, branch="nope")
    assert isinstance(IcechunkTargetError("x"), InputError)
    assert repo.lookup_branch("main") == tip
    assert not session.has_uncommitted_changes


def test_readonly_session_refused(repo, data):
    _template(data, repo)
    with pytest.raises(xzw.errors.ReadOnlyStoreError):
        xzw.write_region(data, repo.readonly_session(branch="main"))


def test_plain_stores_unchanged(tmp_path, data):
    """No Icechunk object: the decorated functions behave as before."""
    path = str(tmp_path / "plain.zarr")
    _template(data, path)
    xzw.write_region(data, path)
    _assert_bits(xr.open_zarr(path).load(), data)
    assert pd.Index(xr.open_zarr(path).time.values).equals(pd.Index(data.time.values))
