"""Every message the command line prints speaks to shell users.

Library errors are written for Python callers (``set time_dim=``, ``create one first with
ds.fastzarr.to_template(store)``); the command line must name its flags and commands instead,
print stores and sources as they were typed, exit 2 on usage errors and invalid input.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import xarray as xr

from xarray_zarrwrite._cli_advice import shell_advice
from xarray_zarrwrite._cli_util import FLAGS, for_shell
from xarray_zarrwrite.cli import main
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot

PACKAGE = Path(__file__).resolve().parents[1] / "xarray_zarrwrite"

#: What a message for shell users must not contain: Python keywords the command line has a
#: flag for (``time_dim=``), accessor or library calls, value reprs.
PYTHON = re.compile(
    r"\b(?:" + "|".join(FLAGS) + r")="
    r"|fastzarr\.|xarray_zarrwrite\.\w+\(|\bxzw\.\w+\("
    r"|\b(?:to_template|write_region|convert|check|extend|append)\([^)]*\)"
    r"|\bTimestamp\(|\bdatetime64\(|\bnp\.\w+\(|\b(?:resume|mode|safe_chunks)="
    r"|LocalStore\(|FsspecStore\(|file://"
)

#: Modules whose messages cannot reach the command line, each with the reason. Every other
#: module's messages are audited: a new Python-only phrase there fails the audit below.
PYTHON_ONLY = {
    "_extend.py": "extend(until=/steps=): convert --extend computes the new end itself",
    "_icechunk.py": "Icechunk sessions and repositories are Python objects, never CLI stores",
    "_stream.py": "StreamWriter is a Python API",
    "_dask.py": "dask writes: the command line opens sources with chunks=None (no dask)",
    "_assembly.py": "StreamWriter's max_inflight_mb=",
    "storage/_buffered.py": "BufferedStore is a Python API",
    "demo.py": "the demo's own report (names xarray's functions on purpose)",
    "cli.py": "the command line itself",
    "_cli_util.py": "the translation tables",
    "_cli_advice.py": "the translation tables",
}


def _text(node: ast.AST) -> str | None:
    """The text of a string expression; ``{X}`` for what an f-string fills in."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{X}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return (_text(node.left) or "{X}") + (_text(node.right) or "{X}")
    return None


def library_messages() -> list[tuple[str, str]]:
    """``(where, text)`` of every string expression of the package but docstrings."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in PYTHON_ONLY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                skip.add(id(body[0].value))  # docstrings speak to Python readers
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            text = _text(node)
            if text is not None:
                skip.update(id(sub) for sub in ast.walk(node))
                out.append((f"{rel}:{getattr(node, 'lineno', 0)}", text))
    return out


def test_every_library_message_translates_for_the_shell() -> None:
    messages = library_messages()
    assert len(messages) > 500  # the audit sees the package's messages
    bad = [
        f"{where}: {for_shell(text)!r}"
        for where, text in messages
        if PYTHON.search(for_shell(text))
        # str.format/regex/code templates, not messages
        and not re.fullmatch(r"[\w.{}%()\[\]=:, '\"/*-]*", text)
    ]
    assert not bad, "messages that would reach shell users in Python:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("python", "shell"),
    [
        (
            "no Zarr template at a.zarr; create one first with ds.fastzarr.to_template(store)",
            (
                "no Zarr template at a.zarr; create one first with "
                "`xarray-zarrwrite template SOURCE STORE`"
            ),
        ),
        (
            (
                "; use xarray_zarrwrite.extend(store, dim='time', until=...) or "
                "ds.fastzarr.append(store, dim='time')"
            ),
            "; use `xarray-zarrwrite convert SOURCE... STORE --extend`",
        ),
        (
            "run check() to see what is missing and convert again (resume=True)",
            (
                "run `xarray-zarrwrite check STORE` to see what is missing and run the same "
                "`xarray-zarrwrite convert` command again"
            ),
        ),
        (
            (
                "label Timestamp('2001-01-01 00:00:00') is not on (Timestamp('2000-01-01 06:00:00')"
                " .. numpy.datetime64('2000-12-31T00:00:00.000000000'), np.int64(366) labels)"
            ),
            "label 2001-01-01 is not on (2000-01-01 06:00:00 .. 2000-12-31, 366 labels)",
        ),
        (
            "region['time']=slice(5, None, None) is outside",
            "--region time=5: is outside",
        ),
        ("chunks names dimension 'zz'", "--chunks names dimension 'zz'"),
        ("the chunks of time", "the chunks of time"),  # English words stay
    ],
)
def test_shell_advice(python: str, shell: str) -> None:
    assert for_shell(shell_advice(python)) == shell
    assert not PYTHON.search(shell)


# -- the command line on each class of error -------------------------------------------------


@pytest.fixture(scope="module")
def data() -> xr.Dataset:
    return era5_like("2000-01-01", 60, nlat=4, nlon=6)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data) -> Path:
    """Sources ``a.nc`` (days 0-29), ``b.nc`` (30-59), odd ones, and ``arc.zarr`` of ``a.nc``."""
    where = tmp_path_factory.mktemp("cli-messages")
    data.isel(time=slice(0, 30)).to_netcdf(where / "a.nc")
    data.isel(time=slice(30, 60)).to_netcdf(where / "b.nc")
    data.isel(time=slice(3, 10)).to_netcdf(where / "mid.nc")
    data.isel(time=[0, 1, 3, 7]).to_netcdf(where / "irregular.nc")
    extra = data.isel(time=slice(0, 30))
    extra.assign(extra=extra.t2m).to_netcdf(where / "extra.nc")
    argv = ["convert", str(where / "a.nc"), str(where / "arc.zarr"), "--chunks", "time=10"]
    assert main([*argv, "--no-progress"]) == 0
    return where


@pytest.fixture
def work(tmp_path, prepared, monkeypatch) -> Path:
    """A fresh copy of :func:`prepared`, the working directory of the test."""
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_speaks_shell(err: str, *advice: str) -> None:
    assert err.startswith("error: "), err
    assert not PYTHON.search(err), err
    assert str(Path.cwd()) not in err, err  # paths as typed (relative), not absolute
    for text in advice:
        assert text in err, (text, err)


#: (argv after the archive exists, advice the message must give); every case exits 2.
CASES = {
    "no-template": (
        ["write-region", "a.nc", "none.zarr"],
        ["none.zarr", "`xarray-zarrwrite template SOURCE STORE`"],
    ),
    "no-template-check": (["check", "none.zarr"], ["`xarray-zarrwrite template SOURCE STORE`"]),
    "time-dim": (["convert", "a.nc", "new.zarr", "--time-dim", "day"], ["--time-dim", "'a.nc'"]),
    "freq": (["convert", "irregular.nc", "new.zarr"], ["--freq"]),
    "extra-variable": (["convert", "extra.nc", "arc.zarr"], ["--drop-variables", "--no-resume"]),
    "other-chunks": (["convert", "a.nc", "arc.zarr", "--chunks", "time=7"], ["--no-resume"]),
    "unaligned": (["write-region", "mid.nc", "arc.zarr"], ["--unsafe-chunks"]),
    "past-the-end": (
        ["write-region", "b.nc", "arc.zarr"],
        ["--extend", "`xarray-zarrwrite convert SOURCE... STORE --extend`", "2000-01-31"],
    ),
    "region-bounds": (
        ["write-region", "a.nc", "arc.zarr", "--region", "time=5:35"],
        ["--region time=5:35"],
    ),
    "exists": (["template", "a.nc", "arc.zarr"], ["--overwrite", "arc.zarr"]),
    "unknown-dim": (["template", "a.nc", "new.zarr", "--chunks", "zz=3"], ["--chunks"]),
    "compression": (
        ["convert", "a.nc", "new.zarr", "--compression", "bogus:1"],
        ["--compression none"],
    ),
    "memory-limit": (["convert", "a.nc", "new.zarr", "--memory-limit", "lots"], ["--memory-limit"]),
    "check-variables": (["check", "arc.zarr", "--variables", "nope"], ["--variables"]),
    "start-after-end": (
        ["template", "a.nc", "new.zarr", "--global-start", "2000-02-01"],
        ["--global-start", "--global-end"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_input_errors_give_shell_advice_and_exit_2(case, work, capsys) -> None:
    before = snapshot("arc.zarr")
    argv, advice = CASES[case]
    if argv[0] == "convert":
        argv = [*argv, "--no-progress"]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert_speaks_shell(err, *advice)
    assert snapshot("arc.zarr") == before  # bad input leaves the store byte-identical
    for other in ("new.zarr", "none.zarr"):  # nothing written (zarr may make an empty root)
        assert not [p for p in (work / other).rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["convert", "a.nc", "x.zarr", "--chunks", "time=abc"], "--chunks"),
        (["convert", "a.nc", "x.zarr", "--storage-options", "[1]"], "--storage-options"),
        (["write-region", "a.nc", "x.zarr", "--region", "time=5"], "--region"),
        (["template", "a.nc", "x.zarr", "--zarr-format", "4"], "--zarr-format"),
        (["convert", "a.nc", "x.zarr", "--no-such-flag"], "--no-such-flag"),
        (["frobnicate"], "frobnicate"),
        (["template", "a.nc"], "store"),
    ],
)
def test_usage_errors_exit_2_and_name_the_flag(argv, flag, work, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "usage: xarray-zarrwrite" in err and flag in err
    assert not (work / "x.zarr").exists()


def test_convert_prints_the_store_and_sources_as_given(work, data, capsys) -> None:
    shutil.rmtree("arc.zarr")
    code, out, err = run(["convert", "*.nc", "all.zarr", "--no-progress"], capsys)
    assert code == 2  # extra.nc disagrees with the others: named as typed
    assert_speaks_shell(err, "'extra.nc'")
    code, out, _ = run(["convert", "a.nc", "b.nc", "all.zarr", "--no-progress"], capsys)
    assert code == 0
    assert "-> all.zarr: COMPLETE" in out and "file://" not in out
    back = xr.open_zarr("all.zarr", chunks=None).load()
    for name in data.data_vars:  # every day, the last included
        assert back[name].values.tobytes() == data[name].values.tobytes()
    assert back.time.values[-1] == data.time.values[-1]
    code, out, _ = run(["check", "all.zarr"], capsys)
    assert code == 0 and out.startswith("all.zarr: complete")
