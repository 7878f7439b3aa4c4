"""Rank helpers outside a process group, and the DTensor check."""

import torch

from elo_lightning.dist import barrier, is_dtensor, is_rank_zero, is_sharded, rank_and_world


def test_single_process_is_rank_zero_of_one():
    assert rank_and_world() == (0, 1) and is_rank_zero()
    barrier()  # no process group: nothing to wait for


def test_plain_tensors_are_not_shards():
    model = torch.nn.Linear(2, 2)
    assert not is_dtensor(model.weight) and not is_sharded(model)
