"""Fine-tuning: freezing schedules, parameter groups, the training loop, checkpoints."""
