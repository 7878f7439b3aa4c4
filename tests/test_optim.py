"""The optimizer: no decay on 1-D tensors, only trainable parameters; the warm-up + cosine schedule."""

import pytest
import torch

from elo_lightning.optim import OptimizerConfig, build_optimizer, build_scheduler


def _named(model):
    return list(model.named_parameters())


def test_trainable_parameters_only_and_no_decay_on_vectors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].requires_grad_(False)
    opt = build_optimizer(_named(model), OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5))
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])] and decay["weight_decay"] == 0.5
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias + norm weight + norm bias
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(_named(model), OptimizerConfig(name="adamw"))


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimizerConfig(lr=1.0, warmup_steps=2, min_lr_ratio=0.1), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=0.05)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
