"""Sphinx extension: accessor pages show the parameters of the functions they delegate to.

``ds.fastzarr.to_template(store, **kwargs)`` forwards to
:func:`xarray_zarrwrite.to_template` with the dataset as its first argument. On the pages of
``xarray.Dataset.fastzarr.<name>`` and ``xarray.DataArray.fastzarr.<name>`` this replaces the
``**kwargs`` signature by the function's own (without its data argument) and appends the
function's documentation (parameters, returns, raises), read from the function itself, so the
two never drift apart.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from sphinx.application import Sphinx

_PREFIXES = ("xarray.Dataset.fastzarr.", "xarray.DataArray.fastzarr.")


def _target(name: str) -> Any:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            method = name[len(prefix) :]
            package = importlib.import_module("xarray_zarrwrite")
            return getattr(package, method, None)
    return None


def process_signature(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str, ret: str
) -> tuple[str, str] | None:
    func = _target(name)
    if func is None:
        return None
    # without annotations: autodoc_typehints = "none" shows names and defaults only
    plain = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in plain.parameters.values()]
    sig = plain.replace(parameters=params[1:], return_annotation=inspect.Signature.empty)
    return str(sig), ""


def process_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    func = _target(name)
    if func is None or not func.__doc__:
        return
    doc = inspect.cleandoc(func.__doc__).splitlines()
    # the function's summary line talks about its data argument: keep the accessor's own
    first = next(iter(inspect.signature(func).parameters))
    lines.extend(["", *_without_param(doc[1:], first)])


def _without_param(doc: list[str], name: str) -> list[str]:
    """``doc`` without the entry of parameter ``name`` (the accessor supplies it)."""
    out: list[str] = []
    skipping = False
    for line in doc:
        head = line.split(":")[0].strip()
        if not line.startswith(" ") and line.strip():
            skipping = head == name or head.startswith(f"{name},")
            if skipping and "," in head:  # "ds, other": keep the others
                out.append(line.replace(f"{name}, ", "", 1))
                skipping = False
                continue
        if not skipping:
            out.append(line)
    return out


def setup(app: Sphinx) -> dict[str, Any]:
    # before napoleon (priority 500), so the appended numpy sections are converted with the rest
    app.connect("autodoc-process-docstring", process_docstring, priority=400)
    app.connect("autodoc-process-signature", process_signature)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
