"""A real S3 endpoint for tests: ``moto_server`` run as a subprocess on 127.0.0.1.

The standalone server (``moto[server]``) speaks the S3 HTTP protocol, so s3fs, aiobotocore and
zarr's ``FsspecStore`` are exercised exactly as against AWS, with no traffic leaving the machine.

Examples
--------
>>> from xarray_zarrwrite.testing.s3 import moto_server, create_bucket, s3_storage_options
>>> with moto_server() as endpoint:  # doctest: +SKIP
...     bucket = create_bucket(endpoint)
...     options = s3_storage_options(endpoint)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MotoServerUnavailableError",
    "TEST_CREDENTIALS",
    "create_bucket",
    "find_moto_server",
    "moto_server",
    "moto_server_available",
    "s3_env",
    "s3_storage_options",
]

HOST: Final = "127.0.0.1"
REGION: Final = "us-east-1"
TEST_CREDENTIALS: Final = {"key": "testing", "secret": "testing"}


class MotoServerUnavailableError(RuntimeError):
    """``moto_server`` is not installed (``pip install 'moto[server]'``) or did not start."""


def find_moto_server() -> str | None:
    """Path of the ``moto_server`` executable, or ``None``.

    Looks next to the running interpreter first (a virtual environment's ``bin``), then on
    ``PATH``; requires the ``moto`` and ``flask`` packages to be importable.
    """
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        return None
    name = "moto_server.exe" if sys.platform == "win32" else "moto_server"
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("moto_server")


def moto_server_available() -> bool:
    """Whether :func:`moto_server` can run here."""
    return find_moto_server() is not None


_RUNNING_ON = re.compile(rb"Running on http://[^\s:]+:(\d+)")


def _bound_port(log: IO[bytes]) -> int | None:
    """The port the server reports it bound (``-p 0``: the OS picked a free one)."""
    # pread: the server shares the file offset, so never move it
    found = _RUNNING_ON.search(os.pread(log.fileno(), 1 << 16, 0))
    return int(found.group(1)) if found else None


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(*, port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run ``moto_server`` on 127.0.0.1 and yield its endpoint URL, e.g. ``http://127.0.0.1:5123``.

    Parameters
    ----------
    port
        Port to listen on; a free one by default.
    timeout
        Seconds to wait for the server to answer.

    Yields
    ------
    str
        The endpoint URL.

    Raises
    ------
    MotoServerUnavailableError
        ``moto_server`` is not installed, exited, or did not answer within ``timeout``.
    """
    executable = find_moto_server()
    if executable is None:
        raise MotoServerUnavailableError(
            "moto_server is not available; install it with `pip install 'moto[server]'`"
        )
    # Port 0 by default: the server binds a free port itself and logs it, so no other process
    # can take the port between our choosing it and the server binding it.
    # The server logs every request; a file, unlike a pipe nobody reads, never fills up.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [executable, "-H", HOST, "-p", str(port or 0)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout
            endpoint = f"http://{HOST}:{port}" if port else ""
            while not (endpoint and _answers(endpoint)):
                if not endpoint and (bound := _bound_port(log)) is not None:
                    endpoint = f"http://{HOST}:{bound}"
                    continue
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-2000:].decode(errors="replace")
                    state = (
                        f"exited with status {process.returncode}"
                        if process.poll() is not None
                        else f"did not answer within {timeout} s"
                    )
                    where = endpoint or f"{HOST} (port not yet bound)"
                    raise MotoServerUnavailableError(f"moto_server on {where} {state}:\n{tail}")
                time.sleep(0.05)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def s3_storage_options(endpoint: str) -> dict[str, Any]:
    """s3fs ``storage_options`` for the server at ``endpoint`` (test credentials, no caching).

    Parameters
    ----------
    endpoint
        The URL yielded by :func:`moto_server`.

    Returns
    -------
    dict
    """
    return {
        **TEST_CREDENTIALS,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
        "use_listings_cache": False,
    }


def s3_env() -> dict[str, str]:
    """Environment variables that keep botocore on the test credentials and off any proxy.

    Meant for ``monkeypatch.setenv`` (so nothing leaks into other tests); ``AWS_PROFILE`` and
    ``AWS_SESSION_TOKEN`` should be removed as well.
    """
    no_proxy = ",".join(
        filter(None, [os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")), HOST])
    )
    return {
        "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["key"],
        "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["secret"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


def create_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a bucket on the server at ``endpoint`` and return its name.

    Parameters
    ----------
    endpoint
        The URL yielded by :func:`moto_server`.
    name
        Bucket name; a fresh ``test-<random>`` name by default.

    Returns
    -------
    str
    """
    import botocore.session

    name = name or f"test-{uuid.uuid4().hex[:24]}"
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=TEST_CREDENTIALS["key"],
        aws_secret_access_key=TEST_CREDENTIALS["secret"],
    )
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name
