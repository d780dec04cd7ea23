"""Every ``python`` block of README.md and docs/**/*.md runs (as CI), page by page.

The names the blocks take as given come from ``docs/_snippets.py``; ``EDGECOMPRESS_DOCS_FAST``
(on by default here) caps their training and timing. A block preceded by
``<!-- docs-test: skip REASON -->`` is not run (hardware this machine lacks, files only the reader
has); one preceded by ``<!-- docs-test: needs MODULE ... -->`` runs only where those modules
import (extras outside ``[all]``, such as executorch and llama_cpp).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- docs-test: (skip|needs) ([^>]*?)\s*-->\s*)?```python\n(.*?)```", re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _snippets():
    os.environ.setdefault("EDGECOMPRESS_DOCS_FAST", "1")
    spec = importlib.util.spec_from_file_location("_snippets", ROOT / "docs" / "_snippets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def blocks(page: Path) -> list[str]:
    """The page's python blocks that are meant to run here."""
    return [code for kind, arg, code in BLOCK.findall(page.read_text()) if _runs_here(kind, arg)]


def _runs_here(kind: str, arg: str) -> bool:
    if kind == "skip":
        return False
    return kind != "needs" or all(importlib.util.find_spec(m) is not None for m in arg.split())


def test_every_page_with_code_is_collected():
    with_code = [p for p in PAGES if "```python" in p.read_text()]
    marked = {p for p in with_code if not blocks(p) and "docs-test:" in p.read_text()}
    assert len(with_code) >= 15 and all(blocks(p) for p in with_code if p not in marked)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippets = _snippets()
    namespace = snippets.namespace()
    for i, source in enumerate(blocks(page)):
        code = compile(snippets.fast_source(source), f"{page.name} block {i + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own code, the point of this test
