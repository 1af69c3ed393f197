"""Sphinx extension: resolve references to our objects by whatever name the code uses.

Docstrings name objects the way the code imports them: ``xarray_zarrwrite.codecs.Bitpack``
(documented as ``xarray_zarrwrite.Bitpack``), ``BitpackCodec`` from inside its own module,
``WriteFailedError`` from a module that imports it. On a missing Python reference this handler
imports the name (relative to the referring module and its parents), finds the documented object
that *is* that object, and links to it. Nothing is silenced: a name that imports to none of our
documented objects still warns. A name that imports to a third-party object (a base class
re-exported through ``xarray_zarrwrite._compat``) is rewritten to the object's own
``module.qualname`` and accepted only if that is listed in ``nitpick_ignore``.
"""

from __future__ import annotations

import importlib
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment


def _import(path: str) -> Any:
    """The object at dotted ``path`` (a module, or attributes of one), else a sentinel."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _MISSING
        return obj
    return _MISSING


_MISSING = object()


def _candidates(target: str, module: str | None) -> list[str]:
    target = target.lstrip("~.")
    out = [target]
    if module:
        parts = module.split(".")
        out += [".".join([*parts[:i], target]) for i in range(len(parts), 0, -1)]
    out.append(f"xarray_zarrwrite.{target}")
    return out


def _documented(env: BuildEnvironment) -> dict[int, tuple[str, str]]:
    """``{id(object): (name, objtype)}`` of every object the Python domain documents."""
    cache = getattr(env, "_xzw_documented", None)
    if cache is None:
        cache = {}
        for name, _, objtype, _, _, _ in env.get_domain("py").get_objects():
            obj = _import(name)
            if obj is not _MISSING and not isinstance(obj, str | int | float | bool | tuple):
                cache.setdefault(id(obj), (name, objtype))
        env._xzw_documented = cache  # type: ignore[attr-defined]
    return cache


def _by_short_name(env: BuildEnvironment) -> dict[str, list[str]]:
    """``{short name: [documented full name]}`` for names documented exactly once."""
    names: dict[str, list[str]] = {}
    for name, _, _, _, _, priority in env.get_domain("py").get_objects():
        if priority >= 0:  # canonical-name aliases (priority -1) are the same object
            names.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return {k: v for k, v in names.items() if len(v) == 1}


def missing_reference(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.Element
) -> nodes.Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    documented = _documented(env)
    ignored = {name for _, name in app.config.nitpick_ignore}
    paths = _candidates(target, node.get("py:module"))
    short = target.lstrip("~.").rsplit(".", 1)[-1]
    unique = _by_short_name(env).get(short, [])  # a name documented exactly once
    if unique and _import(unique[0]) is not _MISSING:
        for role in ("obj", "class", "func", "data", "attr", "meth", "exc"):
            ref = env.get_domain("py").resolve_xref(
                env, node.get("refdoc", ""), app.builder, role, unique[0], node, contnode
            )
            if ref is not None:
                return ref
    for path in paths:
        obj = _import(path)
        if obj is _MISSING:
            continue
        hit = documented.get(id(obj))
        if hit is not None:
            name, objtype = hit
            role = "obj" if objtype not in ("class", "exception", "function", "method") else objtype
            ref = env.get_domain("py").resolve_xref(
                env,
                node.get("refdoc", ""),
                app.builder,
                role if role != "exception" else "exc",
                name,
                node,
                contnode,
            )
            if ref is not None:
                return ref
        own = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        public = f"{_public_module(obj)}.{getattr(obj, '__qualname__', '')}"
        if not own.startswith("xarray_zarrwrite") and (own in ignored or public in ignored):
            return contnode  # a listed third-party object: plain text, as nitpick_ignore does
    return None


def _public_module(obj: Any) -> str:
    """``zarr.storage`` for ``zarr.storage._wrapper``: the module path without private parts."""
    module = str(getattr(obj, "__module__", ""))
    return ".".join(p for p in module.split(".") if not p.startswith("_"))


def public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Show a private base class (``_compat.WrapperStore``) as its first public ancestor."""
    for i, base in enumerate(bases):
        cls = getattr(base, "__origin__", base)  # WrapperStore[Store] -> WrapperStore
        if not (isinstance(cls, type) and _is_private(cls)):
            continue
        while isinstance(cls, type) and _is_private(cls) and cls.__bases__:
            cls = cls.__bases__[0]
        bases[i] = cls


def _is_private(cls: type) -> bool:
    return (
        cls.__module__.startswith("xarray_zarrwrite")
        and any(p.startswith("_") for p in cls.__module__.split("."))
        and _import(f"xarray_zarrwrite.{cls.__name__}") is not cls
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", missing_reference)
    app.connect("autodoc-process-bases", public_bases)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
