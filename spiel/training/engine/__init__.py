"""The training run itself: its phases, the Trainer, the plain loop, atomic checkpoints, divergence and
failure handling, the run directory."""
