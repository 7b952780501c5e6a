"""What a run writes while it trains: the metrics log, validation, TensorBoard, wandb."""
