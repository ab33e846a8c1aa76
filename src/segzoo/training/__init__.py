"""Training: ignore-aware loss, streaming mIoU, schedules, checkpoints, the training loop."""
