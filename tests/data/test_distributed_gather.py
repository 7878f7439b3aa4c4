"""Real 2-process gloo group: state_dict() all-gathers every rank's stream states; resume per rank is exact."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from elo_lightning.data import BilingualDataModule
from tests.data.conftest import TOKENIZER, source


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    def make():
        return BilingualDataModule(TOKENIZER, [source("en", 1.0), source("ko", 9.0)], seq_len=64, batch_size=2)

    def take(dm, n):
        it, out_ = iter(dm.train_dataloader()), []
        for _ in range(n):
            out_.append(dm.on_before_batch_transfer(next(it), 0)["input_ids"].tolist())
        return out_

    reference = take(make(), 7)
    dm = make()
    take(dm, 3 + rank)  # the ranks are at different steps: each stream keeps its own state
    state = dm.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = take(resumed, 2)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"streams": sorted(state["streams"]), "num_streams": state["num_streams"],
                   "ok": tail == reference[3 + rank:5 + rank], "first": reference[0]}, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_state_dict_gathers_all_ranks(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("no torch.distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported modules (spawn would re-import torch+transformers, ~30 s)
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in res:
        assert r["streams"] == ["0", "1"] and r["num_streams"] == 2 and r["ok"]
    assert res[0]["first"] != res[1]["first"]  # ranks read different data
