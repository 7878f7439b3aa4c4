"""start_after: a run that continues another run's stream (alignment after ELO) reads none of its documents."""

from __future__ import annotations

import json
import random
import re

import pytest

from elo_lightning.errors import ELOError
from tests.data.conftest import TOKENIZER

TAG = re.compile(r"(en|ko)doc\d{4}")


def _shards(tmp_path, lang: str, n_shards: int, per_shard: int) -> str:
    rng = random.Random(lang)
    words = ["alpha", "beta", "gamma", "delta", "한국어", "문장", "데이터"]
    (tmp_path / lang).mkdir()
    k = 0
    for s in range(n_shards):
        with open(tmp_path / lang / f"train-{s}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(per_shard):
                body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))
                f.write(json.dumps({"text": f"{lang}doc{k:04d} {body}"}, ensure_ascii=False) + "\n")
                k += 1
    return str(tmp_path / lang / "train-*.jsonl")


def _dm(globs, weights, **kw):
    from elo_lightning.data import BilingualDataModule, LanguageSource

    langs = [LanguageSource(name=n, train=[globs[n]], weight=weights[n]) for n in globs]
    kw.setdefault("seq_len", 32)
    kw.setdefault("batch_size", 2)
    return BilingualDataModule(TOKENIZER, langs, **kw)


def _trained_docs(dm, batches: int, tokenizer) -> set[str]:
    """Tags of the documents in the first ``batches`` trained batches (token ids joined per stream, then decoded)."""
    per_stream: dict[int, list[int]] = {}
    for i, batch in enumerate(dm.train_dataloader()):
        if i == batches:
            break
        sid = int(batch["stream_id"][-1])
        batch = dm.on_before_batch_transfer(batch, 0)
        per_stream.setdefault(sid, []).extend(batch["input_ids"].flatten().tolist())
    return {m.group(0) for ids in per_stream.values() for m in TAG.finditer(tokenizer.decode(ids))}


@pytest.mark.parametrize("elo_workers,align_workers", [(2, 2), (2, 0), (0, 3), (3, 2)])
def test_alignment_after_elo_reads_no_document_elo_read(tmp_path, tokenizer, elo_workers, align_workers):
    # en: 2 shards, ko: 3 shards -> whole-shard and every-W-th-document splits both occur across these W
    globs = {"en": _shards(tmp_path, "en", 2, 60), "ko": _shards(tmp_path, "ko", 3, 60)}
    weights = {"en": 1.0, "ko": 3.0}
    elo = _dm(globs, weights, num_workers=elo_workers)
    seen = _trained_docs(elo, 9, tokenizer)
    state = tmp_path / "elo" / "stream_state.json"
    state.parent.mkdir()
    state.write_text(json.dumps(elo.export_state()["stream_state.json"]))
    align = _dm(globs, weights, num_workers=align_workers, start_after=str(state.parent))
    read = _trained_docs(align, 9, tokenizer)
    assert seen and read
    assert {t[:2] for t in seen} == {"en", "ko"} and {t[:2] for t in read} == {"en", "ko"}
    assert not seen & read, sorted(seen & read)
    # without start_after the same run starts over and re-reads ELO's text (the test can fail)
    again = _trained_docs(_dm(globs, weights, num_workers=elo_workers), 9, tokenizer)
    assert again & seen


def test_continuation_restarts_the_counts_and_is_resumable(tmp_path, tokenizer):
    globs = {"en": _shards(tmp_path, "en", 2, 60), "ko": _shards(tmp_path, "ko", 3, 60)}
    weights = {"en": 1.0, "ko": 3.0}
    elo = _dm(globs, weights, num_workers=0)
    _trained_docs(elo, 6, tokenizer)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(elo.state_dict()))
    align = _dm(globs, weights, num_workers=0, start_after=str(path))
    assert set(align.state_dict()["streams"]) == set()  # nothing trained yet
    batch = next(iter(align.train_dataloader()))
    first = json.loads(batch["stream_state"][-1])
    assert sum(first["counts"]["tokens"].values()) < 4 * 32  # fresh counts: one batch of 2 x 32 plus a carry
    # a resumed alignment run carries its own state, not ELO's
    resumed = _dm(globs, weights, num_workers=0, start_after=str(path))
    align.on_before_batch_transfer(batch, 0)
    resumed.load_state_dict(json.loads(json.dumps(align.state_dict())))
    a = next(iter(align.train_dataloader()))["input_ids"]
    b = next(iter(resumed.train_dataloader()))["input_ids"]
    assert a.tolist() == b.tolist()


def test_continuing_a_language_read_to_the_end_raises(tmp_path, tokenizer):
    globs = {"en": _shards(tmp_path, "en", 1, 3), "ko": _shards(tmp_path, "ko", 1, 200)}
    weights = {"en": 1.0, "ko": 1.0}
    elo = _dm(globs, weights, num_workers=0)
    _trained_docs(elo, 12, tokenizer)  # 3 short English documents: read more than once
    path = tmp_path / "state.json"
    path.write_text(json.dumps(elo.state_dict()))
    align = _dm(globs, weights, num_workers=0, start_after=str(path))
    with pytest.raises(ELOError, match="read all of language 'en'"):
        align.train_dataloader()


def test_continuation_running_out_of_unseen_text_raises(tmp_path, tokenizer):
    globs = {"en": _shards(tmp_path, "en", 1, 12), "ko": _shards(tmp_path, "ko", 1, 400)}
    weights = {"en": 1.0, "ko": 1.0}
    elo = _dm(globs, weights, num_workers=0, mix_by="documents")
    _trained_docs(elo, 2, tokenizer)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(elo.state_dict()))
    align = _dm(globs, weights, num_workers=0, start_after=str(path), mix_by="documents")
    with pytest.raises(ELOError, match="ran out of documents"):
        _trained_docs(align, 40, tokenizer)


@pytest.mark.parametrize("change,match", [({"seed": 7}, "seed"), ({"shuffle_shards": False}, "shuffle_shards")])
def test_continuing_with_another_shard_order_raises(tmp_path, tokenizer, change, match):
    globs = {"en": _shards(tmp_path, "en", 2, 20), "ko": _shards(tmp_path, "ko", 3, 20)}
    elo = _dm(globs, {"en": 1.0, "ko": 1.0})
    _trained_docs(elo, 2, tokenizer)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(elo.state_dict()))
    with pytest.raises(ELOError, match=match):
        _dm(globs, {"en": 1.0, "ko": 1.0}, start_after=str(path), **change).train_dataloader()


def test_start_after_must_exist_and_hold_a_state(tmp_path):
    globs = {"en": _shards(tmp_path, "en", 1, 5)}
    with pytest.raises(ELOError, match="not found"):
        _dm(globs, {"en": 1.0}, start_after=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ELOError, match="stream_state.json"):
        _dm(globs, {"en": 1.0}, start_after=str(tmp_path / "empty")).train_dataloader()


def test_resumed_language_keeps_its_cursor_when_not_read(make_dm):
    """Regression: a language not read between a resume and the next state used to report cursor 0 (a reset)."""
    dm = make_dm({"en": 1.0, "ja": 1.0}, seq_len=512, mix_by="bytes")
    stream = dm.train_dataset()
    it = stream.iterate(0)
    kept = 0
    for _ in range(60):
        state = json.loads(next(it)["stream_state"])
        after = json.loads(next(stream.iterate(0, state))["stream_state"])
        for lang in ("en", "ja"):
            if after["counts"]["documents"][lang] == state["counts"]["documents"][lang]:
                kept += 1
                assert after["cursors"][lang] == state["cursors"][lang]
    assert kept > 0
