"""Helpers of the command line: option parsers, messages for shell users, stream plumbing."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

from ._cli_advice import shell_advice

__all__ = [
    "Interrupts",
    "for_shell",
    "json_object",
    "parse_chunks",
    "parse_region",
    "stdout_to_stderr",
]


# -- option values ----------------------------------------------------------------------------


def _kv(text: str, what: str, parse: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{what} must look like dim=value,...; got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = parse(value.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{what}: bad value {value!r} for {key!r}") from e
    return out


def _chunk_size(value: str) -> int | None:
    if value.lower() in ("none", "full", "-1"):
        return None
    size = int(value)
    if size <= 0:
        raise ValueError(value)
    return size


def parse_chunks(text: str) -> dict[str, int | None] | str:
    """``"time=100,lat=60,lon=-1"`` (``-1``/``full``: whole dimension) or ``"auto"``."""
    if text.strip() == "auto":
        return "auto"
    return _kv(text, "--chunks", _chunk_size)


def _slice(value: str) -> slice:
    start, sep, stop = value.partition(":")
    if not sep:
        raise ValueError(value)
    return slice(int(start) if start else None, int(stop) if stop else None)


def parse_region(text: str) -> dict[str, slice] | str:
    """``"time=0:100,lat=0:60"`` or ``"auto"``."""
    if text.strip() == "auto":
        return "auto"
    return _kv(text, "--region", _slice)


def json_object(flag: str) -> Callable[[str], dict[str, Any]]:
    """A parser of a JSON object option (``--storage-options '{"anon": true}'``)."""

    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{flag} is not valid JSON ({e}): {text!r}") from e
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(
                f"{flag} must be a JSON object such as '{{\"key\": 1}}'; got {text!r}"
            )
        return value

    return parse


# -- messages for shell users -----------------------------------------------------------------

#: Python keywords of the library and the flags of the command line that set them.
FLAGS: Final = {
    "time_dim": "--time-dim",
    "global_start": "--global-start",
    "global_end": "--global-end",
    "freq": "--freq",
    "chunks": "--chunks",
    "shards": "--shards",
    "access_pattern": "--access-pattern",
    "compression": "--compression",
    "packing": "--packing",
    "template_packing": "--template-packing",
    "encoding": "--encoding",
    "extend": "--extend",
    "zarr_format": "--zarr-format",
    "engine": "--engine",
    "variables": "--variables",
    "drop_variables": "--drop-variables",
    "client": "--scheduler",
    "executor": "--executor",
    "max_workers": "--workers",
    "memory_limit": "--memory-limit",
    "retries": "--retries",
    "region": "--region",
    "on_out_of_range": "--on-out-of-range",
    "storage_options": "--storage-options",
    "group": "--group",
    "source_storage_options": "--source-storage-options",
    "open_kwargs": "--open-kwargs",
}

#: Whole phrases first: Python advice that has a different shape on the command line.
_PHRASES: Final = (
    (re.compile(r"\bresume=False\b"), "--no-resume"),
    (re.compile(r"\bextend=True\b"), "--extend"),
    (re.compile(r"\bsafe_chunks=False\b"), "--unsafe-chunks"),
    (re.compile(r"\bmode=['\"]w['\"]"), "--overwrite"),
    (re.compile(r"\bprogress=False\b"), "--no-progress"),
    (
        re.compile(r"(?:ds|\w+)\.fastzarr\.to_template\([^)]*\)|\bto_template\(store\)"),
        "`xarray-zarrwrite template SOURCE STORE`",
    ),
    (
        re.compile(r"\bregion=\{'(\w+)': slice\(start, stop\)\}"),
        r"--region \1=START:STOP",
    ),
)
_KEYWORD: Final = re.compile(r"\b(" + "|".join(FLAGS) + r")=(?:(['\"])([^'\"\s]*)\2|([\w.:-]+))?")
#: Keywords with an underscore are never English words: translated even without ``=``.
_BARE: Final = re.compile(r"(?<![\w.\-])(" + "|".join(k for k in FLAGS if "_" in k) + r")\b")


def for_shell(message: str, stores: dict[str, str] | None = None) -> str:
    """``message`` with Python keywords replaced by the flags that set them.

    ``stores`` maps the text of a resolved store (``"file:///abs/a.zarr"``,
    ``"LocalStore('file:///abs/a.zarr')"``) to what the user typed (``"a.zarr"``).
    """
    for text, given in sorted((stores or {}).items(), key=lambda kv: -len(kv[0])):
        if text and text != given:
            message = message.replace(text, given)
    message = shell_advice(message)  # Python calls -> commands, value reprs -> values
    for pattern, repl in _PHRASES:
        message = pattern.sub(repl, message)

    def keyword(m: re.Match[str]) -> str:
        flag = FLAGS[m.group(1)]
        value = m.group(3) if m.group(3) is not None else m.group(4)
        return f"{flag} {value}" if value else flag

    message = _KEYWORD.sub(keyword, message)
    return _BARE.sub(lambda m: FLAGS[m.group(1)], message)


def store_texts(given: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """How the store ``given`` on the command line may appear in messages, to map back."""
    out: dict[str, str] = {}
    try:
        from ._store import resolve_store

        store = resolve_store(given, storage_options=storage_options)
    except Exception:  # noqa: BLE001 - best effort: the message stays as it is
        return out
    out[repr(store)] = out[str(store)] = given
    if "://" not in given:
        absolute = os.path.abspath(given)
        out[f"file://{absolute}"] = out[absolute] = given
    return out


# -- streams and interrupts -------------------------------------------------------------------


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (by Python, C code or child processes) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


class Interrupts(logging.Handler):
    """Counts the tasks an interrupted ``convert`` cancelled (from its warning log record)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.cancelled: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("convert interrupted") and isinstance(record.args, tuple):
            numbers = [a for a in record.args if isinstance(a, int)]
            if numbers:
                self.cancelled = (self.cancelled or 0) + numbers[0]

    @contextlib.contextmanager
    def watching(self, name: str = "xarray_zarrwrite") -> Iterator[Interrupts]:
        log = logging.getLogger(name)
        log.addHandler(self)
        try:
            yield self
        finally:
            log.removeHandler(self)
