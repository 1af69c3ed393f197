"""docs/architecture.md names every module of the package, so that the page stays true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xarray_zarrwrite"
PAGE = ROOT / "docs" / "architecture.md"


def modules() -> list[str]:
    """Every module of the package, as its path relative to the package (``convert/_plan.py``)."""
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


def named_on_page(text: str) -> set[str]:
    """The module paths the page names in code spans (`` `convert/_plan.py` ``)."""
    return set(re.findall(r"`([\w/]+\.py)`", text))


def test_every_module_is_on_the_architecture_page() -> None:
    named = named_on_page(PAGE.read_text(encoding="utf-8"))
    missing = [m for m in modules() if m not in named]
    assert not missing, (
        f"docs/architecture.md does not name {missing}: add each, as `path/relative/to.py`, "
        "to the module table (section 'Every module') with what it holds"
    )


def test_the_module_table_names_no_module_that_is_gone() -> None:
    rows = [line for line in PAGE.read_text(encoding="utf-8").splitlines() if line[:1] == "|"]
    gone = sorted(named_on_page("\n".join(rows)) - set(modules()))
    assert not gone, f"docs/architecture.md names modules that no longer exist: {gone}"


def test_the_check_sees_a_missing_module() -> None:
    assert "convert/_plan.py" in modules()
    assert "convert/_plan.py" not in named_on_page("the plan (`_plan.py`)")
    assert named_on_page("| `convert/_plan.py`, `api.py` |") == {"convert/_plan.py", "api.py"}
