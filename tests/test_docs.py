"""The documentation's code runs: every ```python block of each tutorial (and of the interop page), in order, in
one namespace per page (issue 17). `make docs` builds the site itself with warnings as errors."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "interop.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NEEDS = {"nir-export.md": ("nir",), "interop.md": ("spikingjelly", "snntorch", "neurobench", "tonic", "nir")}


def test_every_tutorial_is_linked_from_the_index():
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        assert str(page.relative_to(DOCS)) in index, page.name
    assert len(PAGES) >= 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_code_runs(page, tmp_path, monkeypatch):
    for module in NEEDS.get(page.name, ()):
        pytest.importorskip(module, reason=f"{page.name} uses {module} (the 'interop' test extra has it)")
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no python code"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i + 1}]", "exec"), namespace)
        except Exception as exc:  # name the page and block: the traceback points into compiled docs code
            raise AssertionError(f"{page.name}, code block {i + 1} failed: {type(exc).__name__}: {exc}") from exc
