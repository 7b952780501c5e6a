"""torch.distributed's environment for a job started by submitit (SLURM, or its local executor).

torchrun and ``accelerate launch`` set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for each process; a SLURM job with one task per GPU (``hydra/launcher=slurm`` with
``tasks_per_node`` = GPUs per node, ``nodes`` = N) has only submitit's job environment. submitit's
``TorchDistributedEnvironment`` derives the same variables from it, so every task joins one process group:
rank = the task's global rank, the master is the job's first host, and the port comes from the job id (or
``MASTER_PORT`` when exported). Its option to set ``CUDA_VISIBLE_DEVICES`` to the local rank is left off: each
rank picks ``cuda:LOCAL_RANK`` (transformers' rule), which would not exist once every process sees a single
GPU.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("spiel.cli.train")

DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def set_from_submitit() -> dict[str, str] | None:
    """In a submitit task of a multi-task job, set the variables above (unless a launcher inside the job,
    e.g. torchrun under srun, already did) and return them; None elsewhere."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return None
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    job_env = submitit.JobEnvironment()
    if job_env.num_tasks <= 1:
        return None
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    values = {key: os.environ[key] for key in DIST_KEYS}
    log.info("distributed environment from %s: %s", job_env, values)
    return values
