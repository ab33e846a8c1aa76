"""Per-epoch learning-rate schedules from typed config: pure functions of the epoch index."""

from __future__ import annotations

import math
from collections.abc import Callable

from segzoo.config.schema import LRScheduleConfig


def lr_schedule(cfg: LRScheduleConfig, base_lr: float, epochs: int) -> Callable[[int], float]:
    """lr(epoch) for epoch 0..epochs-1; linear warm-up first when ``warmup_epochs`` > 0.

    ``reduce_on_plateau`` is a callback, so here it is the constant base rate (after warm-up).
    """
    decay_epochs = max(1, epochs - cfg.warmup_epochs)

    def decayed(t: int) -> float:
        progress = min(1.0, t / decay_epochs)
        if cfg.name == "cosine":
            return cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
        if cfg.name == "polynomial":
            return cfg.min_lr + (base_lr - cfg.min_lr) * (1.0 - progress) ** cfg.power
        if cfg.name == "step":
            return max(cfg.min_lr, base_lr * cfg.factor ** (t // max(1, cfg.step_epochs)))
        return base_lr

    def lr(epoch: int) -> float:
        if epoch < cfg.warmup_epochs:
            return base_lr * (epoch + 1) / (cfg.warmup_epochs + 1)
        return float(decayed(epoch - cfg.warmup_epochs))

    return lr
