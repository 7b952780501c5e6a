"""spiel-train on one's own LLaMA-architecture model: model=hf derives presets from the model's size (the
paper's values at LLaMA-2-7B's size, the tiny demo's at the tiny model's, in between by size), prints them
at start, lets the command line win, and model=tiny refuses another model rather than train it with the
demo's presets. References: the paper's settings (Appendix C-D) and the budget counted on plain modules."""

from __future__ import annotations

import json
import shutil

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import LlamaConfig

from spiel.paths import CONFIG_DIR
from spiel.testing import TINY_MODEL_DIR
from spiel.training.config.hydra_config import ConfigError, validate
from tests.helpers.runs import only_run_dir, run_cli

PAPER = {  # LLaMA-2-7B, the paper's Appendix C-D
    "ag": {"method.lr": 1e-4, "method.weight_decay": 30.0, "method.rank_equiv": 64},
    "ma": {"method.lr": 1e-3, "method.weight_decay": 0.3, "method.rank_equiv": 64},
    "lora": {"method.lr": 1e-4, "method.r": 64},
    "ia3": {"method.lr": 3e-4},
    "full": {"method.lr": 2e-5},
}


def make(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


def config_only_model(directory, **shape):
    """A model directory holding only config.json: presets read the config, never the weights."""
    directory.mkdir(parents=True, exist_ok=True)
    LlamaConfig(**shape).save_pretrained(directory)
    return directory


LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
)


@pytest.mark.parametrize("method", sorted(PAPER))
def test_at_llama2_7b_size_the_presets_are_the_papers(tmp_path, method):
    model_dir = config_only_model(tmp_path / "my-7b", **LLAMA2_7B)
    cfg = make("model=hf", f"model.name_or_path={model_dir}", f"method={method}")
    for key, value in {**PAPER[method], "batch_size": 128, "micro_batch_size": 1}.items():
        assert OmegaConf.select(cfg, key) == pytest.approx(value), key
    settings = validate(cfg)
    assert settings.dtype == "auto" and settings.grad_accum == 128


def test_at_the_tiny_size_the_presets_are_the_demos(tmp_path):
    own = shutil.copytree(TINY_MODEL_DIR, tmp_path / "copy")
    for method in ("ag", "lora"):
        hf = make("model=hf", f"model.name_or_path={own}", f"method={method}")
        demo = make("model=tiny", f"method={method}")
        for key in (
            "method.lr",
            "method.weight_decay",
            "method.rank_equiv",
            "method.r",
            "batch_size",
            "micro_batch_size",
        ):
            assert OmegaConf.select(hf, key, default=None) == OmegaConf.select(demo, key, default=None), key


def test_the_budget_is_the_papers_share_of_this_models_layers(tmp_path):
    shape = dict(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    cfg = make("model=hf", f"model.name_or_path={config_only_model(tmp_path / 'm', **shape)}")
    h, m, kv = 512, 1376, 2 * 64
    blocks = [(h, h), (kv, h), (kv, h), (h, h), (m, h), (m, h), (h, m)]  # q k v o gate up down: (out, in)
    paper_share = 64 * 32 * (4 * 8192 + 3 * (11008 + 4096)) / (32 * (4 * 4096**2 + 3 * 4096 * 11008))
    rank = paper_share * sum(o * i for o, i in blocks) / sum(o + i for o, i in blocks)
    assert cfg.method.rank_equiv == round(rank)


def test_presets_move_with_size_between_the_two_measured_ones(tmp_path):
    sizes = [
        dict(
            hidden_size=h,
            intermediate_size=int(h * 2.6875),
            num_hidden_layers=layers,
            num_attention_heads=h // 64,
            num_key_value_heads=h // 64,
            vocab_size=32000,
        )
        for h, layers in ((256, 4), (1024, 12), (2048, 24))
    ]
    cfgs = [
        make("model=hf", f"model.name_or_path={config_only_model(tmp_path / str(i), **s)}")
        for i, s in enumerate(sizes)
    ]
    lrs = [c.method.lr for c in cfgs]
    batches = [c.batch_size for c in cfgs]
    assert 3e-2 > lrs[0] > lrs[1] > lrs[2] > 1e-4
    assert 16 <= batches[0] <= batches[1] <= batches[2] <= 128 and all(
        b % c.micro_batch_size == 0 for b, c in zip(batches, cfgs, strict=True)
    )


def test_the_command_line_wins_over_a_preset(tmp_path):
    model_dir = config_only_model(tmp_path / "my-7b", **LLAMA2_7B)
    cfg = make("model=hf", f"model.name_or_path={model_dir}", "method.lr=0.5", "batch_size=8")
    assert cfg.method.lr == 0.5 and cfg.batch_size == 8 and cfg.method.rank_equiv == 64


def test_the_tiny_preset_refuses_another_model(tmp_path):
    """It used to train a user's model with lr 0.03, rank 4, float32 and batch 16 without a word."""
    own = shutil.copytree(TINY_MODEL_DIR, tmp_path / "copy")
    with pytest.raises(ConfigError, match=f"model=hf model.name_or_path={own}") as error:
        validate(make(f"model.name_or_path={own}"))
    assert error.value.key == "model.name_or_path"
    validate(make(f"model.name_or_path={TINY_MODEL_DIR}"))  # the tiny model itself, by its path
    with pytest.raises(ConfigError, match="model=hf trains your own model"):
        validate(make("model=hf"))
    with pytest.raises(ConfigError, match="no model directory"):
        validate(make("model=hf", f"model.name_or_path={tmp_path / 'missing'}"))


@pytest.mark.slow
def test_spiel_train_trains_ones_own_model_and_prints_the_presets(tmp_path, capsys):
    own = shutil.copytree(TINY_MODEL_DIR, tmp_path / "my-model")
    root = tmp_path / "out"
    code = run_cli(
        ["model=hf", f"model.name_or_path={own}", "debug=smoke", f"output_root={root}", "method.lr=0.02"]
    )
    assert code == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("model=hf: presets for"))
    assert str(own) in line and "method.lr=0.02 (preset 0.01)" in line and "method.rank_equiv=4" in line
    run = only_run_dir(root)
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert OmegaConf.load(run / "config.yaml").method.rank_equiv == 4  # resolved in the run's config


def test_a_held_out_file_is_encoded_like_the_training_data(tmp_path):
    """eval_data=<file> must use data.template and data=own's columns, or validation scores another format."""
    from types import SimpleNamespace

    from spiel.training.loggers.validation import eval_split

    seen = {}

    def build(cfg, tokenizer, **kwargs):
        seen.update(cfg)
        return "held-out", {}

    c = SimpleNamespace(
        eval_data=str(tmp_path / "dev.jsonl"),
        eval_fraction=0.0,
        max_seq_len=64,
        data_cache_dir=None,
        data_num_proc=1,
    )
    data = {
        "name": "own",
        "path": "train.jsonl",
        "template": "model",
        "columns": {"prompt": "q", "completion": "a"},
    }
    assert eval_split("train", c, None, data, build) == ("train", "held-out")
    assert seen["template"] == "model" and seen["sources"][0]["columns"] == {"prompt": "q", "completion": "a"}
