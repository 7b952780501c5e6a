"""docs/quality-history.md shows what docs/quality_demo.json holds: its tables are the JSON rendered by
scripts/render_quality_history.py, so an edit to either alone fails here."""

from __future__ import annotations

import json

import pytest

from tests.helpers.script_loader import load_script

render = load_script("render_quality_history")


def test_page_tables_are_the_json_rendered():
    page = render.PAGE.read_text()
    assert render.fill(page, render.render(json.loads(render.JSON_PATH.read_text()))) == page, (
        "docs/quality-history.md is stale: run python scripts/render_quality_history.py"
    )


def test_rendered_table_matches_a_recorded_figure():
    # LoRA's seeds 1-3 on the held-out set, as recorded (0.641 ± 0.052), from the JSON by hand.
    bundle = json.loads(render.JSON_PATH.read_text())
    lora = [r["exact_match"] for r in bundle["files"]["quality_base"]["runs"] if r["stage"] == "seeds"]
    assert len(lora) == 3 and round(sum(lora) / 3, 3) == 0.641
    assert (
        "| LoRA | 71,936 | 0.003 | 1 | 0.003 | 4 | 0.697 | **0.641 ± 0.052** |"
        in render.render(bundle)["protocol"]
    )


def test_check_flags_an_edited_table(tmp_path, monkeypatch):
    page = tmp_path / "quality-history.md"
    page.write_text(render.PAGE.read_text().replace("**0.641 ± 0.052**", "**0.700 ± 0.052**"))
    monkeypatch.setattr(render, "PAGE", page)
    assert render.main(["--check"]) == 1
    assert render.main([]) == 0 and render.main(["--check"]) == 0  # rewritten from the JSON


def test_missing_markers_are_refused(tmp_path, monkeypatch):
    page = tmp_path / "quality-history.md"
    page.write_text("# no tables here\n")
    monkeypatch.setattr(render, "PAGE", page)
    with pytest.raises(SystemExit, match="tables:protocol"):
        render.main(["--check"])
