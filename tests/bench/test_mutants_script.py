"""scripts/mutants.py's equivalence rule for annotations: only mutants inside an annotation of a module with
``from __future__ import annotations`` are left out (elsewhere an annotation is evaluated at definition)."""

from __future__ import annotations

from tests.helpers.script_loader import load_script

SOURCE = """from __future__ import annotations

x: int | None = None


def f(a: dict | None, b=1 | 2) -> str | None:
    return "é" + str(a | b)
"""


def test_annotation_spans_cover_annotations_only(tmp_path):
    mutants = load_script("mutants")
    (tmp_path / "m.py").write_text(SOURCE, encoding="utf-8")
    spans = sorted(mutants.annotation_spans(tmp_path, "m.py"))
    lines = SOURCE.splitlines()
    texts = [lines[a[0] - 1][a[1] : b[1]] for a, b in spans]
    assert texts == ["int | None", "dict | None", "str | None"]  # not the default 1 | 2, not the body
    (tmp_path / "m.py").write_text(
        SOURCE.replace("from __future__ import annotations\n", ""), encoding="utf-8"
    )
    assert mutants.annotation_spans(tmp_path, "m.py") == []
