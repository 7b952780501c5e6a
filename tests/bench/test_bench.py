"""Smoke tests of the benchmark scripts (bench_step, bench_quality) with tiny settings: the JSON shape,
sane values, and that the CUDA path of bench_step imports nothing the GPU box lacks."""

from __future__ import annotations

import json
import math
import os
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
        from spiel.training import schema
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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0 and out.stdout.strip() == "ok []", out.stdout + out.stderr
    assert paper_hparams("ag") == (1e-4, 30.0) and paper_hparams("ma") == (1e-3, 0.3)  # the paper's Table 4


@pytest.mark.parametrize("method", ["floor", "full", "ia3", "ag", "ma"])
def test_step_run_reports_sane_numbers(method):
    spec = StepSpec(method=method, shape=TINY.to_dict(), seq=16, reselection_steps=3, estimation_steps=1,
                    warmup=1, periods=1, threads=1)
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
        job = QualityJob(method=method, lr=1e-3, steps=6, batch_size=4, rank=2, seed=0, train=examples,
                         val_records=[], heldout_path="")
        model, stats = train(job, tiny_model(), tok)
        indices[method] = {n: layer.indices.clone() for n, layer in model.deltas.items()}
        assert stats["trainable"] == model.num_tunable()
    from spiel.model import get_spiel_model

    fresh = get_spiel_model(tiny_model(), method_config("ag", 2).spiel_config(seed=0))
    assert all(torch.equal(fresh.deltas[n].indices, idx) for n, idx in indices["static"].items())
    assert not all(torch.equal(fresh.deltas[n].indices, idx) for n, idx in indices["ag"].items())


def test_ratios_use_the_lora_of_the_same_quantization():
    m = {k: {"step_s_median": t, "extra_mem_mb": mem} for k, t, mem in
         [("floor", 1.0, 10), ("lora", 2.0, 40), ("ag", 2.2, 30), ("lora-nf4", 4.0, 20), ("ag-nf4", 3.0, 10),
          ("floor-nf4", 2.0, 5)]}
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
    assert bench_step.memory_search(StepSpec(method="full", device="cuda"), "/tmp", 100, 139)["min_gib"] is None


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
    (custom / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path[:] = [{str(filtered)!r} if p == {str(packages)!r} else p for p in sys.path]
    """))
    return custom


def test_bench_step_cli_gpu_path_without_hydra(tmp_path):
    """`--gpu` (shapes shrunk, on CPU) through the CLI, each method in its own process, with hydra,
    omegaconf, datasets, bitsandbytes and wandb not installed, as on the CUDA box."""
    custom = _site_without(BLOCKED, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(custom), str(REPO)]), OMP_WAIT_POLICY="PASSIVE",
               OMP_NUM_THREADS="1")
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print([m for m in "
                            f"{list(BLOCKED)!r} if u.find_spec(m)])"], env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    out, png = tmp_path / "step.json", tmp_path / "step.png"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_step.py"), "--gpu", "--device", "cpu", "--dtype", "float32",
           "--hidden", "64", "--intermediate", "160", "--layers", "1", "--heads", "2", "--kv-heads", "2",
           "--vocab", "64", "--seq", "16", "--methods", "floor,lora,lora0,ag,ag_applied", "--reselection-steps", "2",
           "--estimation-steps", "1", "--periods", "1", "--warmup", "0", "--threads", "1",
           "--json", str(out), "--png", str(png)]
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
        lora["step_s_median"] / data["methods"]["floor"]["step_s_median"])
    assert data["ratios_to_lora"]["ag"]["mean_lora0"] == pytest.approx(ag["step_s_mean"] / lora0["step_s_mean"])
    assert data["ratios_to_lora"]["ag"]["time_lora0"] == pytest.approx(ag["step_s_median"] / lora0["step_s_median"])
    # Bytes per trainable entry: LoRA's fp32 parameter, gradient and two moments; SpIEL-AG adds an int32
    # index and an int32 growth step and keeps no per-slot Adam age; merged storage adds the fp32 base value
    # saved at each active position (off: ag_applied).
    assert lora["bytes_per_entry"]["per_entry"] == 16.0 and lora0["bytes_per_entry"]["per_entry"] == 16.0
    assert ag["bytes_per_entry"]["per_entry"] == 28.0
    assert data["methods"]["ag_applied"]["bytes_per_entry"]["per_entry"] == 24.0
    assert ag["reselection"]["extra_s_per_period"] == pytest.approx(
        ag["reselection"]["probe_s_per_period"] + ag["reselection"]["estimate_s_per_period"]
        + ag["reselection"]["reselect_s_per_period"])
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

    out, png = tmp_path / "q.json", tmp_path / "q.png"
    torch.set_num_threads(1)
    assert bench_quality.main(["--methods", "lora,ag,static", "--steps", "3", "--val", "8", "--heldout-limit",
                               "8", "--lr-factors", "1", "--jobs", "1", "--json", str(out), "--png", str(png)]) == 0
    data = json.loads(out.read_text())
    assert list(data["methods"]) == ["base", "lora", "ag", "static"]
    for name, row in data["methods"].items():
        assert 0.0 <= row["exact_match"] <= 1.0 and row["heldout_loss"] > 0, name
    assert data["methods"]["lora"]["trainable"] > 0
    # Same budget: LoRA rank r and SpIEL rank-equivalent r (per-tensor flooring loses a few entries).
    assert abs(data["methods"]["ag"]["trainable"] - data["methods"]["lora"]["trainable"]) < 30
    assert data["methods"]["ag"]["trainable"] == data["methods"]["static"]["trainable"]
    assert len(data["runs"]) == 3 and data["config"]["heldout"] == 8
    assert png.stat().st_size > 1000


def test_reselection_cost_splits_extra_time_by_kind_of_step():
    from types import SimpleNamespace

    from spiel.bench.step import reselection_cost, step_kind
    from spiel.selection.schedule import ReselectionSchedule

    ag = SimpleNamespace(estimates_gradients=True, reselects=True,
                         schedule=ReselectionSchedule(100, reselection_steps=10, estimation_steps=3))
    ma = SimpleNamespace(estimates_gradients=False, reselects=True, schedule=ag.schedule)
    static = SimpleNamespace(estimates_gradients=False, reselects=False, schedule=ag.schedule)
    # AG: step 1 (t 0 -> 1) starts a phase, steps 2-3 estimate, step 3 also reselects, then plain steps.
    assert [step_kind(ag, t) for t in range(1, 12)] == (
        ["probe", "estimate", "reselect"] + ["plain"] * 7 + ["probe"])
    assert [step_kind(ma, t) for t in (1, 2, 3, 4, 13)] == ["plain", "plain", "reselect", "plain", "reselect"]
    assert step_kind(None, 3) == "plain" and step_kind(static, 3) == "plain"
    times = [3.0, 1.5, 4.0] + [1.0] * 7  # one period of 10 steps
    kinds = [step_kind(ag, t) for t in range(1, 11)]
    cost = reselection_cost(times, kinds, periods=1)
    assert cost["plain_median_s"] == 1.0
    assert (cost["probe_s_per_period"], cost["estimate_s_per_period"], cost["reselect_s_per_period"]) == (2.0, 0.5, 3.0)
    assert cost["extra_steps_per_period"] == 5.5
