from __future__ import annotations

import uuid

import pytest

import xarray_zarrwrite  # noqa: F401  (registers the accessor)
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.fixtures import (  # noqa: F401  (pytest fixtures)
    s3_endpoint,
    s3_storage_options,
    s3_url,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long (stress) variants")


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
