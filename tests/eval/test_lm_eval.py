"""bench=lm_eval: lm-evaluation-harness on the loaded model, offline, with local task definitions over the
shipped demo data; checked against spiel's own demo benchmark and a plain log-likelihood computation."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from spiel import SpielConfig, get_spiel_model
from spiel.cli.eval import run
from spiel.eval.demo import evaluate_demo
from spiel.eval.lm_eval import LmEvalError, evaluate_lm_eval
from spiel.paths import CONFIG_DIR
from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                "model=tiny",
                "bench=lm_eval",
                "bench.bootstrap_iters=0",
                "eval.progress=false",
                f"eval.output_dir={tmp_path}",
                *overrides,
            ],
        )


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenized as one string with BOS, split after the context's tokens;
    trailing whitespace of the context belongs to the continuation (lm-eval's rule), except after the chat
    prompt's assistant header: that is prompt, never trained to be predicted."""
    if not context.endswith("<|assistant|>\n"):
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped) :] + continuation
    ids = tok(context + continuation)["input_ids"]
    n_context = len(tok(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return float(sum(logprobs[i - 1, ids[i]] for i in range(n_context, len(ids))))


def test_generation_task_gives_spiels_demo_answers_and_writes_metrics(tmp_path):
    metrics = run(_cfg(tmp_path, "bench.tasks=[spiel_demo_gen]", "eval.limit=6", "eval.batch_size=3"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (tmp_path / "summary.txt").read_text().startswith("lm_eval | ")
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    own = evaluate_demo(tiny_model(), tiny_tokenizer(), limit=6, max_new_tokens=16)
    # the same prompts and the same greedy answers as spiel's bench=demo
    assert [r["prompt"] for r in sorted(rows, key=lambda r: r["doc_id"])] == [
        p["prompt"] for p in own["predictions"]
    ]
    answers = [r["response"] for r in sorted(rows, key=lambda r: r["doc_id"])]
    assert answers == [p["prediction"] for p in own["predictions"]]
    assert any(a.strip() for a in answers)
    assert metrics["tasks"]["spiel_demo_gen"]["exact_match"] == own["exact_match"]
    assert metrics["tasks"]["spiel_demo_gen"]["num_examples"] == 6
    assert metrics["headline"] == {
        "task": "spiel_demo_gen",
        "metric": "exact_match",
        "value": own["exact_match"],
    }


def test_loglikelihood_on_an_unmerged_spiel_model_matches_a_plain_computation():
    spiel_model = get_spiel_model(tiny_model(), SpielConfig(method="ag", rank_equiv=4))
    generator = torch.Generator().manual_seed(0)
    for layer in spiel_model.deltas.values():
        layer.values.data = 0.05 * torch.randn(layer.values.shape, generator=generator)
    tok = tiny_tokenizer()
    out = evaluate_lm_eval(spiel_model, tok, ["spiel_demo_loglik"], batch_size=2, limit=5, bootstrap_iters=0)
    assert len(spiel_model.deltas) > 0  # evaluated unmerged
    base = tiny_model()
    for row in out["predictions"]:
        value, _is_greedy = row["response"]
        expected = loglikelihood(spiel_model, tok, row["prompt"], row["target"])
        assert value == pytest.approx(expected, abs=1e-3)
        assert (
            abs(loglikelihood(base, tok, row["prompt"], row["target"]) - expected) > 1e-2
        )  # the delta counts
    assert out["metrics"]["tasks"]["spiel_demo_loglik"]["num_examples"] == 5


def test_task_yaml_from_include_path_over_a_local_json_file(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "my_copy.yaml").write_text(
        "task: my_copy\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {DEMO_DIR / 'heldout.jsonl'}\n"
        "test_split: test\n"
        "output_type: loglikelihood\n"
        'doc_to_text: "Q: {{messages[0].content}}\\nA:"\n'
        'doc_to_target: " {{messages[1].content}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    model, tok = tiny_model(), tiny_tokenizer()
    out = evaluate_lm_eval(
        model, tok, ["my_copy"], include_path=str(tasks), batch_size=4, limit=3, bootstrap_iters=0
    )
    records = [json.loads(line) for line in (DEMO_DIR / "heldout.jsonl").read_text().splitlines()[:3]]
    got = {r["doc_id"]: r["response"][0] for r in out["predictions"]}
    for i, rec in enumerate(records):
        context, target = f"Q: {rec['messages'][0]['content']}\nA:", " " + rec["messages"][1]["content"]
        assert got[i] == pytest.approx(loglikelihood(model, tok, context, target), abs=1e-3)


def test_bad_settings_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    import spiel.cli.eval as cli

    monkeypatch.setattr(cli, "load_model", lambda cfg: pytest.fail("the model was loaded"))
    with pytest.raises(LmEvalError, match="bench.include_path: .*nowhere is not a directory"):
        run(_cfg(tmp_path, f"bench.include_path={tmp_path / 'nowhere'}"))
    with pytest.raises(LmEvalError, match="bench.tasks: a list of lm-eval task"):
        run(_cfg(tmp_path, "bench.tasks=[]"))


@pytest.mark.slow
def test_unknown_task_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import spiel.cli.eval as cli

    monkeypatch.setattr(cli, "load_model", lambda cfg: pytest.fail("the model was loaded"))
    with pytest.raises(LmEvalError, match=r"unknown lm-eval task\(s\) \['no_such_task'\].*include_path"):
        run(_cfg(tmp_path, "bench.tasks=[spiel_demo_gen,no_such_task]"))


@pytest.mark.slow
def test_nf4_base_with_the_delta_kept_unmerged(tmp_path):
    from spiel.eval.loader import load_for_eval
    from spiel.model.spiel_model import SpielModel

    spiel_model = get_spiel_model(tiny_model(), SpielConfig(method="ag", rank_equiv=4))
    for layer in spiel_model.deltas.values():
        layer.values.data = 0.05 * torch.randn(layer.values.shape, generator=torch.Generator().manual_seed(1))
    spiel_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_tokenizer())
    metrics = run(
        _cfg(
            tmp_path / "run",
            f"ckpt={tmp_path / 'ckpt'}",
            "model=from_ckpt",
            "quant=nf4",
            "bench.tasks=[spiel_demo_loglik]",
            "eval.limit=3",
            "eval.device=cpu",
            "eval.batch_size=1",
        )
    )
    assert metrics["tasks"]["spiel_demo_loglik"]["num_examples"] == 3
    loaded = load_for_eval(str(tmp_path / "ckpt"), quant="nf4", device="cpu")
    assert isinstance(loaded.model, SpielModel)  # unmerged on the 4-bit base
    base = load_for_eval(str(tmp_path / "ckpt"), quant="nf4", device="cpu").model
    for layer in base.deltas.values():  # the same NF4 base without the delta
        layer.values.data.zero_()
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    for row in rows:
        expected = loglikelihood(loaded.model, loaded.tokenizer, row["prompt"], row["target"])
        assert row["response"][0] == pytest.approx(expected, abs=1e-3)
        assert abs(loglikelihood(base, loaded.tokenizer, row["prompt"], row["target"]) - expected) > 1e-2


@pytest.mark.slow
def test_a_trained_demo_checkpoint_scores_its_answers(tmp_path):
    """The log-likelihood task scored the newline after "<|assistant|>" (masked in training, so never
    learned): a checkpoint answering about half of the demo right got accuracy 0.0 and perplexity ~4e6."""
    from tests.helpers.runs import only_run_dir, run_cli

    assert (
        run_cli(
            [
                "max_steps=60",
                "save_steps=0",
                "progress_bar=false",
                "plot_ages=false",
                f"output_root={tmp_path}",
            ]
        )
        == 0
    )
    final = only_run_dir(tmp_path) / "final"
    metrics = run(
        _cfg(
            tmp_path / "eval",
            f"ckpt={final}",
            "model=from_ckpt",
            "bench.tasks=[spiel_demo_loglik]",
            "eval.limit=40",
            "eval.batch_size=8",
        )
    )["tasks"]["spiel_demo_loglik"]
    # lm-eval's perplexity here is per answer (exp of minus the mean answer log-likelihood): 60 steps gave acc
    # 0.15 and ~300; the fully trained demo (188 steps) 0.51 and 7.8, where the old scoring gave 0.0 and 4.3e6
    assert metrics["acc"] > 0.05 and 1 < metrics["perplexity"] < 1e3, metrics
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    from spiel.eval.loader import load_for_eval

    loaded = load_for_eval(str(final), device="cpu")
    for row in rows[:5]:  # only the answer's tokens are scored
        expected = loglikelihood(loaded.model, loaded.tokenizer, row["prompt"], row["target"])
        assert row["response"][0] == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow
def test_a_task_whose_data_is_not_available_offline_is_one_message(tmp_path, capsys):
    """It ended in a raw traceback (datasets' ConnectionError) after the model had loaded, exit 1."""
    import subprocess
    import sys

    from tests.helpers.runs import subprocess_env

    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "spiel.cli.eval",
            "model=tiny",
            "bench=lm_eval",
            "bench.tasks=[arc_easy]",
            "eval.limit=2",
            f"eval.output_dir={tmp_path}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "loading the model" not in done.stderr + done.stdout
    assert (
        "['arc_easy']" in done.stderr and "allenai/ai2_arc" in done.stderr and "datasets cache" in done.stderr
    )
