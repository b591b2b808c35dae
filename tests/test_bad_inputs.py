"""The bad-input catalogue (benchmarks/bad_inputs.py -> docs/bad_inputs.md) fails every case the way it should.

Each case is run for real: API cases must raise the documented exception type; CLI cases must exit with the
documented code and print exactly one ``error:`` line, no traceback. The committed Markdown must list the
same cases (regenerate it with ``python benchmarks/bad_inputs.py`` after changing them).
"""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad_inputs   # dataclasses look their module up there
_spec.loader.exec_module(bad_inputs)
CASES = bad_inputs._cases()


def test_catalogue_is_large_and_covers_every_area():
    areas = {c.area for c in CASES}
    assert len(CASES) >= 50
    assert {"data", "neurons", "API", "training", "NIR", "CLI"} <= areas


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}-{i}" for i, c in enumerate(CASES, 1)])
def test_bad_input_fails_clearly(case, root):
    outcome = bad_inputs.run_case(case, root)
    assert outcome.ok, f"{case.what}: {outcome.result}: {outcome.message}"
    assert len(outcome.message) > 20     # a sentence, not a bare type name


def test_committed_catalogue_lists_the_same_cases():
    text = (REPO / "docs" / "bad_inputs.md").read_text()
    rows = re.findall(r"^\| \d+ \| [^|]+ \| (.+?) \| `", text, flags=re.M)
    assert [r.replace("\\|", "|") for r in rows] == [c.what for c in CASES]
    assert f"{len(CASES)} of {len(CASES)} cases fail as they should" in text
