"""Smoke tests of the benchmark scripts (bench_step, bench_quality) with tiny settings: the JSON shape,
sane values, and that the CUDA path of bench_step imports nothing the GPU box lacks."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spiel.bench.models import (
    CPU_DEFAULT,
    LLAMA2_7B,
    LlamaShape,
    equivalent_rank,
    method_config,
    paper_density,
    paper_hparams,
)
from spiel.bench.quality import pick
from spiel.bench.report import ratios
from spiel.bench.step import StepSpec, run
from tests.helpers.paths import REPO

TINY = LlamaShape(hidden=64, intermediate=160, layers=1, heads=2, kv_heads=2, vocab=64)


def test_budget_is_the_papers_density():
    assert paper_density() == pytest.approx(0.02469, abs=1e-4)  # LoRA r=64 on LLaMA-2-7B's projections
    assert equivalent_rank(LLAMA2_7B) == 64
    assert equivalent_rank(CPU_DEFAULT) == 16  # the "on hidden 1024 that is rank 16"
    shape = LlamaShape(hidden=256, intermediate=688, layers=4, heads=8, kv_heads=2, vocab=263)
    r = equivalent_rank(shape)
    assert abs(r * shape.lora_params_per_rank() / shape.target_numel() - paper_density()) < 0.004


def test_method_configs_are_the_training_schemas_and_need_no_hydra():
    """The benchmarks train with spiel-train's own method schemas (no look-alike twins): they import with
    hydra and omegaconf unavailable, as on the CUDA box, and carry the method file's paper rates."""
    code = textwrap.dedent("""
        import sys
        sys.modules.update(hydra=None, omegaconf=None)  # any import of them fails
        from spiel.bench.models import METHOD_NAMES, method_config, paper_hparams
        from spiel.training.config import schema
        kinds = {"ag": schema.SpielMethodConfig, "ma": schema.SpielMethodConfig, "lora": schema.LoraMethodConfig,
                 "ia3": schema.IA3MethodConfig, "full": schema.FullMethodConfig}
        for name in METHOD_NAMES:
            m = method_config(name, 8)
            assert type(m) is kinds[name] and (m.lr, m.weight_decay) == paper_hparams(name), name
        spiel = method_config("ma", 8, estimation_steps=2).spiel_config(seed=3, quantized=True)
        assert (spiel.method, spiel.rank_equiv, spiel.estimation_steps, spiel.seed, spiel.delta_dtype) == (
            "ma", 8, 2, 3, "bfloat16")
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf") and sys.modules[m]))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok []", out.stdout + out.stderr
    assert paper_hparams("ag") == (1e-4, 30.0) and paper_hparams("ma") == (1e-3, 0.3)  # the paper's Table 4


@pytest.mark.parametrize("method", ["floor", "full", "ia3", "ag", "ma"])
def test_step_run_reports_sane_numbers(method):
    spec = StepSpec(
        method=method,
        shape=TINY.to_dict(),
        seq=16,
        reselection_steps=3,
        estimation_steps=1,
        warmup=1,
        periods=1,
        threads=1,
    )
    result = run(spec)
    assert len(result["step_s"]) == 3
    assert 0 < result["step_s_median"] < 10 and 0 < result["step_s_mean"] < 10
    assert result["extra_mem_mb"] >= 0 and result["base_mem_mb"] > 0
    assert torch.isfinite(torch.tensor(result["final_loss"]))
    if method in ("ag", "ma"):  # rank-equivalent budget, floored per tensor (7 tensors)
        assert 0 <= equivalent_rank(TINY) * TINY.lora_params_per_rank() - result["trainable"] < 7
    elif method == "floor":
        assert result["trainable"] == 0
    else:
        assert result["trainable"] > 0


def test_static_baseline_keeps_its_random_indices_and_ag_moves_them():
    from spiel.bench.quality import QualityJob, encode, train
    from spiel.eval.demo import load_demo
    from spiel.testing import DEMO_DIR, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    examples = encode(load_demo(DEMO_DIR / "train.jsonl", limit=16), tok)
    indices = {}
    for method in ("static", "ag"):
        job = QualityJob(
            method=method,
            lr=1e-3,
            weight_decay=3.0,
            steps=6,
            batch_size=4,
            rank=2,
            seed=0,
            train=examples,
            val_records=[],
            heldout_path="",
        )
        model, stats = train(job, tiny_model(), tok)
        indices[method] = {n: layer.indices.clone() for n, layer in model.deltas.items()}
        assert stats["trainable"] == model.num_tunable()
    from spiel.model.spiel_model import get_spiel_model

    fresh = get_spiel_model(tiny_model(), method_config("ag", 2).spiel_config(seed=0))
    assert all(torch.equal(fresh.deltas[n].indices, idx) for n, idx in indices["static"].items())
    assert not all(torch.equal(fresh.deltas[n].indices, idx) for n, idx in indices["ag"].items())


def test_ratios_use_the_lora_of_the_same_quantization():
    m = {
        k: {"step_s_median": t, "extra_mem_mb": mem}
        for k, t, mem in [
            ("floor", 1.0, 10),
            ("lora", 2.0, 40),
            ("ag", 2.2, 30),
            ("lora-nf4", 4.0, 20),
            ("ag-nf4", 3.0, 10),
            ("floor-nf4", 2.0, 5),
        ]
    }
    r = ratios(m)
    assert r["lora"]["time"] == 1.0 and r["ag"]["time"] == pytest.approx(1.1) and r["ag"]["mem"] == 0.75
    assert r["ag-nf4"]["time"] == 0.75 and r["ag-nf4"]["time_floor"] == 1.5 and r["ag"]["time_floor"] == 2.2


def _bench_step_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_step_script", REPO / "scripts" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("need,hint", [(37.3, 36), (37.3, 41), (37.3, 90), (0.4, 1), (120.2, 3)])
def test_memory_search_finds_the_smallest_whole_gib(monkeypatch, need, hint):
    bench_step = _bench_step_module()
    total = 139
    calls = []

    def fake_worker(spec, tmp, tag):
        calls.append(spec.memory_fraction)
        assert spec.steps == 30 and spec.warmup == 0
        return (0 if spec.memory_fraction * total >= need else bench_step.OOM_EXIT), None, ""

    monkeypatch.setattr(bench_step, "run_worker", fake_worker)
    found = bench_step.memory_search(StepSpec(method="ag", device="cuda"), "/tmp", hint, total)
    assert found["min_gib"] == math.ceil(need)
    assert len(calls) == len(set(calls)) <= 2 * math.log2(total) + 2  # each limit once, O(log) trials


def test_memory_search_reports_a_method_that_never_fits(monkeypatch):
    bench_step = _bench_step_module()
    monkeypatch.setattr(bench_step, "run_worker", lambda spec, tmp, tag: (bench_step.OOM_EXIT, None, ""))
    assert (
        bench_step.memory_search(StepSpec(method="full", device="cuda"), "/tmp", 100, 139)["min_gib"] is None
    )


def _fake_step_result(step_s: float) -> dict:
    times = [step_s] * 3
    return {
        "threads": 1,
        "step_s": times,
        "step_s_median": step_s,
        "step_s_mean": step_s,
        "cpu_s": times,
        "extra_mem_mb": 10.0,
        "base_mem_mb": 100.0,
        "trainable": 5,
        "final_loss": 1.0,
        "bytes_per_entry": None,
        "reselection": None,
        "reselection_cpu": None,
    }


def test_bench_step_runs_the_baseline_methods_from_the_other_tree_interleaved(monkeypatch, tmp_path):
    bench_step = _bench_step_module()
    (tmp_path / "old" / "scripts").mkdir(parents=True)
    (tmp_path / "old" / "scripts" / "bench_step.py").write_text("")
    calls = []

    def fake_worker(spec, out_dir, tag, tree=None):
        calls.append((spec.method, tree))
        return 0, _fake_step_result(1.2 if tree else 1.0), ""

    monkeypatch.setattr(bench_step, "run_worker", fake_worker)
    out = tmp_path / "out.json"
    args = ["--quick", "--methods", "lora0,ag", "--baseline-tree", str(tmp_path / "old"), "--rounds", "2"]
    assert bench_step.main([*args, "--baseline-methods", "ag", "--json", str(out)]) == 0
    old = str(tmp_path / "old")
    assert calls == [("lora0", None), ("ag", None), ("ag", old), ("ag", None), ("ag", old), ("lora0", None)]
    result = json.loads(out.read_text())
    assert result["ratios_to_lora"]["ag@base"]["cpu_mean_lora0"] == pytest.approx(1.2)
    assert result["methods"]["ag@base"]["round_cpu_medians"] == [1.2, 1.2]


def test_bench_step_refuses_a_baseline_tree_without_the_script(tmp_path):
    bench_step = _bench_step_module()
    with pytest.raises(SystemExit, match="no scripts/bench_step.py"):
        bench_step.main(["--quick", "--methods", "ag", "--baseline-tree", str(tmp_path)])


BLOCKED = ("hydra", "omegaconf", "datasets", "bitsandbytes", "wandb")


def _site_without(blocked, root: Path) -> Path:
    """A directory that makes every site-packages entry visible except ``blocked`` packages (and their
    dist-info), plus a sitecustomize that swaps it in: the CUDA box, where those are not installed."""
    import site

    packages = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
    filtered = root / "site-packages"
    filtered.mkdir()
    for entry in packages.iterdir():
        if not entry.name.lower().startswith(blocked):
            (filtered / entry.name).symlink_to(entry)
    custom = root / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path[:] = [{str(filtered)!r} if p == {str(packages)!r} else p for p in sys.path]
    """)
    )
    return custom


def test_bench_step_cli_gpu_path_without_hydra(tmp_path):
    """`--gpu` (shapes shrunk, on CPU) through the CLI, each method in its own process, with hydra,
    omegaconf, datasets, bitsandbytes and wandb not installed, as on the CUDA box."""
    custom = _site_without(BLOCKED, tmp_path)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(custom), str(REPO)]),
        OMP_WAIT_POLICY="PASSIVE",
        OMP_NUM_THREADS="1",
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import importlib.util as u; print([m for m in {list(BLOCKED)!r} if u.find_spec(m)])",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    out, png = tmp_path / "step.json", tmp_path / "step.png"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "bench_step.py"),
        "--gpu",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--hidden",
        "64",
        "--intermediate",
        "160",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "2",
        "--vocab",
        "64",
        "--seq",
        "16",
        "--methods",
        "floor,lora,lora0,ag,ag_applied",
        "--reselection-steps",
        "2",
        "--estimation-steps",
        "1",
        "--periods",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        str(out),
        "--png",
        str(png),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert list(data["methods"]) == ["floor", "lora", "lora0", "ag", "ag_applied"]
    for name, m in data["methods"].items():
        assert m["step_s_median"] > 0 and m["step_s_mean"] > 0 and m["extra_mem_mb"] >= 0, name
        assert m["timed_steps"] == 2
    lora, lora0, ag = (data["methods"][k] for k in ("lora", "lora0", "ag"))
    assert data["ratios_to_lora"]["lora"]["time"] == 1.0 and data["ratios_to_lora"]["lora"]["mean"] == 1.0
    assert data["ratios_to_lora"]["lora"]["time_floor"] == pytest.approx(
        lora["step_s_median"] / data["methods"]["floor"]["step_s_median"]
    )
    assert data["ratios_to_lora"]["ag"]["mean_lora0"] == pytest.approx(
        ag["step_s_mean"] / lora0["step_s_mean"]
    )
    assert data["ratios_to_lora"]["ag"]["time_lora0"] == pytest.approx(
        ag["step_s_median"] / lora0["step_s_median"]
    )
    # Bytes per trainable entry: LoRA's fp32 parameter, gradient and two moments; SpIEL-AG adds an int32
    # index and an int32 growth step and keeps no per-slot Adam age; merged storage adds the fp32 base value
    # saved at each active position (off: ag_applied).
    assert lora["bytes_per_entry"]["per_entry"] == 16.0 and lora0["bytes_per_entry"]["per_entry"] == 16.0
    assert ag["bytes_per_entry"]["per_entry"] == 28.0
    assert data["methods"]["ag_applied"]["bytes_per_entry"]["per_entry"] == 24.0
    assert ag["reselection"]["extra_s_per_period"] == pytest.approx(
        ag["reselection"]["probe_s_per_period"]
        + ag["reselection"]["estimate_s_per_period"]
        + ag["reselection"]["reselect_s_per_period"]
    )
    cfg = data["config"]
    assert cfg["shape"]["hidden"] == 64 and cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["rank"] == equivalent_rank(LlamaShape(**cfg["shape"]))
    assert "load_before" in cfg and cfg["machine"]["threads"] == 1
    assert png.stat().st_size > 1000
    assert "| SpIEL-AG |" in proc.stdout


def test_bench_quality_smoke(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    monkeypatch.setattr(sys, "path", sys.path)
    import bench_quality

    out, md, png = tmp_path / "q.json", tmp_path / "q.md", tmp_path / "q.png"
    torch.set_num_threads(1)
    argv = [
        "--methods",
        "lora,ag,static",
        "--steps",
        "3",
        "--val",
        "8",
        "--heldout-limit",
        "8",
        "--lr-factors",
        "1",
        "--decay-factors",
        "1,10",
        "--grid",
        "full",
        "--seeds",
        "1,2",
        "--jobs",
        "1",
        "--json",
        str(out),
        "--markdown",
        str(md),
        "--png",
        str(png),
    ]
    assert bench_quality.main(argv) == 0
    data = json.loads(out.read_text())
    runs = data["runs"]
    search = [r for r in runs if r["stage"] == "search"]
    seeds = [r for r in runs if r["stage"] == "seeds"]
    # The joint grid: LoRA's λ ∈ {0, 1} at its rate, the sparse methods' two decays lr·λ (paper's × 1, × 10).
    assert sorted(r["weight_decay"] for r in search if r["method"] == "lora") == [0.0, 1.0]
    ag_decays = sorted(r["lr"] * r["weight_decay"] for r in search if r["method"] == "ag")
    assert ag_decays == pytest.approx([1e-4 * 30, 1e-4 * 30 * 10], rel=0.01)
    assert all(r["seed"] == 0 and "val_exact_match" in r and "exact_match" not in r for r in search)
    for m in ("lora", "ag", "static"):  # the seed runs use the setting the search picked, on held-out data
        picked = pick([r for r in search if r["method"] == m])
        mine = [r for r in seeds if r["method"] == m]
        assert sorted(r["seed"] for r in mine) == [1, 2]
        assert all((r["lr"], r["weight_decay"]) == (picked["lr"], picked["weight_decay"]) for r in mine)
        assert all(0.0 <= r["exact_match"] <= 1.0 and r["heldout_loss"] > 0 for r in mine)
    assert all("support" in r for r in seeds if r["method"] != "lora")
    # Same budget: LoRA rank r and SpIEL rank-equivalent r (per-tensor flooring loses a few entries).
    trainable = {r["method"]: r["trainable"] for r in seeds}
    assert abs(trainable["ag"] - trainable["lora"]) < 30 and trainable["ag"] == trainable["static"]
    table = md.read_text()
    ag_row = next(line for line in table.splitlines() if line.startswith("| SpIEL-AG |"))
    ems = [r["exact_match"] for r in seeds if r["method"] == "ag"]
    assert f"{statistics.fmean(ems):.3f} ± {statistics.stdev(ems):.3f}" in ag_row
    assert data["config"]["heldout"] == 8 and png.stat().st_size > 1000
    # A rerun with the same --json trains nothing new.
    monkeypatch.setattr(bench_quality, "run_job", lambda job: pytest.fail(f"reran {job.method}"))
    assert bench_quality.main(argv) == 0


def test_bench_quality_refuses_a_bad_method_before_training(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_quality

    with pytest.raises(ValueError, match="unknown method 'lorra'"):
        bench_quality.main(["--methods", "lora,lorra", "--json", str(tmp_path / "q.json")])
    with pytest.raises(ValueError, match="must read key=value"):
        bench_quality.main(["--methods", "ag+growth", "--json", str(tmp_path / "q.json")])
    assert not (tmp_path / "q.json").exists()


def test_bench_quality_refuses_to_resume_runs_made_with_other_settings(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import bench_quality

    old = tmp_path / "q.json"
    old.write_text(
        json.dumps(
            {
                "config": {
                    "rank": 4,
                    "steps": 999,
                    "batch_size": 16,
                    "val": 8,
                    "split_seed": 0,
                    "heldout": 8,
                },
                "runs": [],
            }
        )
    )
    with pytest.raises(SystemExit, match="holds runs with other settings"):
        bench_quality.main(
            ["--methods", "lora", "--steps", "3", "--val", "8", "--heldout-limit", "8", "--json", str(old)]
        )
    assert json.loads(old.read_text())["config"]["steps"] == 999  # left as it was


def test_search_grid_shapes():
    from spiel.bench.quality import search_grid

    full, cross = search_grid("ag", shape="full"), search_grid("ag")
    assert len(full) == 9 and set(cross) <= set(full) and len(cross) == 5
    paper_decay = 1e-4 * 30  # configs/method/ag.yaml: the paper's lr · λ
    assert sorted({round(lr * wd / paper_decay) for lr, wd in full}) == [1, 10, 30]
    with pytest.raises(ValueError, match="grid shape must be one of cross, full"):
        search_grid("ag", shape="diagonal")


def test_support_concentration_counts_rows_columns_and_empty_neurons():
    from types import SimpleNamespace

    from spiel.bench.support import concentration_by_projection

    def layer(out_f, in_f, positions):
        return SimpleNamespace(dense_shape=(out_f, in_f), indices=torch.tensor(sorted(positions)))

    # 20 MLP neurons, 10 input features. gate: 9 entries in row 0, 1 in row 5; up: one per row 0..9;
    # down (10 x 20): entries in columns 0 and 19 only. Neurons with an entry: 0..9 and 19 -> 9 of 20 empty.
    deltas = {
        "model.layers.0.mlp.gate_proj": layer(20, 10, list(range(9)) + [50]),
        "model.layers.0.mlp.up_proj": layer(20, 10, [10 * r for r in range(10)]),
        "model.layers.0.mlp.down_proj": layer(10, 20, [0, 19, 20, 39]),
    }
    c = concentration_by_projection(deltas)
    # top 10% of 20 rows = 2 rows: gate 10/10, up 2/10; top 10% of 10 columns = 1 column: gate 2/10, up 10/10.
    assert c["rows"]["gate_proj"] == pytest.approx(1.0) and c["rows"]["up_proj"] == pytest.approx(0.2)
    assert c["cols"]["gate_proj"] == pytest.approx(0.2) and c["cols"]["up_proj"] == pytest.approx(1.0)
    assert c["cols"]["down_proj"] == pytest.approx(1.0)  # 2 of 20 columns hold all 4 entries
    assert c["dead_neurons"] == pytest.approx(9 / 20)


def test_reselection_cost_splits_extra_time_by_kind_of_step():
    from types import SimpleNamespace

    from spiel.bench.step import reselection_cost, step_kind
    from spiel.selection.config import SelectionConfig
    from spiel.selection.schedule import ReselectionSchedule

    ag = SimpleNamespace(
        estimates_gradients=True,
        reselects=True,
        schedule=ReselectionSchedule.of(100, SelectionConfig(reselection_steps=10, estimation_steps=3)),
    )
    ma = SimpleNamespace(estimates_gradients=False, reselects=True, schedule=ag.schedule)
    static = SimpleNamespace(estimates_gradients=False, reselects=False, schedule=ag.schedule)
    # AG: step 1 (t 0 -> 1) starts a phase, steps 2-3 estimate, step 3 also reselects, then plain steps.
    assert [step_kind(ag, t) for t in range(1, 12)] == (
        ["probe", "estimate", "reselect"] + ["plain"] * 7 + ["probe"]
    )
    assert [step_kind(ma, t) for t in (1, 2, 3, 4, 13)] == ["plain", "plain", "reselect", "plain", "reselect"]
    assert step_kind(None, 3) == "plain" and step_kind(static, 3) == "plain"
    times = [3.0, 1.5, 4.0] + [1.0] * 7  # one period of 10 steps
    kinds = [step_kind(ag, t) for t in range(1, 11)]
    cost = reselection_cost(times, kinds, periods=1)
    assert cost["plain_median_s"] == 1.0
    assert (cost["probe_s_per_period"], cost["estimate_s_per_period"], cost["reselect_s_per_period"]) == (
        2.0,
        0.5,
        3.0,
    )
    assert cost["extra_steps_per_period"] == 5.5
