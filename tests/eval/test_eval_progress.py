"""spiel-eval's progress bar (eval.progress) is shown by the demo benchmark as by the others."""

import pytest

from spiel.eval.runner import run_bench
from spiel.testing import tiny_model, tiny_tokenizer

DEMO = {"name": "demo", "path": None, "max_new_tokens": 2, "batch_size": 2}


@pytest.mark.parametrize("progress", [True, False])
def test_demo_shows_a_progress_bar_when_asked(capsys, progress):
    result = run_bench(
        "demo", tiny_model(), tiny_tokenizer(), DEMO, data_dir=None, batch_size=4, limit=4, progress=progress
    )
    assert result["metrics"]["num_examples"] == 4
    err = capsys.readouterr().err
    assert ("generate: 100%" in err and "2/2" in err) == progress
