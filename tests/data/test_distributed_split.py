"""2 ranks x 2 dataloader workers = 4 streams: no document or sequence is shared, together they cover all."""

from __future__ import annotations

import collections
import json
import os

import pytest

import elo_lightning.data.bilingual as bl
from elo_lightning.data import LanguageSource
from tests.data.conftest import SAMPLE, sample_texts


def _run_streams(monkeypatch, make_dm, languages, world=2, workers=2, seq_len=64):
    """Iterate each simulated (rank, worker) stream until its language starts epoch 1; log documents read."""
    read = collections.defaultdict(list)  # stream id -> [(epoch, text)]
    orig = bl._LanguageReader.documents

    def logged(self, cursor=None):
        for at, text in orig(self, cursor):
            read[self.sid].append((at["epoch"], text))
            yield at, text

    monkeypatch.setattr(bl._LanguageReader, "documents", logged)
    monkeypatch.setattr(bl, "_dist_info", lambda: (rank, world))
    sequences = {}
    for rank in range(world):
        dm = make_dm(languages=languages, seq_len=seq_len, num_workers=workers)
        ds = dm.train_dataset()
        for worker in range(workers):
            monkeypatch.setattr(bl, "_worker_info", lambda w=worker: (w, workers))
            seqs = []
            for sample in ds:
                assert sample["stream_id"] == rank * workers + worker
                seqs.append(tuple(sample["input_ids"].tolist()))
                if read[sample["stream_id"]][-1][0] == 1:
                    break
            sequences[rank * workers + worker] = seqs
    return read, sequences


def _check(read, sequences, all_docs):
    assert sorted(read) == [0, 1, 2, 3]
    per_stream = {sid: [t for e, t in docs if e == 0] for sid, docs in read.items()}
    for sid, docs in per_stream.items():
        assert docs, sid
    union = collections.Counter(t for docs in per_stream.values() for t in docs)
    assert union == collections.Counter(all_docs)  # disjoint (multiset sum equals the data) and complete
    seen = {}
    for sid, seqs in sequences.items():
        for s in set(seqs):
            assert seen.setdefault(s, sid) == sid, "a sequence appears in two streams"


def test_every_wth_document_when_shards_do_not_divide(monkeypatch, make_dm):
    lang = LanguageSource("ko", [os.path.join(SAMPLE, "ko", "train-*.jsonl")])  # 2 shards, W = 4
    read, sequences = _run_streams(monkeypatch, make_dm, [lang])
    docs = sample_texts(os.path.join(SAMPLE, "ko", "train-00000.jsonl")) + sample_texts(
        os.path.join(SAMPLE, "ko", "train-00001.jsonl"))
    _check(read, sequences, docs)
    sizes = [len([t for e, t in read[s] if e == 0]) for s in range(4)]
    assert max(sizes) - min(sizes) <= 1  # round-robin over documents


@pytest.mark.parametrize("ext", ["jsonl", "txt", "parquet"])
def test_whole_shards_when_shards_divide(monkeypatch, make_dm, tmp_path, ext):
    docs = sample_texts(os.path.join(SAMPLE, "ja", "valid.jsonl"))
    docs = [d.replace("\n", " ") for d in docs] if ext == "txt" else docs
    paths = []
    for i in range(4):  # 4 shards of unequal size, W = 4
        part = docs[i::4] + (docs[:3] if i == 0 else [])
        path = tmp_path / f"shard-{i}.{ext}"
        if ext == "jsonl":
            path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n\n" for t in part))
        elif ext == "txt":
            path.write_text("".join(t + "\n" for t in part))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"text": part, "id": list(range(len(part)))}), str(path))
        paths.append(part)
    lang = LanguageSource("ja", [str(tmp_path / f"shard-*.{ext}")])
    read, sequences = _run_streams(monkeypatch, make_dm, [lang], seq_len=32)
    _check(read, sequences, [t for part in paths for t in part])
    shards_by_stream = sorted(tuple(t for e, t in read[s] if e == 0) for s in range(4))
    assert shards_by_stream == sorted(tuple(p) for p in paths)  # each stream reads exactly one whole shard
