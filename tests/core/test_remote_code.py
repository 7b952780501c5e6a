"""No code that came with a model or checkpoint ever runs: every transformers load passes
trust_remote_code=False, and a config or tokenizer config with an ``auto_map`` is refused by name before
anything loads (spiel-train, spiel-eval, spiel-export and the library alike)."""

from __future__ import annotations

import ast
import json
import shutil
import sys

import pytest

from spiel import SpielConfig, get_spiel_model
from spiel.io.base_model import RemoteCodeError, build_meta_model, load_base_model, load_tokenizer
from spiel.testing import TINY_MODEL_DIR, tiny_model, tiny_tokenizer
from tests.helpers.paths import REPO
from tests.helpers.runs import run_cli

# What the checkpoint's own Python would do if it ran: leave a mark.
EVIL = "import pathlib\npathlib.Path({mark!r}).write_text('ran')\n"


def _with_auto_map(directory, file: str, mark):
    (directory / "evil.py").write_text(EVIL.format(mark=str(mark)))
    data = json.loads((directory / file).read_text())
    data["auto_map"] = (
        {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        if file == "tokenizer_config.json"
        else {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    )
    (directory / file).write_text(json.dumps(data))
    return directory


@pytest.fixture
def tiny_copy(tmp_path):
    return shutil.copytree(TINY_MODEL_DIR, tmp_path / "model")


@pytest.mark.parametrize("file", ["tokenizer_config.json", "config.json"])
def test_a_model_with_an_auto_map_is_refused_by_every_loader(tiny_copy, tmp_path, file):
    _with_auto_map(tiny_copy, file, tmp_path / "mark")
    for load in (load_tokenizer, load_base_model, build_meta_model):
        with pytest.raises(RemoteCodeError, match=f"{file} has an auto_map .*trust_remote_code=False"):
            load(str(tiny_copy))
    assert not (tmp_path / "mark").exists()


def test_a_checkpoint_whose_tokenizer_has_an_auto_map_is_refused_by_spiel_eval(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "ckpt"
    get_spiel_model(tiny_model(), SpielConfig(method="ag", rank_equiv=4)).save_pretrained(
        ckpt, tokenizer=tiny_tokenizer()
    )
    _with_auto_map(ckpt, "tokenizer_config.json", tmp_path / "mark")
    from spiel.cli.eval import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "spiel-eval",
            f"ckpt={ckpt}",
            "bench=demo",
            "eval.limit=2",
            f"hydra.run.dir={tmp_path / 'run'}",
            "eval.device=cpu",
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert (
        exit_.value.code == 2 and "RemoteCodeError" in err and "tokenizer_config.json has an auto_map" in err
    )
    assert "Traceback" not in err and not (tmp_path / "mark").exists()


def test_spiel_train_refuses_a_base_with_an_auto_map_before_its_run_dir_exists(tiny_copy, tmp_path, capsys):
    _with_auto_map(tiny_copy, "config.json", tmp_path / "mark")
    out = tmp_path / "out"
    code = run_cli([f"output_root={out}", "model=hf", f"model.name_or_path={tiny_copy}", "debug=smoke"])
    err = capsys.readouterr().err
    assert code == 2 and "model.name_or_path" in err and "config.json has an auto_map" in err, err
    assert not out.exists() and not (tmp_path / "mark").exists()


def _from_pretrained_calls(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "from_pretrained"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id.startswith(("Auto", "Llama"))
        ):
            yield node


def test_every_transformers_load_passes_trust_remote_code_false():
    calls = 0
    for path in sorted([*(REPO / "spiel").rglob("*.py"), *(REPO / "scripts").glob("*.py")]):
        for call in _from_pretrained_calls(path):
            calls += 1
            flags = [k.value for k in call.keywords if k.arg == "trust_remote_code"]
            assert len(flags) == 1 and isinstance(flags[0], ast.Constant) and flags[0].value is False, (
                f"{path.relative_to(REPO)}:{call.lineno} loads without trust_remote_code=False"
            )
    assert calls >= 6  # the loaders in spiel.io.base_model, spiel.testing, the planner, the scripts
