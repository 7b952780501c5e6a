"""torch.distributed's environment for a job started by submitit (SLURM, or its local executor).

torchrun and ``accelerate launch`` set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for each process; a SLURM job with one task per GPU (``hydra/launcher=slurm`` with
``tasks_per_node`` = GPUs per node, ``nodes`` = N) has only submitit's job environment. This derives the same
variables from it, so every task joins one process group: rank = the task's global rank, the master is the
job's first host, and the port comes from the job id (or ``MASTER_PORT`` when exported).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("spiel.cli.train")

DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def port_for_job(job_id: str) -> int:
    """A port in [20000, 60000) that is the same on every task of a job and differs between most jobs."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return 20000 + int(digits) % 40000


def distributed_env(job_env) -> dict[str, str]:
    """The torchrun-style variables for one task of a submitit job environment."""
    nodes = max(1, job_env.num_nodes)
    return {
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(job_env.num_tasks // nodes),
        "GROUP_RANK": str(job_env.node),
        "MASTER_ADDR": job_env.hostnames[0],
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(port_for_job(job_env.job_id)),
    }


def set_from_submitit() -> dict[str, str] | None:
    """In a submitit task of a multi-task job, set the variables above (unless a launcher inside the job,
    e.g. torchrun under srun, already did) and return them; None elsewhere."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return None
    import submitit

    job_env = submitit.JobEnvironment()
    if job_env.num_tasks <= 1:
        return None
    values = distributed_env(job_env)
    os.environ.update(values)
    log.info("distributed environment from %s: %s", job_env, values)
    return values
