"""spiel-eval on the tiny model: batch-size independence, every bench through `run(cfg)` writing the run
dir in the reference's metrics shape, the Table-1 collector, and the CLI's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from spiel.cli.eval import run
from spiel.eval.gsm import evaluate_gsm
from spiel.eval.mmlu import evaluate_mmlu, next_token_probs
from spiel.paths import CONFIG_DIR
from tests.helpers.paths import EVAL_FIXTURES, REPO


def test_mmlu_predictions_do_not_depend_on_the_batch_size(model, tok):
    one = evaluate_mmlu(model, tok, EVAL_FIXTURES, ntrain=2, batch_size=1)["predictions"]
    four = evaluate_mmlu(model, tok, EVAL_FIXTURES, ntrain=2, batch_size=4)["predictions"]
    assert len(one) == 5 and len({p["choiceA_probs"] for p in one}) == 5  # prompts of different lengths
    assert [p["prediction"] for p in one] == [p["prediction"] for p in four]
    for a, b in zip(one, four, strict=True):
        for c in "ABCD":
            assert a[f"choice{c}_probs"] == pytest.approx(b[f"choice{c}_probs"], rel=1e-4, abs=1e-9)


def test_next_token_probs_match_an_unpadded_forward(model, tok):
    import torch

    prompts = ["Task: copy\nInput: ab\nOutput:", "Q: a much longer prompt than the other one\nA:"]
    ids = [tok.encode(" A", add_special_tokens=False)[-1], tok.encode(" B", add_special_tokens=False)[-1]]
    batched = next_token_probs(model, tok, prompts, ids, batch_size=2)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            logits = model(torch.tensor([tok(p)["input_ids"]])).logits[0, -1].float()
        expected = logits.softmax(-1)[ids].numpy()
        assert batched[i] == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_gsm_generations_do_not_depend_on_the_batch_size(model, tok):
    kw = dict(n_shot=1, max_new_tokens=8, stop=None, limit=4)
    one = evaluate_gsm(model, tok, EVAL_FIXTURES, batch_size=1, **kw)["predictions"]
    four = evaluate_gsm(model, tok, EVAL_FIXTURES, batch_size=4, **kw)["predictions"]
    outputs = [p["model_output"] for p in one]
    assert all(outputs) and len(set(outputs)) > 1
    assert outputs == [p["model_output"] for p in four]


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                "model=tiny",
                f"eval.data_dir={EVAL_FIXTURES}",
                "eval.progress=false",
                f"eval.output_dir={tmp_path}",
                *overrides,
            ],
        )


BENCH_OVERRIDES = {
    "mmlu": ["bench.ntrain=1"],
    "gsm": ["bench.n_shot=1", "bench.max_new_tokens=6", "eval.limit=2"],
    "bbh": ["bench.max_new_tokens=6", "eval.limit=1"],
    "tydiqa": ["bench.max_new_tokens=6", "eval.limit=1", "bench.max_context_length=64"],
    "humaneval": ["bench.n_samples=2", "bench.max_new_tokens=6", "eval.limit=2", "bench.sandbox.timeout=10"],
    "demo": ["eval.limit=4"],
}


@pytest.mark.parametrize("bench", list(BENCH_OVERRIDES))
def test_every_bench_writes_metrics_in_the_reference_shape(tmp_path, bench):
    cfg = _cfg(tmp_path, f"bench={bench}", "label=tiny-base", *BENCH_OVERRIDES[bench])
    metrics = run(cfg)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    summary = (tmp_path / "summary.txt").read_text().strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"{bench} | tiny-base |")
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["bench"] == bench and info["kind"] == "base" and info["label"] == "tiny-base"
    if bench == "mmlu":
        assert set(metrics) >= {"average_acc", "subcat_acc", "cat_acc"} and len(rows) == 5
        assert set(metrics["cat_acc"]) == {"STEM", "social sciences"}
    elif bench == "gsm":
        assert (
            0 <= metrics["exact_match"] <= 1
            and len(rows) == 2
            and set(rows[0]) >= {"model_output", "prediction"}
        )
    elif bench == "bbh":
        assert set(metrics) == {
            "boolean_expressions",
            "date_understanding",
            "average_exact_match",
            "num_examples",
        }
        assert {r["task"] for r in rows} == {"boolean_expressions", "date_understanding"}
    elif bench == "tydiqa":
        assert set(metrics) == {"english", "finnish", "swahili", "average", "num_examples"}
        assert set(metrics["english"]) == {"exact_match", "f1"} and set(metrics["average"]) == {
            "exact_match",
            "f1",
        }
        assert len(rows) == 3
    elif bench == "humaneval":
        assert 0 <= metrics["pass@1"] <= 1 and len(rows) == 4  # 2 problems x 2 samples
        assert {"task_id", "completion", "result", "passed"} <= set(rows[0])
        assert metrics["sandbox"]["probe"] == "passed" and metrics["sandbox"]["isolation"] == "namespaces"
    else:
        assert 0 <= metrics["exact_match"] <= 1 and len(rows) == 4


def test_collect_results_builds_a_table_from_run_dirs(tmp_path):
    def fake(name, label, bench, metrics, when):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "run_info.json").write_text(json.dumps({"label": label, "bench": bench, "finished": when}))

    fake("a1", "Llama-2-7b", "mmlu", {"average_acc": 0.458}, "1")
    fake("a2", "Llama-2-7b", "gsm", {"exact_match": 0.13}, "1")
    fake("a3", "Llama-2-7b", "bbh", {"average_exact_match": 0.406}, "1")
    fake("a4", "Llama-2-7b", "tydiqa", {"average": {"f1": 50.9, "exact_match": 40.0}}, "1")
    fake("a5", "Llama-2-7b", "humaneval", {"pass@1": 0.135}, "1")
    fake("b1", "tulu2_ag", "mmlu", {"average_acc": 0.40}, "1")
    fake("b2", "tulu2_ag", "mmlu", {"average_acc": 0.50}, "2")  # the later run wins
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/collect_results.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "| Model | MMLU | GSM | BBH | TyDiQA | HumanEval | Avg. |"
    assert lines[2] == "| Llama-2-7b | 45.8 | 13.0 | 40.6 | 50.9 | 13.5 | 32.8 |"
    assert lines[3] == "| tulu2_ag | 50.0 | – | – | – | – | – |"


def _cli(*args, cwd):
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run(
        ["spiel-eval", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_cli_missing_data_exits_2_with_the_path_and_the_fetch_command(tmp_path):
    out = _cli("model=tiny", "bench=gsm", f"eval.data_dir={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert out.returncode == 2
    assert str(tmp_path / "nowhere" / "gsm" / "test.jsonl") in out.stderr
    assert "scripts/prepare_eval_data.py" in out.stderr


@pytest.mark.slow
def test_cli_multirun_runs_the_suite_and_collects(tmp_path):
    out = _cli(
        "-m",
        "model=tiny",
        f"eval.data_dir={EVAL_FIXTURES}",
        "eval.limit=1",
        "eval.progress=false",
        "++bench.max_new_tokens=4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "bench=gsm,bbh",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(p.parent.name for p in (tmp_path / "sweep").rglob("metrics.json"))
    assert runs == ["0_gsm", "1_bbh"]
    assert out.stdout.count("| tiny |") == 2
    assert out.stdout.count("loading the model") == 1  # the sweep's jobs share the loaded model
    table = subprocess.run(
        [sys.executable, str(REPO / "scripts/collect_results.py"), str(tmp_path / "sweep")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| tiny | – | 0.0 | 0.0 |" in table or "| tiny | – |" in table
