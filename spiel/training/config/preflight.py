"""Checks made before Hydra touches the run dir (a Hydra callback, ``on_run_start``; registered in
configs/train.yaml): the config is valid, a resume continues the same run, and the run dir can be
written. A refusal prints one message and exits with status 2, leaving the run dir exactly as it was
(Hydra would otherwise rewrite ``.hydra/`` and open ``train.log`` in it first)."""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from spiel.training.engine.failures import EXIT_CODE, OutputError, describe_os_error, user_errors


def refuse(error: BaseException) -> None:
    """One line on stderr and exit status 2 (SystemExit passes through Hydra's error handling)."""
    print(f"spiel-train: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CODE)


def check_writable(run_dir: Path) -> None:
    """Create the run dir (as Hydra would) and a file in it; OutputError names the path and the reason."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            describe_os_error(e, run_dir, "cannot write the run dir")
            + "; choose a writable output_root=<dir>"
        ) from None


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from spiel.training.config.hydra_config import check_model_exists, validate
        from spiel.training.config.resume_check import check_resume_config, resume_target
        from spiel.training.engine import run_lock
        from spiel.training.engine.rundir import check_resumable
        from spiel.training.launch.distributed import env_world_size

        task_cfg = copy.deepcopy(config)
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            settings = validate(task_cfg, world_size=env_world_size())
            check_model_exists(settings)
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            check_resumable(run_dir, settings.cfg.resume)  # before Hydra writes into the run dir
            target = resume_target(run_dir, settings.cfg.resume)
            if target is not None and target.is_dir():
                check_resume_config(target, task_cfg, settings.cfg.resume_allow_config_changes)
            if int(os.environ.get("RANK", "0")) == 0:
                check_writable(run_dir)
                run_lock.acquire(
                    run_dir
                )  # before Hydra writes .hydra/ and train.log; released when training ends
        except user_errors() as e:
            refuse(e)
