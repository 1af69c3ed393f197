"""Sphinx extension: every public method of a documented class gets an entry.

``autodoc``'s ``:members:`` leaves out methods without a docstring. Ours all have one, except
the methods of an interface a class implements (the zarr ``Store`` methods of
``BufferedStore``, the zarr/numcodecs codec methods of ``BitpackCodec``/``Bitpack``), whose
documentation is the interface's (``autodoc_inherit_docstrings = False`` keeps zarr's text off
our pages). Those methods are kept, and their entry says which interface they implement. A
public method that is undocumented and implements no interface gets an entry too, saying so,
and the build warns about it (so ``-W`` fails until it has a docstring).
"""

from __future__ import annotations

import inspect
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _owner(name: str) -> tuple[type, str] | None:
    """The class and method name of ``package.Class.method``, if ``name`` is one."""
    module_name, _, attr = name.rpartition(".")
    cls_module, _, cls_name = module_name.rpartition(".")
    try:
        module = __import__(cls_module, fromlist=[cls_name])
        cls = getattr(module, cls_name)
    except (ImportError, AttributeError, ValueError):
        return None
    return (cls, attr) if inspect.isclass(cls) else None


def _interface(cls: type, attr: str) -> type | None:
    """The first base class outside this package that defines ``attr``."""
    for base in cls.__mro__[1:]:
        if base is object or base.__module__.startswith("xarray_zarrwrite"):
            continue
        if attr in vars(base):
            return base
    return None


def _is_method(member: Any) -> bool:
    return inspect.isfunction(member) or inspect.ismethoddescriptor(member)


def skip_member(
    app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Keep public, undocumented methods of our classes (autodoc would drop them)."""
    if what != "class" or name.startswith("_") or not _is_method(obj):
        return None
    if getattr(obj, "__doc__", None) or not getattr(obj, "__module__", "").startswith(
        "xarray_zarrwrite"
    ):
        return None
    return False


def process_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Say which interface an undocumented method implements; warn if it implements none."""
    if what != "method" or any(line.strip() for line in lines):
        return
    found = _owner(name)
    if found is None:
        return
    cls, attr = found
    base = _interface(cls, attr)
    if base is None:
        logger.warning("%s has no docstring and implements no interface", name)
        lines.extend(["Undocumented.", ""])
        return
    where = f"{base.__module__}.{base.__qualname__}"
    lines.extend([f"Implements ``{attr}`` of the ``{where}`` interface.", ""])


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-docstring", process_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
