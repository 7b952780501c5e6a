"""spiel-plan: the arithmetic against the real model (exact counts) and against measured peak memory on
CPU (within 15%), the cheapest-fit search, and the CLI's refusals."""

import pytest

from spiel.cli.plan import main as plan_main
from spiel.planning import ModelShape, RunPlan, cheapest_fit, estimate
from spiel.planning.measure import measure_peak
from spiel.planning.memory import GIB

TOLERANCE = 0.15


@pytest.fixture(scope="module")
def tiny():
    return ModelShape.from_name("tiny")


def test_counts_match_the_wrapped_model_exactly(tiny):
    from spiel import SpielConfig, get_spiel_model
    from spiel.io.base_model import load_base_model

    base = load_base_model("tiny", dtype="float32", quant="none", device="cpu")
    assert tiny.total_params == sum(p.numel() for p in base.parameters())
    model = get_spiel_model(base, SpielConfig(method="ag", rank_equiv=4))
    est = estimate(tiny, RunPlan(method="ag", rank_equiv=4, dtype="float32"))
    assert est.trainable == model.num_tunable()
    stored = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert est.parts["base weights"] + est.parts["deltas"] == stored


def test_ma_reselection_scores_are_planned_at_the_devices_chunk():
    """SpIEL-MA scores a group of same-shape matrices in chunks whose size depends on the device: a GPU plan
    counts the CUDA chunk (16x the CPU one), a group smaller than a chunk is counted whole on both."""
    from collections import Counter

    from spiel.selection.batched import GROUP_CHUNK_ELEMENTS_CPU, GROUP_CHUNK_ELEMENTS_CUDA

    big = ModelShape.from_name("meta-llama/Llama-2-7b-hf")  # 128 matrices of 4096 x 4096: 2 Gi entries
    small = ModelShape.from_name("tiny")
    largest_tiny = max(count * o * i for (o, i), count in Counter(small.targets().values()).items())
    assert largest_tiny < GROUP_CHUNK_ELEMENTS_CPU
    for device, chunk in (("cuda", GROUP_CHUNK_ELEMENTS_CUDA), ("cpu", GROUP_CHUNK_ELEMENTS_CPU)):
        plan = RunPlan(method="ma", rank_equiv=16, dtype="float32", device=device)
        assert estimate(big, plan).parts["MA reselection scores"] == chunk * 5  # fp32 score + bool mask
        assert estimate(small, plan).parts["MA reselection scores"] == largest_tiny * 5
    with pytest.raises(ValueError, match="device: must be cuda or cpu"):
        estimate(small, RunPlan(method="ma", device="tpu"))
    with pytest.raises(ValueError, match="measure_peak measures on the CPU"):
        measure_peak("tiny", RunPlan(method="ma", rank_equiv=4, dtype="float32"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,ckpt,micro,seq",
    [("ag", False, 2, 64), ("ma", False, 2, 64), ("lora", False, 2, 64), ("ag", True, 4, 128)],
)
def test_tiny_model_plan_within_15_percent_of_measured_peak(tiny, method, ckpt, micro, seq):
    plan = RunPlan(
        method=method,
        rank_equiv=4,
        lora_r=4,
        dtype="float32",
        micro_batch_size=micro,
        seq_len=seq,
        activation_checkpointing=ckpt,
        device="cpu",  # measured here, on the CPU
    )
    measured = measure_peak("tiny", plan)
    planned = estimate(tiny, plan)
    assert measured["peak"] > measured["static"] * 1.3  # the training transients are a real share
    assert abs(planned.total / measured["peak"] - 1) <= TOLERANCE, (planned.parts, measured)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ag", "ma"])
def test_benchmark_model_plan_within_15_percent_of_measured_peak(method):
    from spiel.bench.models import CPU_DEFAULT, llama_config

    config = llama_config(CPU_DEFAULT, 512)
    plan = RunPlan(
        method=method, rank_equiv=16, dtype="float32", micro_batch_size=2, seq_len=64, device="cpu"
    )
    measured = measure_peak(config, plan)
    planned = estimate(ModelShape.from_config(config, "bench"), plan)
    assert abs(planned.total / measured["peak"] - 1) <= TOLERANCE, (planned.parts, measured)


def test_checkpointing_and_sharding_lower_the_plan(tiny):
    plain = estimate(tiny, RunPlan(method="ag", rank_equiv=4, dtype="float32", seq_len=512))
    ckpt = estimate(
        tiny, RunPlan(method="ag", rank_equiv=4, dtype="float32", seq_len=512, activation_checkpointing=True)
    )
    sharded = estimate(
        tiny, RunPlan(method="ag", rank_equiv=4, dtype="float32", seq_len=512, gpus=4, parallel="fsdp")
    )
    assert ckpt.parts["activations"] < plain.parts["activations"] / 2
    weights = plain.parts["base weights"] - tiny.buffer_bytes  # rotary buffers are not sharded
    assert sharded.parts["base weights"] == pytest.approx(weights / 4 + tiny.buffer_bytes)


def test_cheapest_fit_for_70b_on_80gb():
    shape = ModelShape.from_name("meta-llama/Llama-2-70b-hf")
    assert shape.total_params == pytest.approx(68.98e9, rel=1e-3)  # LLaMA-2-70B's published size
    plan = RunPlan(method="ma", seq_len=2048)
    assert not estimate(shape, plan).fits(80 * GIB)  # 138 GB of bf16 weights alone
    best = cheapest_fit(shape, plan, 80 * GIB)
    assert best is not None and best.total <= 80 * GIB and best.plan.quant == "nf4"
    small = cheapest_fit(shape, RunPlan(method="ma", seq_len=2048, gpus=8, parallel="ddp"), 80 * GIB)
    assert small.plan.parallel == "fsdp" and small.plan.quant == "none"  # sharding before NF4
    assert cheapest_fit(shape, RunPlan(method="full", seq_len=2048), 80 * GIB) is None


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(quant="nf4", gpus=2, parallel="fsdp"), "parallel: fsdp shards a bf16/fp32 base"),
        (dict(method="ia3"), "method: planned: ag, ma, lora, full"),
        (dict(gpus=2), "parallel: none means one GPU"),
        (dict(gpus=0), "gpus: must be >= 1"),
        (dict(dtype="int8"), "dtype: must be one of"),
        (dict(quant="int4"), "quant: must be none or nf4"),
        (dict(parallel="zero3"), "parallel: must be one of"),
        (dict(method="full", quant="nf4"), "quant: full fine-tuning cannot train NF4 weights"),
        (dict(micro_batch_size=0), "micro_batch_size: micro-batch and sequence must be >= 1"),
    ],
)
def test_plan_refuses_what_it_cannot_plan(tiny, fields, message):
    with pytest.raises(ValueError, match=message):
        estimate(tiny, RunPlan(**fields))


def test_cli_prints_the_plan_and_refuses_bad_input(capsys):
    assert plan_main(["--gpus", "2", "--gpu-memory", "80", "model=llama2-7b", "method=ag", "data=tulu2"]) == 0
    out = capsys.readouterr().out
    assert "Llama-2-7b-hf" in out and "ddp" in out and "2048 tokens" in out and "fits in 80 GiB" in out
    assert plan_main(["model=llama2-70b", "method=ma", "data=tulu2"]) == 0
    assert "does NOT fit" in capsys.readouterr().out
    assert plan_main(["method=ia3"]) == 2
    assert "method: planned: ag, ma, lora, full" in capsys.readouterr().err
    assert plan_main(["--gpus", "0"]) == 2
    assert plan_main(["micro_batch_size=0"]) == 2
    assert "micro_batch_size: must be >= 1" in capsys.readouterr().err
    assert plan_main(["model=hf", "model.name_or_path=/nonexistent/model"]) == 2
    assert "model.name_or_path: no model directory at /nonexistent/model" in capsys.readouterr().err
    assert plan_main(["model.name_or_path=/nonexistent/model"]) == 2  # not with the tiny model's presets
    assert "model=hf model.name_or_path=/nonexistent/model" in capsys.readouterr().err
