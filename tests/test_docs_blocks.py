"""Every ```python block of README.md and docs/*.md runs as written.

Each page's blocks run in order, as one script (``python page.py``, exactly what a reader who
pastes them into a file gets: no main guard is added), in a fresh folder holding the sample
data of :func:`xarray_zarrwrite.testing.sample_files` (``t2m_2000-01.nc`` ..
``t2m_2000-12.nc``). A block that cannot run here (a SLURM cluster, S3 credentials, a GPU) is
preceded by a ``<!-- skip-run: reason -->`` comment: it is still compiled, and its imports run.
A block that must be a script of its own (it starts worker processes, which import the main
script again) is preceded by ``<!-- own-script: reason -->``: it runs as its own file, in the
same folder, after the blocks above it.
Pages listed in :data:`SLOW_PAGES` run only with ``--run-slow``.
"""

from __future__ import annotations

import ast
import doctest
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
#: Pages whose blocks take long (several conversions): run with --run-slow.
SLOW_PAGES: frozenset[str] = frozenset(
    {
        "convert.md",
        "convert_index.md",
        "icechunk.md",
        "packing.md",
        "streaming.md",
        "templates.md",
    }
)
TIMEOUT_S = 240
MARK = "@@xzw-block "

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
_SKIP = re.compile(r"<!--\s*skip-run:\s*(?P<reason>.*?)\s*-->")
_ALONE = re.compile(r"<!--\s*own-script:\s*(?P<reason>.*?)\s*-->")
#: Runs an own-script block as its own file (from the page's script).
_RUN_ALONE = """
def _xzw_own_script(code, k):
    import pathlib, subprocess, sys
    path = pathlib.Path(f"_own_script_{k}.py")
    path.write_text(code, encoding="utf-8")
    if subprocess.run([sys.executable, str(path)]).returncode:
        raise SystemExit(f"block {k}, run as its own script, failed")
"""


@dataclass(frozen=True)
class Block:
    """One ```python block of a page."""

    page: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason, when marked skip-run
    alone: str | None = None  # the reason, when marked own-script

    def label(self) -> str:
        first = next((s for s in self.code.splitlines() if s.strip()), "")
        return f"{self.page}:{self.line} ({first.strip()[:60]})"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown page, in order, with their skip-run markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip().lower()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if info in ("python", "py", "python3", "pycon", "{code-block} python"):
            skip, alone = _marker(lines, i), _marker(lines, i, _ALONE)
            code = "\n".join(s[len(m.group("indent")) :] for s in lines[i + 1 : end])
            blocks.append(Block(path.name, i + 1, session_source(code + "\n"), skip, alone))
        i = end + 1
    return blocks


def session_source(code: str) -> str:
    """The statements of an interactive session (``>>>`` prompts); other code as it is.

    The printed output of a session is illustration: it is not compared.
    """
    if not code.lstrip().startswith(">>>"):
        return code
    examples = doctest.DocTestParser().get_examples(code)
    return "".join(e.source for e in examples)


def _marker(lines: list[str], fence: int, marker: re.Pattern[str] = _SKIP) -> str | None:
    """The reason of a ``<!-- skip-run: ... -->`` (or ``marker``) on the nearest non-blank
    line above."""
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = marker.search(lines[j]) if j >= 0 else None
    return m.group("reason") if m else None


def imports_of(code: str) -> str:
    """The import statements of ``code`` (top level and nested), as source; those of other
    packages than ours may fail with ModuleNotFoundError (a skipped block may need a package
    that is not a dependency, e.g. dask-jobqueue for SLURM)."""
    tree = ast.parse(code)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    out = []
    for n in nodes:
        names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
        if all(name.split(".")[0] == "xarray_zarrwrite" for name in names):
            out.append(ast.unparse(n))
        else:
            out.append(f"try:\n    {ast.unparse(n)}\nexcept ModuleNotFoundError:\n    pass")
    return "\n".join(out) + "\n"


def page_script(blocks: list[Block]) -> str:
    """The page as one script: markers between blocks; skipped blocks only import."""
    parts = ["import sys as _xzw_sys\n", _RUN_ALONE]
    for k, block in enumerate(blocks):
        parts.append(f"_xzw_sys.stderr.write({MARK + str(k)!r} + '\\n'); _xzw_sys.stderr.flush()\n")
        if block.skip:
            parts.append(imports_of(block.code))
        elif block.alone:
            parts.append(f"_xzw_own_script({block.code!r}, {k})\n")
        else:
            parts.append(block.code)
    return "".join(parts)


def _params() -> list[object]:
    out = []
    for path in PAGES:
        marks = [pytest.mark.slow] if path.name in SLOW_PAGES else []
        if python_blocks(path):
            out.append(pytest.param(path, id=path.name, marks=marks))
    return out


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xarray_zarrwrite.testing import sample_files

    folder = tmp_path_factory.mktemp("samples")
    sample_files(folder)
    return folder


def test_blocks_are_found(tmp_path):
    """The collector sees fences, indented fences, sessions and markers."""
    blocks = [b for p in PAGES for b in python_blocks(p)]
    assert len(blocks) >= 10
    assert any(b.page == "README.md" for b in blocks)
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- skip-run: needs S3 -->\n\n"
        "```python\nimport os\nopen('s3://x')\n```\n\n```bash\nls\n```\n\n"
        "   ```python\n   >>> y = x + 1\n   >>> y\n   2\n   ```\n"
    )
    found = python_blocks(page)
    assert [(b.line, b.skip) for b in found] == [(3, None), (9, "needs S3"), (18, None)]
    assert found[2].code == "y = x + 1\ny\n"
    assert imports_of(found[1].code) == (
        "try:\n    import os\nexcept ModuleNotFoundError:\n    pass\n"
    )
    assert imports_of("import xarray_zarrwrite as xzw\n") == "import xarray_zarrwrite as xzw\n"
    script = page_script(found)
    assert "open(" not in script and "import os" in script and "y = x + 1" in script
    alone = tmp_path / "alone.md"
    alone.write_text("<!-- own-script: processes -->\n```python\nz = 3\n```\n")
    (block,) = python_blocks(alone)
    assert block.alone == "processes" and block.skip is None
    assert "_xzw_own_script('z = 3\\n', 0)" in page_script([block])


@pytest.mark.parametrize("page", _params())
def test_page_blocks_run(page: Path, sample_dir: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    for block in blocks:  # every block compiles, skipped ones included
        try:
            compile(block.code, block.label(), "exec")
        except SyntaxError as e:
            pytest.fail(f"{block.label()} does not compile: {e}")
    work = tmp_path / "work"
    shutil.copytree(sample_dir, work)
    script = work / f"{page.stem}_blocks.py"
    script.write_text(page_script(blocks), encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(
            [sys.executable, script.name],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{page.name}: timed out after {TIMEOUT_S} s in {_failing(blocks, err)}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        pytest.fail(f"{page.name}: {_failing(blocks, proc.stderr)} failed:\n{tail}")


def _failing(blocks: list[Block], stderr: str) -> str:
    started = [int(line[len(MARK) :]) for line in stderr.splitlines() if line.startswith(MARK)]
    return f"block {blocks[started[-1]].label()}" if started else "the page's first lines"


def test_config_page_is_generated_from_the_schema(monkeypatch):
    pytest.importorskip("sphinx")
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "_ext"))
    from configdoc import rst_table

    from xarray_zarrwrite.config import SCHEMA
    from xarray_zarrwrite.config import config as cfg

    text = "\n".join(rst_table())
    assert {key.name for key in SCHEMA} == set(cfg.config)  # donfig's dict: every key in SCHEMA
    for key in SCHEMA:
        assert f"``{key.name}``" in text and f"``{key.env}``" in text
        assert f"default: ``{cfg.get(key.name)!r}``" in text or key.env in os.environ
    assert "xzw-config" in (ROOT / "docs" / "config.md").read_text()


def _extras() -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return set(project["optional-dependencies"])


def test_install_docs_list_every_extra():
    """The install page's table has a row per extra of pyproject.toml; README names them."""
    page = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([\w-]+)` \|", page, flags=re.MULTILINE))
    assert rows == _extras()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install") :].split("\n## ", 1)[0]
    assert {
        e for e in _extras() if f"`{e}`" in install or f"[{e}" in install or f",{e}" in install
    } == _extras()


def test_docs_code_lines_fit_88_columns():
    """Code lines of the pages fit 88 columns (no scrolling at 1280 px), but the README's two
    commands, kept as written."""
    keep = {"make demo   #", "make test   #", "            # verifies", "            # pytest"}
    pages = [ROOT / "README.md", *(ROOT / "docs" / n for n in OWN_PAGES)]
    long = []
    for page in pages:
        inside: str | None = None  # "code" in a code block, "directive" in ```{image} ...
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                opens = "directive" if line.lstrip().startswith("```{") else "code"
                inside = opens if inside is None else None
                continue
            if inside == "code" and len(line) > 88 and not line.startswith(tuple(keep)):
                long.append(f"{page.name}:{number} ({len(line)} columns)")
    assert not long, long


#: The pages this test holds to 88 columns (others' pages are checked by their owners).
OWN_PAGES = (
    "index.md",
    "install.md",
    "quickstart.md",
    "troubleshooting.md",
    "overview.md",
    "architecture.md",
    "config.md",
    "changelog.md",
)
