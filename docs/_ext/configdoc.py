"""Sphinx extension: the ``xzw-config`` directive renders :data:`xarray_zarrwrite.config.SCHEMA`.

The configuration page is generated from the schema the library itself reads its defaults from,
so a new key, a changed default or a changed meaning shows in the documentation without a
hand-copied table.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


def rst_table() -> list[str]:
    """The schema as a reStructuredText list-table: key, default and environment variable in
    the first column, the meaning in the second."""
    from xarray_zarrwrite.config import SCHEMA

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 38 62",
        "",
        "   * - key, default, environment variable",
        "     - meaning",
    ]
    for key in SCHEMA:
        lines += [
            f"   * - ``{key.name}``",
            "",
            f"       default: ``{key.default!r}``",
            "",
            f"       ``{key.env}``",
            f"     - {key.doc}",
        ]
    return lines


class ConfigTable(SphinxDirective):
    """``.. xzw-config::``: the table of every configuration key."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container(classes=["xzw-config"])
        self.state.nested_parse(
            StringList(rst_table(), source="xarray_zarrwrite.config"), 0, container
        )
        return [container]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("xzw-config", ConfigTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
