"""spiel-eval: benchmarks for trained checkpoints, one module per benchmark."""
