"""Each method trains a few steps through the real entry point and writes a final checkpoint in its own
format that loads back onto the base model."""

import json

import pytest
import torch

from spiel.testing import tiny_model
from tests.helpers.runs import SMALL, SPIEL_FAST, only_run_dir, run_cli, summary

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _train(tmp_path, *args):
    code = run_cli([f"output_root={tmp_path}", *SMALL, *args])
    assert code == 0
    run_dir = only_run_dir(tmp_path)
    return run_dir, summary(run_dir)


def _changed_logits(model):
    ids = torch.tensor([[1, 261, 80, 81, 82, 14, 262, 14]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["ag", "ma"])
def test_spiel_methods_write_a_delta_that_loads_back(tmp_path, method):
    from spiel.model.spiel_model import SpielModel

    run_dir, s = _train(tmp_path, f"method={method}", *SPIEL_FAST)
    final = run_dir / "final"
    assert (final / "spiel_config.json").is_file() and (final / "spiel_delta.safetensors").is_file()
    assert (final / "tokenizer.json").is_file()
    assert s["steps"] == 3 and s["method"] == method and s["trainable"] > 0
    # only the delta is stored: far smaller than the base weights
    assert (final / "spiel_delta.safetensors").stat().st_size < 0.5 * s["total_params"] * 4
    assert not any(p.name == "model.safetensors" for p in run_dir.rglob("*"))

    loaded = SpielModel.from_pretrained(tiny_model(), final)
    values = torch.cat([layer.values.detach() for layer in loaded.deltas.values()])
    assert values.abs().sum() > 0  # trained
    assert not torch.allclose(_changed_logits(loaded), _changed_logits(tiny_model()))
    # reselections happened (every 2 steps after 1 of estimation): indices were grown after step 0
    ages = json.loads((run_dir / "param_ages.json").read_text())
    assert set(ages["grown_at_step"]) - {"0"}
    assert (run_dir / "param_ages.png").stat().st_size > 1000
    # the local metrics log and the resolved config
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert "${" not in (run_dir / "config.yaml").read_text()
    # intermediate checkpoints hold everything needed to resume, and nothing of the base
    ckpt = run_dir / "checkpoint-2"
    for name in (
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "selector.pt",
        "spiel_delta.safetensors",
        "checkpoint_complete.json",
    ):
        assert (ckpt / name).is_file(), name


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_methods_write_an_adapter_that_loads_back(tmp_path, method):
    from peft import PeftModel

    extra = ["method.r=4"] if method == "lora" else []
    run_dir, s = _train(tmp_path, f"method={method}", *extra)
    final = run_dir / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper()
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    if method == "lora":
        assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 16, 0.1)
    loaded = PeftModel.from_pretrained(tiny_model(), final)
    assert not torch.allclose(_changed_logits(loaded), _changed_logits(tiny_model()))
    assert s["trainable"] == sum(p.numel() for n, p in loaded.named_parameters() if f"{method}_" in n)


def test_full_finetuning_writes_a_transformers_model(tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir, s = _train(tmp_path, "method=full")
    loaded = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert s["trainable"] == s["total_params"]
    assert not torch.allclose(_changed_logits(loaded), _changed_logits(tiny_model()))


@pytest.mark.parametrize("method", ["ag", "lora"])
def test_nf4_base(tmp_path, method):
    extra = SPIEL_FAST if method == "ag" else ["method.r=4"]
    run_dir, s = _train(tmp_path, f"method={method}", "quant=nf4", *extra)
    assert s["quant"] == "nf4"
    final = run_dir / "final"
    from spiel.io.base_model import load_base_model

    base = load_base_model("tiny", dtype="bfloat16", quant="nf4", device="cpu")
    if method == "ag":
        from spiel.model.spiel_model import SpielModel

        loaded = SpielModel.from_pretrained(base, final)
        layer = next(iter(loaded.deltas.values()))
        assert layer.values.dtype == torch.bfloat16  # the paper's dtype for quantized training
        assert any(layer.values.abs().sum() > 0 for layer in loaded.deltas.values())
    else:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(base, final)
        assert any(p.abs().sum() > 0 for n, p in loaded.named_parameters() if "lora_B" in n)


def test_activation_checkpointing_trains_the_same_delta(tmp_path):
    from tests.helpers.runs import load_tensors

    runs = {}
    for flag in ("false", "true"):
        root = tmp_path / flag
        root.mkdir()
        code = run_cli(
            [f"output_root={root}", *SMALL, *SPIEL_FAST, f"activation_checkpointing={flag}", "save_steps=0"]
        )
        assert code == 0
        runs[flag] = load_tensors(only_run_dir(root) / "final" / "spiel_delta.safetensors")
    assert runs["false"].keys() == runs["true"].keys()
    for key in runs["false"]:
        if key.endswith(".values"):
            assert torch.allclose(runs["false"][key], runs["true"][key], atol=1e-6), key
        else:  # the same growth decisions: the probes see the same gradients through checkpointed blocks
            assert torch.equal(runs["false"][key], runs["true"][key]), key
    assert any(k.endswith(".values") and v.abs().sum() > 0 for k, v in runs["true"].items())
