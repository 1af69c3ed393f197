from __future__ import annotations

import uuid

import pytest
from _hermetic import (
    _collect_garbage_inside_the_test,  # noqa: F401  (autouse fixture)
    leaks,
)

import xarray_zarrwrite  # noqa: F401  (registers the accessor)
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.fixtures import (  # noqa: F401  (pytest fixtures)
    s3_endpoint,
    s3_storage_options,
    s3_url,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long (stress) variants")


_baseline_children: set[int] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    import psutil

    _baseline_children.update(p.pid for p in psutil.Process().children(recursive=True))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if processes, threads or event loops outlived the tests."""
    if getattr(session.config, "workerinput", None) is not None or exitstatus not in (0, 1):
        return
    if session.testscollected == 0:
        return
    found = leaks(_baseline_children)
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "leak check: the tests left these behind:\n  " + "\n  ".join(found)
        if reporter is not None:
            reporter.write_line(text, red=True)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --run-slow (make stress)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def year():
    """One leap year of daily data, 2 variables on a 12 x 24 grid."""
    return era5_like("2000-01-01", 366)


@pytest.fixture
def memory_url():
    return f"memory://{uuid.uuid4().hex}"
