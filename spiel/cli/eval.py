"""spiel-eval: evaluate a checkpoint (or a base model) on one benchmark; Hydra sweeps run a suite.

    spiel-eval ckpt=outputs/.../final bench=mmlu
    spiel-eval ckpt=[runs/tulu2_ag,runs/alpaca_ag] bench=humaneval      # summed SpIEL deltas
    spiel-eval ckpt=[runs/tulu2_ag,runs/alpaca_ag] ckpt_weights=[0.7,0.3] bench=humaneval  # weighted sum
    spiel-eval ckpt=null model=llama2-7b -m bench=mmlu,gsm,bbh,tydiqa,humaneval
    spiel-eval ckpt=runs/qspiel/final quant=nf4 bench=gsm                # NF4 base, delta unmerged

Configs: `configs/eval.yaml` and the groups `bench/`, `model/`, `quant/`. `run(cfg, output_dir)` is the
library entry point (tests call it with a composed config). Within one process (e.g. a `-m` sweep over
benchmarks) the loaded model is reused while ckpt/model/dtype/quant/device stay the same.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from spiel.eval.benchmark import register_bench_schemas
from spiel.eval.config_check import EvalConfigError, check_eval_config
from spiel.eval.data import BenchDataError, MissingDataError
from spiel.eval.loader import CheckpointError, LoadedModel, load_for_eval, normalize_ckpts
from spiel.eval.runner import check_bench, check_bench_data, run_bench, write_run
from spiel.paths import CONFIG_DIR
from spiel.training.launch.sweep import free_memory

log = logging.getLogger("spiel.eval")
register_bench_schemas()  # configs/bench/*.yaml extend them

_CACHE: dict[tuple, LoadedModel] = {}
ERROR_FILE = "error.txt"  # a failed job's reason, in its output dir
# An absolute path: a relative config_path would be resolved as a Python package when run as a console
# script. The configs live at the repository's top level (an editable install sees them).
# spiel/configs: a link to the top-level configs/ in a checkout, a packaged copy in a wheel.


def default_label(ckpts: list[str], model_name: str | None, weights: list[float] | None = None) -> str:
    def short(c: str) -> str:
        p = Path(c.rstrip("/"))
        if p.name == "final" or p.name.startswith("checkpoint-"):
            return f"{p.parent.name}/{p.name}"
        return p.name

    if ckpts and weights is not None:
        return " ⊕ ".join(f"{w:g}·{short(c)}" for w, c in zip(weights, ckpts, strict=True))
    if ckpts:
        return " ⊕ ".join(short(c) for c in ckpts)
    return str(model_name or "base")


def load_model(cfg: DictConfig) -> LoadedModel:
    ckpts = normalize_ckpts(OmegaConf.to_container(cfg.ckpt) if OmegaConf.is_list(cfg.ckpt) else cfg.ckpt)
    weights = cfg.get("ckpt_weights")
    weights = OmegaConf.to_container(weights) if OmegaConf.is_list(weights) else weights
    key = (
        tuple(ckpts),
        None if weights is None else str(weights),
        cfg.model.name_or_path,
        cfg.model.dtype,
        cfg.model.get("revision"),
        cfg.quant.name,
        str(cfg.eval.device),
    )
    if key not in _CACHE:
        _CACHE.clear()
        free_memory()
        log.info(
            "loading the model: ckpt=%s model=%s dtype=%s quant=%s",
            ckpts,
            cfg.model.name_or_path,
            cfg.model.dtype,
            cfg.quant.name,
        )
        _CACHE[key] = load_for_eval(
            ckpts,
            model_name=cfg.model.name_or_path,
            dtype=cfg.model.dtype,
            quant=cfg.quant.name,
            device=cfg.eval.device,
            revision=cfg.model.get("revision"),
            allow_unverified_base=bool(cfg.eval.get("allow_unverified_base", False)),
            allow_unverified_delta=bool(cfg.eval.get("allow_unverified_delta", False)),
            ckpt_weights=weights,
        )
    return _CACHE[key]


def run(cfg: DictConfig, output_dir=None) -> dict:
    """Evaluate per `cfg`, write the run dir (`output_dir`, else eval.output_dir, else Hydra's), return metrics."""
    if output_dir is None:
        output_dir = cfg.eval.get("output_dir")
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    check_eval_config(cfg)  # every key known and in range, before any data or model is read
    bench = OmegaConf.to_container(cfg.bench, resolve=True)
    name = bench["name"]
    check_bench(name, bench)  # before the model loads
    check_bench_data(name, bench, cfg.eval.data_dir, seed=cfg.seed, limit=cfg.eval.limit)
    loaded = load_model(cfg)
    label = cfg.get("label") or default_label(
        loaded.info["ckpt"], loaded.info.get("base"), loaded.info.get("ckpt_weights")
    )
    log.info("evaluating %s on %s (%s)", label, name, loaded.info)
    result = run_bench(
        name,
        loaded.model,
        loaded.tokenizer,
        bench,
        data_dir=cfg.eval.data_dir,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        limit=cfg.eval.limit,
        progress=bool(cfg.eval.progress),
    )
    import torch
    import transformers

    import spiel

    run_info = {
        "label": label,
        **loaded.info,
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "bench_config": bench,
        "seed": cfg.seed,
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "versions": {
            "spiel": spiel.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "argv": sys.argv,
    }
    line = write_run(output_dir, name, result, run_info)
    print(line, flush=True)
    return result["metrics"]


def _user_errors() -> tuple:
    from spiel.eval.lm_eval import LmEvalError
    from spiel.extras import MissingExtra
    from spiel.io.model_source import RemoteCodeError, RevisionError
    from spiel.model.spiel_model import CheckpointMismatchError, InvalidCheckpointError

    return (
        MissingDataError,
        BenchDataError,
        CheckpointError,
        CheckpointMismatchError,
        InvalidCheckpointError,
        FileNotFoundError,
        LmEvalError,
        RemoteCodeError,
        RevisionError,
        EvalConfigError,
        MissingExtra,
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run(cfg)
    except _user_errors() as e:
        out.mkdir(parents=True, exist_ok=True)
        (out / ERROR_FILE).write_text(f"{type(e).__name__}: {e}\n")
        print(f"spiel-eval: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if multirun:
            return None  # the other jobs of the sweep still run; the sweep then exits 1 (SweepReport)
        sys.exit(2)
    except Exception as e:
        if not multirun:
            raise  # a bug: its traceback
        out.mkdir(parents=True, exist_ok=True)
        (out / ERROR_FILE).write_text("".join(traceback.format_exception(e)))
        log.exception("sweep job %s failed; continuing with the others", out.name)
        return None


if __name__ == "__main__":
    main()
