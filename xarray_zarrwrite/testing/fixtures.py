"""pytest fixtures for a local S3 endpoint (``moto_server`` on 127.0.0.1).

Import them into a ``conftest.py`` (or a test module)::

    from xarray_zarrwrite.testing.fixtures import s3_endpoint, s3_storage_options, s3_url

Tests using them are skipped when ``moto[server]`` is not installed.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from .s3 import (
    MotoServerUnavailableError,
    create_bucket,
    moto_server,
    moto_server_available,
    s3_env,
)
from .s3 import s3_storage_options as _s3_storage_options

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["s3_endpoint", "s3_storage_options", "s3_url"]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a ``moto_server`` started once per test session (skips if unavailable)."""
    if not moto_server_available():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with contextlib.ExitStack() as stack:
        try:
            endpoint = stack.enter_context(moto_server())
        except MotoServerUnavailableError as exc:
            pytest.skip(f"moto_server did not start: {exc}")
        yield endpoint


def _use_test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_storage_options(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """s3fs ``storage_options`` for :func:`s3_endpoint`; sets the AWS test environment for the
    duration of the test only."""
    _use_test_environment(monkeypatch)
    return _s3_storage_options(s3_endpoint)


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>/store-<random>``: an empty place to write to, one per test.

    Pass ``storage_options=s3_storage_options(s3_endpoint)`` (or use the fixture of that name)
    to reach it.
    """
    _use_test_environment(monkeypatch)
    bucket = create_bucket(s3_endpoint)
    return f"s3://{bucket}/store-{uuid.uuid4().hex[:8]}"
