"""spiel-train: the Hydra training entry point on the transformers Trainer.

    spiel-train                                            # demo: SpIEL-AG on the tiny model, CPU
    spiel-train model=llama2-7b data=tulu2 method=ag
    spiel-train experiment=paper_7b_ag data=flan_v2 quant=nf4
    spiel-train -m method=ag,ma,lora method.lr=1e-5,3e-5   # sweep; hydra/launcher=local|slurm
    torchrun --nproc_per_node 4 -m spiel.cli.train model=llama2-7b data=tulu2
    spiel-train ... resume=auto

Configs: configs/ (train.yaml and its groups), typed by spiel/training/config/schema.py. The work is done by
spiel.training.engine.run.run_training(cfg, run_dir, run_name); this module only adapts Hydra to it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import spiel.training.config.hydra_config  # noqa: F401  (importing it registers the schemas with Hydra)
from spiel.paths import CONFIG_DIR

log = logging.getLogger("spiel.cli.train")


def _task(cfg: DictConfig) -> float:
    from spiel.training.config.preflight import refuse
    from spiel.training.engine import run_lock
    from spiel.training.engine.failures import as_user_error
    from spiel.training.engine.run import run_training
    from spiel.training.launch.launch_env import set_from_submitit
    from spiel.training.launch.sweep import record_failure, release_job_resources

    set_from_submitit()  # a SLURM/submitit task of a multi-task job: RANK, WORLD_SIZE, MASTER_ADDR, ...

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    run_name = run_dir.name if not multirun else f"{Path(hc.sweep.dir).name}/{run_dir.name}"
    try:
        summary = run_training(cfg, run_dir, run_name)
        # the sweep objective: the best held-out loss when the run validates, else the last training loss
        loss = summary.get("best_eval_loss", summary.get("final_loss"))
        return float("nan") if loss is None else float(loss)
    except Exception as error:
        if not multirun:
            plain = as_user_error(error, run_dir)
            if plain is not None:
                log.error("%s", plain)
                refuse(plain)
            raise
        log.exception("sweep job %s failed; continuing with the others", run_dir.name)
        record_failure(run_dir, error)
        return float("nan")
    finally:
        run_lock.release(run_dir)
        release_job_resources()


def _rank_overrides() -> list[str]:
    """Ranks > 0 of a torchrun/accelerate launch share rank 0's run dir: they must not rewrite its
    .hydra/ files or its log."""
    if int(os.environ.get("RANK", "0")) == 0:
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


# command-line choices that need a Hydra plugin from an extra: (prefix, value or None for any) -> module
PLUGIN_CHOICES = {
    ("hydra/launcher=", "slurm"): "hydra_plugins.hydra_submitit_launcher",
    ("hydra/launcher=", "local_submitit"): "hydra_plugins.hydra_submitit_launcher",
    ("hydra/launcher=", "local"): "hydra_plugins.hydra_joblib_launcher",
    ("hparams_search=", None): "hydra_plugins.hydra_optuna_sweeper",
}


def missing_plugin(argv: list[str]) -> str | None:
    """The message for a launcher or sweeper chosen on the command line whose extra is not installed
    (Hydra itself would only say that the config 'submitit_slurm' was not found)."""
    from spiel.extras import available, message

    for arg in argv:
        for (prefix, value), module in PLUGIN_CHOICES.items():
            chosen = (
                arg.removeprefix("+").removeprefix(prefix) if arg.lstrip("+").startswith(prefix) else None
            )
            if chosen and chosen != "null" and value in (None, chosen) and not available(module):
                return message(module, arg.lstrip("+"))
    return None


def main() -> None:
    # Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning threads of torch's
    # pool starve each other (the tiny demo ran 6x slower on 2 loaded cores). Only effective before torch
    # is imported, and only when the user has not chosen a policy.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    problem = missing_plugin(sys.argv[1:])
    if problem:
        print(f"spiel-train: error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    extra = [o for o in _rank_overrides() if o not in sys.argv]
    if extra:
        sys.argv = [sys.argv[0], *sys.argv[1:], *extra]
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")(_task)()


if __name__ == "__main__":
    main()
