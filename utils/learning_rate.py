"""Poly learning-rate schedule, set before every iteration as in the released training:
lr = base_lr * (1 - T/N)^0.9 with T the global iteration (epoch * iters_per_epoch + i) and N the
total number of iterations."""

from __future__ import annotations

import torch


def poly_lr(base_lr: float, iteration: int, total_iterations: int, power: float = 0.9) -> float:
    """base_lr * (1 - iteration/total_iterations)^power; 0 from total_iterations on."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    if iteration < 0:
        raise ValueError(f"iteration must not be negative, got {iteration}")
    return base_lr * max(0.0, 1.0 - iteration / total_iterations) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of ``optimizer`` the learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
