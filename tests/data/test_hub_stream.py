"""The hub-dataset path (``hf://org/name``) through the real ``datasets`` streaming machinery, offline.

``datasets.load_dataset`` is pointed at local jsonl shards (a streaming "json" dataset: the same IterableDataset,
``split_dataset_by_node``, ``skip`` and ``iter`` a hub repo goes through); everything after the download is real.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from elo_lightning.data import LanguageSource
from elo_lightning.data.sources import HubSpec, iter_hub_records
from elo_lightning.errors import ELOError
from tests.data.conftest import SAMPLE, sample_texts, source
from tests.data.test_resume import _resumed, _take

N_SHARDS = 3  # divides neither 2 nor 4 streams: split_dataset_by_node keeps every W-th example


@pytest.fixture
def hub_docs(monkeypatch, tmp_path) -> list[str]:
    """Korean sample documents as a 3-shard streaming dataset served under the id ``org/ko``."""
    import datasets

    docs = sample_texts(os.path.join(SAMPLE, "ko", "valid.jsonl"))
    files = []
    for k in range(N_SHARDS):
        path = tmp_path / f"train-{k}.jsonl"
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs[k::N_SHARDS]))
        files.append(str(path))
    real = datasets.load_dataset

    def load_dataset(path, name=None, split=None, streaming=False, **kw):
        assert (path, name, streaming) == ("org/ko", None, True)
        return real("json", data_files=files, split=split, streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)  # DataLoader workers fork with it
    return [t for k in range(N_SHARDS) for t in docs[k::N_SHARDS]]


class _Streams(torch.utils.data.IterableDataset):
    """Stream ``rank * workers + worker`` of ``world * workers``, read inside a real DataLoader worker."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        sid, n = self.rank * info.num_workers + info.id, self.world * info.num_workers
        for _, _, text in iter_hub_records(HubSpec("org/ko", None, "train"), "text", sid, n):
            yield sid, text


def test_two_ranks_two_workers_read_every_example_once(hub_docs):
    read: dict[int, list[str]] = {}
    for rank in range(2):
        loader = torch.utils.data.DataLoader(_Streams(rank, 2), num_workers=2, batch_size=None)
        for sid, text in loader:
            read.setdefault(int(sid), []).append(text)
    assert sorted(read) == [0, 1, 2, 3]
    assert sorted(t for texts in read.values() for t in texts) == sorted(hub_docs)  # disjoint and complete
    assert max(map(len, read.values())) - min(map(len, read.values())) <= 1


def test_skip_resumes_at_the_example(hub_docs):
    spec = HubSpec("org/ko", None, "train")
    whole = list(iter_hub_records(spec, "text", 1, 2))
    assert [t for _, _, t in whole] == hub_docs[1::2]
    assert list(iter_hub_records(spec, "text", 1, 2, skip=3)) == whole[3:]


def test_hub_language_resumes_exactly_with_workers(hub_docs, make_dm):
    languages = [LanguageSource("ko", ["hf://org/ko"], weight=9.0), source("en", 1.0, valid=False)]
    kw = dict(languages=languages, num_workers=2, batch_size=3, seq_len=64)
    reference = _take(make_dm(**kw), 10)
    first = make_dm(**kw)
    head = _take(first, 4)
    tail = _take(_resumed(make_dm, first.state_dict(), **kw), 6)
    assert all(torch.equal(a, b) for a, b in zip(head + tail, reference))


def test_hub_dataset_without_the_text_field_fails_at_setup(hub_docs, make_dm):
    dm = make_dm(languages=[LanguageSource("ko", ["hf://org/ko"], text_field="content")])
    with pytest.raises(ELOError, match="text field 'content'"):
        dm.setup("fit")
