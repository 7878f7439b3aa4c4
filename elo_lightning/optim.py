"""Optimizer and schedule from a typed config: the paper's 8-bit AdamW + cosine, with a safe fallback."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

from elo_lightning.dist import is_dtensor


@dataclass
class OptimizerConfig:
    """Paper defaults: lr 5e-6, 8-bit AdamW (bitsandbytes), cosine schedule."""

    name: Literal["adamw", "adamw8bit"] = "adamw8bit"
    lr: float = 5e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio


def _bnb_adamw8bit(params: list, cfg: OptimizerConfig) -> torch.optim.Optimizer | None:
    """bitsandbytes AdamW8bit if it imports and can step a tensor on the parameters' device, else None."""
    try:
        import bitsandbytes as bnb

        device = params[0]["params"][0].device if params and params[0]["params"] else torch.device("cpu")
        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    except Exception as err:  # noqa: BLE001 - any failure means: fall back, and say why
        warnings.warn(f"8-bit AdamW unavailable here ({type(err).__name__}: {err}); falling back to torch AdamW",
                      stacklevel=2)
        return None


def build_optimizer(
    named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on norms and biases (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters")
    groups = [g for g in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if cfg.name == "adamw8bit":
        if any(is_dtensor(p) for g in groups for p in g["params"]):  # FSDP2 shards
            warnings.warn("8-bit AdamW (bitsandbytes) cannot step FSDP2 (DTensor) parameters; falling back to "
                          "torch AdamW (use strategy ddp to keep 8-bit AdamW)", stacklevel=2)
        elif (opt := _bnb_adamw8bit(groups, cfg)) is not None:
            return opt
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` (or constant) over ``total_steps`` optimizer steps."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    if cfg.scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, max(total_steps, 1),
                                                       min_lr_rate=cfg.min_lr_ratio)
