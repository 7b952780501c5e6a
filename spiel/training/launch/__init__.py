"""How a run is launched: process groups, SLURM/submitit, FSDP, sweeps."""
