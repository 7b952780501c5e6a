"""spiel-export writes a plain transformers model that gives the SpielModel's logits, with a tokenizer
whose chat template renders the training ids; it refuses what it cannot export correctly."""

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spiel import SpielConfig, compose, get_spiel_model
from spiel.cli.export import ExportError, export
from spiel.data.encode import encode_messages
from spiel.data.template import jinja_chat_template
from spiel.model.spiel_model import SpielModel
from spiel.testing import DEMO_DIR, TINY_MODEL_DIR, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
IDS = torch.tensor([[1, 261, 10, 80, 81, 82, 14, 10, 262, 10, 83, 84]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def make_checkpoint(path, seed: int, tokenizer=True):
    """A SpIEL checkpoint over the tiny base with random (clearly non-zero) delta values."""
    model = get_spiel_model(tiny_model(), SpielConfig(method="ag", rank_equiv=4, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    for layer in model.deltas.values():
        layer.values.data = 0.05 * torch.randn(layer.values.shape, generator=generator)
    model.save_pretrained(path, tokenizer=tiny_tokenizer() if tokenizer else None)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return make_checkpoint(root / "a", seed=1), make_checkpoint(root / "b", seed=2)


def test_float32_export_gives_the_spiel_models_logits(tmp_path, ckpts):
    out = export(ckpts[0], tmp_path / "out", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert type(plain).__name__ == "LlamaForCausalLM" and plain.dtype == torch.float32
    unmerged = SpielModel.from_pretrained(tiny_model(), ckpts[0])  # deltas applied on the fly
    expected = _logits(unmerged)
    assert not torch.allclose(expected, _logits(tiny_model()), atol=1e-2)  # the delta matters
    torch.testing.assert_close(_logits(plain), expected, rtol=1e-5, atol=1e-5)
    # the weights are exactly base + scatter(delta)
    base = tiny_model().state_dict()
    state = plain.state_dict()
    for name, layer in unmerged.deltas.items():
        dense = base[f"{name}.weight"].clone().view(-1)
        dense[layer.indices] += layer.values.detach()
        assert torch.equal(state[f"{name}.weight"].view(-1), dense)
    info = json.loads((out / "spiel_export.json").read_text())
    assert info["kind"] == "spiel" and info["dtype"] == "float32"
    assert not (tmp_path / "out.partial").exists()


def test_bfloat16_export_is_the_float32_merge_rounded_once(tmp_path, ckpts):
    out = export(ckpts[0], tmp_path / "out")  # dtype bfloat16 by default
    plain = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert plain.dtype == torch.bfloat16
    reference = SpielModel.from_pretrained(tiny_model(), ckpts[0]).merge_and_unload().to(torch.bfloat16)
    for (name, a), (_, b) in zip(plain.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_composed_export_is_the_sum_of_the_deltas(tmp_path, ckpts):
    out = export([str(c) for c in ckpts], tmp_path / "out", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(plain), _logits(compose(ckpts, tiny_model())), rtol=0, atol=0)
    assert json.loads((out / "spiel_export.json").read_text())["kind"] == "composed"


def test_exported_tokenizer_renders_the_training_ids(tmp_path, ckpts):
    out = export(ckpts[0], tmp_path / "out", dtype="float32")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == jinja_chat_template(bos=True)
    for line in (DEMO_DIR / "heldout.jsonl").read_text().splitlines()[:30]:
        messages = json.loads(line)["messages"]
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert ids == encode_messages(messages, tiny_tokenizer(), max_seq_len=2048)["input_ids"]


def test_nf4_is_refused_before_loading(tmp_path, ckpts, monkeypatch):
    import spiel.eval.loader

    monkeypatch.setattr(spiel.eval.loader, "load_for_eval", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ExportError, match="quant=nf4: merging into a 4-bit base would requantize"):
        export(ckpts[0], tmp_path / "out", quant="nf4")
    assert not (tmp_path / "out").exists()


def test_prequantized_base_is_refused(tmp_path, ckpts):
    base = tmp_path / "base4bit"
    base.mkdir()
    config = json.loads((TINY_MODEL_DIR / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="stored quantized .bitsandbytes.*full-precision weights"):
        export(ckpts[0], tmp_path / "out", model_name=str(base))


def test_loaded_4bit_weights_are_refused(tmp_path, ckpts, monkeypatch):
    import spiel.eval.loader

    model = tiny_model()
    model.model.layers[0].mlp.up_proj.weight.quant_state = object()  # what a bitsandbytes Params4bit carries
    monkeypatch.setattr(
        spiel.eval.loader,
        "load_for_eval",
        lambda *a, **k: spiel.eval.loader.LoadedModel(model, tiny_tokenizer(), {}),
    )
    with pytest.raises(ExportError, match="holds 4-bit weights .*up_proj"):
        export(ckpts[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_and_bad_settings_are_refused(tmp_path, ckpts):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty.*overwrite=true"):
        export(ckpts[0], tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="dtype: must be one of"):
        export(ckpts[0], tmp_path / "new", dtype="auto")
    with pytest.raises(ExportError, match="ckpt: nothing to export"):
        export(None, tmp_path / "new")
    with pytest.raises(ExportError, match="out: where to write"):
        export(ckpts[0], None)
    out = export(ckpts[0], tmp_path / "out", dtype="float32", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_tokenizer_without_a_faithful_template_is_refused(tmp_path, ckpts, monkeypatch):
    from spiel.data import chat_template

    monkeypatch.setattr(chat_template, "template_mismatch", lambda tok: "ids differ")
    with pytest.raises(chat_template.ChatTemplateError, match="ids differ"):
        export(ckpts[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cli(args, monkeypatch):
    from spiel.cli.export import main

    monkeypatch.setattr(sys, "argv", ["spiel-export", *args])
    try:
        main()
        return 0
    except SystemExit as e:
        return int(e.code or 0)


def test_cli(tmp_path, ckpts, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _cli([f"ckpt={ckpts[0]}", "out=exported", "dtype=float32"], monkeypatch) == 0
    assert "exported: exported" in capsys.readouterr().out
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(tmp_path / "exported")),
        _logits(SpielModel.from_pretrained(tiny_model(), ckpts[0])),
        rtol=1e-5,
        atol=1e-5,
    )
    assert _cli([f"ckpt={ckpts[0]}", "out=other", "quant=nf4"], monkeypatch) == 2
    assert "spiel-export: ExportError: quant=nf4" in capsys.readouterr().err


@pytest.mark.slow
def test_spiel_train_final_tokenizer_carries_the_template_and_exports(tmp_path):
    import shutil

    from tests.helpers.runs import SMALL, SPIEL_FAST, only_run_dir, run_cli

    base = tmp_path / "base"  # the tiny base with another chat template (as LLaMA-2-chat's would be)
    shutil.copytree(TINY_MODEL_DIR, base)
    (base / "chat_template.jinja").write_text(
        "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    )
    assert (
        run_cli(
            [
                f"output_root={tmp_path / 'runs'}",
                "model=hf",
                f"model.name_or_path={base}",
                *SMALL,
                *SPIEL_FAST,
            ]
        )
        == 0
    )
    final = only_run_dir(tmp_path / "runs") / "final"
    assert AutoTokenizer.from_pretrained(final).chat_template == jinja_chat_template(bos=True)
    out = export(final, tmp_path / "exported", dtype="float32")
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out)),
        _logits(SpielModel.from_pretrained(tiny_model(), final)),
        rtol=1e-5,
        atol=1e-5,
    )


OWN_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_checkpoint_trained_in_the_models_own_template_exports_that_template(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = OWN_TEMPLATE
    model = get_spiel_model(tiny_model(), SpielConfig(method="ag", rank_equiv=4, seed=3))
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tok)
    out = export(tmp_path / "ckpt", tmp_path / "out", dtype="float32")
    assert AutoTokenizer.from_pretrained(out).chat_template == OWN_TEMPLATE  # was replaced by the Tülu one
    assert json.loads((out / "spiel_export.json").read_text())["chat_template"] == "model"


@pytest.mark.slow
def test_spiel_train_with_the_models_own_template_keeps_it_through_export(tmp_path):
    import shutil

    from tests.helpers.runs import SMALL, SPIEL_FAST, only_run_dir, run_cli

    base = tmp_path / "base"
    shutil.copytree(TINY_MODEL_DIR, base)
    (base / "chat_template.jinja").write_text(OWN_TEMPLATE)
    assert (
        run_cli(
            [
                f"output_root={tmp_path / 'runs'}",
                "model=hf",
                f"model.name_or_path={base}",
                "data.template=model",
                *SMALL,
                *SPIEL_FAST,
            ]
        )
        == 0
    )
    final = only_run_dir(tmp_path / "runs") / "final"
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template == OWN_TEMPLATE
    assert "template: model" in (final.parent / "config.yaml").read_text()
    out = export(final, tmp_path / "exported", dtype="float32")
    assert AutoTokenizer.from_pretrained(out).chat_template == OWN_TEMPLATE
    assert json.loads((out / "spiel_export.json").read_text())["chat_template"] == "model"


def test_peft_adapter_export_is_the_merged_adapter(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = get_peft_model(
        tiny_model(), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer().save_pretrained(tmp_path / "adapter")
    out = export(tmp_path / "adapter", tmp_path / "out", dtype="float32")
    expected = _logits(PeftModel.from_pretrained(tiny_model(), tmp_path / "adapter"))
    assert not torch.allclose(expected, _logits(tiny_model()), atol=1e-3)
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out)), expected, rtol=1e-5, atol=1e-5
    )
    assert json.loads((out / "spiel_export.json").read_text())["kind"] == "peft"
    assert AutoTokenizer.from_pretrained(out).chat_template == jinja_chat_template(bos=True)


@pytest.mark.slow
def test_delta_trained_on_an_nf4_base_exports_merged_into_the_full_precision_base(tmp_path):
    """The way out the NF4 refusal points to: quant=none merges a qSpIEL delta into the full-precision base."""
    from spiel.io.base_model import load_base_model

    nf4_base = load_base_model(str(TINY_MODEL_DIR), quant="nf4", device="cpu")
    model = get_spiel_model(nf4_base, SpielConfig(method="ag", rank_equiv=4, delta_dtype="bfloat16"))
    for layer in model.deltas.values():
        layer.values.data = (
            0.05 * torch.randn(layer.values.shape, generator=torch.Generator().manual_seed(3))
        ).to(layer.values.dtype)
    model.save_pretrained(tmp_path / "qspiel", tokenizer=tiny_tokenizer())
    with pytest.raises(ExportError, match="quant=nf4"):
        export(tmp_path / "qspiel", tmp_path / "refused", quant="nf4")
    out = export(tmp_path / "qspiel", tmp_path / "out", dtype="float32")
    expected = _logits(SpielModel.from_pretrained(tiny_model(), tmp_path / "qspiel"))
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out)), expected, rtol=1e-5, atol=1e-5
    )


def test_a_directory_named_like_a_staging_directory_is_never_touched(tmp_path, ckpts):
    """The export used to stage in out.partial and delete whatever was there first."""
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "mine.txt").write_text("mine")
    export(ckpts[0], tmp_path / "out", dtype="float32")
    assert (tmp_path / "out.partial" / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.partial"]  # no staging left behind


@pytest.mark.parametrize(
    "out_of", [lambda c: c, lambda c: c.parent, lambda c: c / "inside", lambda c: TINY_MODEL_DIR]
)
def test_an_out_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path, out_of):
    run = tmp_path / "run"
    final = make_checkpoint(run / "final", seed=3)
    (run / "metrics.jsonl").write_text("{}\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = out_of(final)
    with pytest.raises(
        ExportError, match=r"out=.* (is|contains|lies inside) the input .*outside every input"
    ):
        export(final, out, dtype="float32", overwrite=True, model_name=str(TINY_MODEL_DIR))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (TINY_MODEL_DIR / "model.safetensors").is_file()


def test_a_kill_while_the_old_export_is_deleted_leaves_the_new_export_whole(tmp_path, ckpts, monkeypatch):
    """overwrite=true: the old export is moved aside before the new one moves in, and deleted last; a
    kill while deleting leaves a complete `out` (the new one), never a half-deleted one."""
    import spiel.cli.export as export_cli

    out = export(ckpts[0], tmp_path / "out", dtype="float32")
    files = sorted(p.name for p in out.iterdir())
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        if "replaced" in str(path) or Path(path) == out:  # the old export: one file goes, then the kill
            sorted(Path(path).iterdir())[0].unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(export_cli.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        export([str(c) for c in ckpts], out, dtype="float32", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == files
    assert json.loads((out / "spiel_export.json").read_text())["kind"] == "composed"  # the new one
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(out)),
        _logits(compose(ckpts, tiny_model())),
        rtol=0,
        atol=0,
    )


def test_a_failed_move_in_puts_the_old_export_back(tmp_path, ckpts, monkeypatch):
    import spiel.cli.export as export_cli

    out = export(ckpts[0], tmp_path / "out", dtype="float32")
    real_rename = os.rename

    def refused(src, dst):
        if Path(dst) == out and ".export-" in str(src):  # moving the new export in
            raise OSError(errno.EIO, "input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(export_cli.os, "rename", refused)
    with pytest.raises(ExportError, match="cannot write the export to .*out"):
        export([str(c) for c in ckpts], out, dtype="float32", overwrite=True)
    assert json.loads((out / "spiel_export.json").read_text())["kind"] == "spiel"  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_read_only_target_is_one_message(tmp_path, ckpts, monkeypatch, capsys):
    import spiel.cli.export as export_cli

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(export_cli.tempfile, "mkdtemp", read_only)
    assert _cli([f"ckpt={ckpts[0]}", f"out={tmp_path / 'out'}"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "cannot write the export to" in err and "read-only file system" in err and "Traceback" not in err


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize(
    "damage,shown",
    [
        (
            lambda d: _truncate(d / "spiel_delta.safetensors"),
            "InvalidCheckpointError: .*spiel_delta.safetensors: the file is damaged",
        ),
        (
            lambda d: (d / "spiel_config.json").write_text("{not json"),
            "InvalidCheckpointError: .*spiel_config.json: not valid JSON",
        ),
        (None, "CheckpointError: ckpt=.*full: cannot load this full model directory, its files are damaged"),
    ],
)
def test_a_damaged_checkpoint_is_one_message(tmp_path, ckpts, monkeypatch, capsys, damage, shown):
    import re

    if damage is None:  # a full model directory with a truncated weights file
        ckpt = shutil.copytree(TINY_MODEL_DIR, tmp_path / "full")
        _truncate(ckpt / "model.safetensors")
    else:
        ckpt = shutil.copytree(ckpts[0], tmp_path / "ckpt")
        damage(ckpt)
    assert _cli([f"ckpt={ckpt}", f"out={tmp_path / 'out'}"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert re.search(shown, err) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_scalar_ckpt_weights_are_one_message(tmp_path, ckpts, monkeypatch, capsys):
    assert _cli([f"ckpt={ckpts[0]}", "ckpt_weights=0.5", f"out={tmp_path / 'out'}"], monkeypatch) == 2
    err = capsys.readouterr().err
    assert (
        "ckpt_weights=0.5: weights must be a list with one number per checkpoint" in err
        and "write [0.5]" in err
    )
