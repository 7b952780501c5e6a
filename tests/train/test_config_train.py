"""The training config tree: every combination composes, the paper's experiments carry the paper's
values, and invalid values are rejected — naming the key — before any model or tokenizer is loaded."""

import itertools
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spiel.paths import CONFIG_DIR
from spiel.training.config.hydra_config import ConfigError, dirname_from_overrides, validate
from tests.helpers.paths import REPO
from tests.helpers.runs import run_cli, subprocess_env


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def make(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name="train", overrides=list(overrides))


def test_groups_hold_what_the_issue_lists():
    assert {"llama2-7b", "llama2-13b", "tiny"} <= set(options("model"))
    assert {"tulu2", "flan_v2", "gpt4_alpaca", "demo"} <= set(options("data"))
    assert options("method") == ["ag", "full", "ia3", "lora", "ma"]
    assert options("quant") == ["nf4", "none"]
    assert options("logger") == ["none", "tensorboard", "wandb"]
    assert {"local", "slurm"} <= set(options("hydra/launcher"))
    assert {f"paper_{s}_{m}" for s in ("7b", "13b") for m in ("ag", "ma", "lora", "ia3", "full")} <= set(
        options("experiment")
    )


def test_defaults_are_the_demo():
    s = validate(make())
    assert (s.cfg.model["name_or_path"], s.cfg.data["name"], s.method.name, s.quant) == (
        "tiny",
        "demo",
        "ag",
        "none",
    )
    # the tiny model's presets: λ/10; per method the paper's budget (rank 4 = 2.47% here) and a picked rate
    assert s.method.lr == 1e-2 and s.method.weight_decay == 0.3 and s.method.rank_equiv == 4
    assert s.method.adam_seeding == "none"  # the shipped AG default (docs/quality.md)
    lora = validate(make("method=lora"))
    assert lora.method.r == 4 and lora.method.lr == 3e-3
    assert validate(make("method.lr=1e-3")).method.lr == 1e-3  # the command line still wins
    big = validate(make("model=llama2-7b"))
    assert (
        big.method.lr == 1e-4 and big.method.rank_equiv is None
    )  # the method's own defaults (budget: rank 64)
    assert (
        big.method.weight_decay == 30.0 and validate(make("method=ma", "model=llama2-7b")).method.lr == 1e-3
    )


@pytest.mark.slow
def test_every_model_data_method_quant_combination_composes():
    combos = itertools.product(options("model"), options("data"), options("method"), options("quant"))
    checked = 0
    for model, data, method, quant in combos:
        cfg = make(f"model={model}", f"data={data}", f"method={method}", f"quant={quant}")
        assert cfg.method.name == method and cfg.quant.name == quant
        if (
            model in ("from_ckpt", "hf") or data == "own" or (quant == "nf4" and method == "full")
        ):  # paths to give
            with pytest.raises(ConfigError):
                validate(cfg)
        else:
            s = validate(cfg)
            assert s.grad_accum * s.cfg.micro_batch_size == s.cfg.batch_size
            checked += 1
    assert checked >= 3 * 4 * 5 * 2 - 3 * 4


def test_cfg_job_from_the_command_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spiel.cli.train",
            "model=llama2-13b",
            "method=lora",
            "quant=nf4",
            "--cfg",
            "job",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "name_or_path: meta-llama/Llama-2-13b-hf" in out.stdout and "r: 64" in out.stdout
    assert not list(tmp_path.iterdir())  # --cfg writes nothing


@pytest.mark.parametrize(
    "size,method,lr,extra",
    [
        ("7b", "ag", 1e-4, {"rank_equiv": 64, "weight_decay": 30.0}),
        ("13b", "ag", 1e-5, {"rank_equiv": 64, "weight_decay": 30.0}),
        ("7b", "ma", 1e-3, {"rank_equiv": 64, "weight_decay": 0.3}),
        ("13b", "ma", 4e-4, {"rank_equiv": 64, "weight_decay": 0.0}),
        ("7b", "lora", 1e-4, {"r": 64, "alpha": 16.0, "dropout": 0.1}),
        ("13b", "lora", 3e-5, {"r": 64}),
        ("7b", "ia3", 3e-4, {}),
        ("13b", "ia3", 1e-4, {}),
        ("7b", "full", 2e-5, {}),
    ],
)
def test_paper_experiments(size, method, lr, extra):
    s = validate(make(f"experiment=paper_{size}_{method}"))
    c = s.cfg
    assert c.model["name_or_path"] == f"meta-llama/Llama-2-{size}-hf" and s.dtype == "bfloat16"
    assert s.method.name == method and s.method.lr == lr
    for key, value in extra.items():
        assert getattr(s.method, key) == value, key
    assert (c.batch_size, c.epochs, c.max_seq_len, c.warmup_ratio, c.lr_scheduler) == (
        128,
        2,
        2048,
        0.03,
        "linear",
    )
    if method in ("ag", "ma"):
        m = s.method
        assert (m.reselection_steps, m.estimation_steps, m.initial_rate) == (20, 5, 0.2)
        assert m.spiel_config().delta_dtype == "float32"  # fp32 deltas on a bf16 base
        assert m.spiel_config(quantized=True).delta_dtype == "bfloat16"
    # a user's override still wins over the experiment
    assert validate(make(f"experiment=paper_{size}_{method}", "method.lr=3e-6")).method.lr == 3e-6


def test_model_specific_training_defaults_follow_the_final_model_choice():
    assert make().batch_size == 16  # model_train/tiny.yaml
    assert make("model=llama2-7b").batch_size == 128
    assert make("experiment=paper_7b_ag").save_steps == 200  # tiny's preset does not leak in


# configs/debug/smoke.yaml written out as command-line overrides (what the tests passed before the preset).
SMOKE = [
    "max_steps=3",
    "batch_size=4",
    "micro_batch_size=2",
    "max_seq_len=64",
    "data.sources.0.cap=48",
    "save_steps=2",
    "logging_steps=1",
    "progress_bar=false",
    "device=cpu",
]


@pytest.mark.parametrize(
    "others", [[], ["method=lora"], ["model=llama2-7b", "method=ma"], ["experiment=paper_7b_ag"]]
)
def test_debug_smoke_sets_exactly_the_smoke_overrides(others):
    def plain(cfg):
        return OmegaConf.to_container(cfg, resolve=True)

    smoke = plain(make(*others, "debug=smoke"))
    assert smoke == plain(make(*others, *SMOKE))  # after an experiment too: the preset wins over it
    assert smoke != plain(make(*others))
    assert validate(make(*others, "debug=smoke")).cfg.max_steps == 3


def test_debug_smoke_yields_to_later_overrides_data_and_a_search():
    cfg = make("debug=smoke", "max_steps=9", "device=auto")
    assert (cfg.max_steps, cfg.device, cfg.batch_size) == (9, "auto", 4)
    assert make("debug=smoke", "data=tulu2").data == make("data=tulu2").data  # not the demo slice
    search = make("debug=smoke", "hparams_search=demo")
    assert (search.save_steps, search.eval_fraction, search.max_steps) == (
        0,
        0.1,
        3,
    )  # the search's own settings


@pytest.mark.parametrize("launcher,target", [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers(launcher, target):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.tasks_per_node == 1


def test_run_dir_names_are_usable_as_override_values():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert dirname_from_overrides("") == "default"
    assert dirname_from_overrides("lr-1e-05+method-lora") == "lr-1e-05+method-lora"
    assert dirname_from_overrides("method-lora", "mine") == "mine"
    odd = dirname_from_overrides("data.sources.0.path-/x/y=z.jsonl+method.target_modules-[q_proj,v_proj]")
    assert "/" not in odd
    parsed = OverridesParser.create().parse_override(f"resume=outputs/train/{odd}/checkpoint-4")
    assert parsed.value() == f"outputs/train/{odd}/checkpoint-4"
    hc = make("method=lora", "method.lr=3e-5", "resume=auto", "logger=wandb")  # noqa: F841 (composes)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="train",
            overrides=["method=lora", "method.lr=3e-5", "resume=auto", "logger=wandb"],
            return_hydra_config=True,
        )
    assert cfg.hydra.job.config.override_dirname.kv_sep == "-"


BAD = [
    (["method.rank_equiv=null", "method.density=-0.1"], "method.density"),
    (["method.rank_equiv=8", "method.density=0.1"], "rank_equiv"),
    (["method.estimation_steps=20"], "method.estimation_steps"),  # γ = R
    (["method.reselection_steps=5", "method.estimation_steps=7"], "method.estimation_steps"),
    (["method.schedule=exponential"], "method.schedule"),
    (["method=foo"], "method/foo"),
    (["method.name=foo"], "method.name"),
    (["method=lora", "method.dropout=1.5"], "method.dropout"),
    (["method=lora", "method.rank_equiv=8"], "method.rank_equiv"),  # not a LoRA key
    (["method=full", "quant=nf4"], "quant"),
    (["seed=abc"], "seed"),
    (["method.lr=-1"], "method.lr: must be >= 0, got -1"),
    (["method=lora", "method.weight_decay=-1"], "method.weight_decay: must be >= 0"),
    (
        ["lr=0.001"],
        "lr: moved to method.lr (one key; each method file sets the paper's value as its default): "
        "write method.lr=0.001 instead of lr=0.001",
    ),
    (["weight_decay=0.1"], "weight_decay: moved to method.weight_decay"),
    (["batch_size=10", "micro_batch_size=4"], "batch_size"),
    (["quant.name=int3"], "quant.name"),
    (["logger.mode=sometimes"], "logger.mode"),
    (["model.name_or_path=null"], "model.name_or_path"),
    (["resume=/no/such/checkpoint-7"], "resume"),
    (["data.on_bad_record=explode"], "data"),
    (["method.lr=inf"], "method.lr: must be a finite number, got inf"),
    (["method.weight_decay=nan"], "method.weight_decay: must be a finite number"),
    (["method.initial_rate=-inf"], "method.initial_rate: must be a finite number"),
    (["warmup_ratio=nan"], "warmup_ratio: must be a finite number"),
    (["+lerning_rate=0.1"], "lerning_rate: not a known key"),
    (["+method.lerning_rate=0.1"], "method.lerning_rate: not a known key"),
    (["+data.foo=1"], "data.foo"),
    (["+data.sead=1"], "did you mean data.seed?"),
    (["+model.trust_remote_code=true"], "model.trust_remote_code: not a known key"),
    (
        ["model=hf", "model.name_or_path=/no/such/model"],
        "model.name_or_path: no model directory at /no/such/model",
    ),
    (
        ["model=hf", "model.name_or_path=meta-llama/no-such-model"],
        "model.name_or_path: 'meta-llama/no-such-model' is neither",
    ),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_invalid_config_is_rejected_before_anything_loads(tmp_path, monkeypatch, capsys, overrides, key):
    import spiel.io.base_model

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the config was validated")

    monkeypatch.setattr(spiel.io.base_model, "load_base_model", forbidden)
    monkeypatch.setattr(spiel.io.base_model, "load_tokenizer", forbidden)
    code = run_cli([f"output_root={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert code != 0  # 2 from spiel's checks, 1 from Hydra's own (types, unknown groups and keys)
    assert "was loaded before" not in err
    assert key in err, err
    assert "Traceback" not in err  # one message, not a stack
    assert not any(tmp_path.iterdir())  # refused before Hydra made a run dir


@pytest.mark.slow
def test_wheel_install_has_the_whole_config_tree_and_composes_from_it(tmp_path):
    """Build a wheel from a copy of the tree, install it into a fresh venv and compose from there, in
    another working directory. The installed tree must be file-for-file the repository's configs/ (so
    the full product composed above composes the same from the wheel); every option of every group,
    every experiment and both launchers are composed from the wheel, and `spiel-train --cfg job` runs."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "configs", src / "configs")
    shutil.copytree(
        REPO / "spiel", src / "spiel", symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    env = subprocess_env()
    env.pop("PYTHONPATH")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The dependencies come from the environment running this test (a `make setup` venv, not the base
    # interpreter): its site-packages directories are appended to the new venv's path. A .pth line only
    # adds a directory; the .pth files inside it (the editable install of this checkout) are not run,
    # so `spiel` can only come from the wheel.
    new_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(new_site) / "spiel_test_deps.pth").write_text("".join(f"{d}\n" for d in ours))
    wheel = next(wheels.glob("spiel-*.whl"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        env=env,
        timeout=300,
    )
    script = tmp_path / "compose_from_wheel.py"
    script.write_text(COMPOSE_FROM_WHEEL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [str(python), str(script)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["config_dir"]).is_relative_to(venv)
    repo_files = {str(p.relative_to(CONFIG_DIR)): p.read_bytes() for p in CONFIG_DIR.rglob("*.yaml")}
    assert result["files"] == {name: data.decode() for name, data in repo_files.items()}
    assert result["composed"] >= 16 + 10 + 2
    cli = subprocess.run(
        [str(venv / "bin" / "spiel-train"), "experiment=paper_13b_ma", "--cfg", "job"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "lr: 0.0004" in cli.stdout and "name_or_path: meta-llama/Llama-2-13b-hf" in cli.stdout


COMPOSE_FROM_WHEEL = """
import json
import spiel.training.config.hydra_config  # registers the schemas
from spiel.paths import CONFIG_DIR
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
d = CONFIG_DIR
files = {str(p.relative_to(d)): p.read_text() for p in d.rglob("*.yaml")}
n = 0
with initialize_config_dir(version_base="1.3", config_dir=str(d)):
    for group in ("model", "data", "method", "quant", "logger", "experiment", "debug"):
        for option in sorted(p.stem for p in (d / group).glob("*.yaml")):
            cfg = compose(config_name="train", overrides=[f"{group}={option}"])
            if group in ("method", "quant", "logger"):
                assert cfg[group].name == option
            n += 1
    for launcher in ("local", "slurm"):
        cfg = compose(config_name="train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_
        n += 1
print(json.dumps({"config_dir": str(d), "files": files, "composed": n}))
"""


def test_smollm2_presets_set_the_paper_budget_and_the_study_rates():
    """model=smollm2-135m picks its training and per-method presets (rank 9 = the paper's 2.47% density)."""
    assert make("model=smollm2-135m").model.name_or_path == "smollm2-135m"
    assert make("model=smollm2-135m").model.dtype == "float32"
    assert make("model=smollm2-135m").batch_size == 8
    for method, key in (("ag", "rank_equiv"), ("ma", "rank_equiv"), ("lora", "r")):
        assert make("model=smollm2-135m", f"method={method}").method[key] == 9
    assert make("model=smollm2-135m", "method=ag").method.lr == 1.7e-3
    assert make("model=smollm2-135m", "method=ag", "method.lr=1e-4").method.lr == 1e-4  # the user still wins
