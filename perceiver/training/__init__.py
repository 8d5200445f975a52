"""A small training loop for the experiments: schedules, AMP, atomic checkpoints, DDP, wandb logging."""
