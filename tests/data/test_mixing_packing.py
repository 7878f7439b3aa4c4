"""Mixing follows the weights in the chosen unit (bytes, tokens, documents); packing is exact (fixed length,
documents + EOS in order)."""

from __future__ import annotations

import itertools
import json
import os

import pytest

from tests.data.conftest import SAMPLE, sample_texts


def _states(stream, n):
    for sample in itertools.islice(stream, n):
        yield sample, json.loads(sample["stream_state"])


@pytest.mark.parametrize("weights,mix_by", [({"en": 1.0, "ko": 9.0}, "bytes"), ({"en": 1.0, "ko": 9.0}, "tokens"),
                                            ({"en": 1.0, "ko": 9.0}, "documents"),
                                            ({"ko": 6.0, "ja": 3.0, "en": 1.0}, "bytes")])
def test_share_matches_weights_in_the_chosen_unit(make_dm, weights, mix_by):
    seq_len, n = 128, 3000
    dm = make_dm(weights, seq_len=seq_len, mix_by=mix_by)
    stream = dm.train_dataset().iterate(0)
    target = {k: v / sum(weights.values()) for k, v in weights.items()}
    max_doc = 0
    for i, (sample, st) in enumerate(_states(stream, n), start=1):
        assert sample["input_ids"].shape == (seq_len,)
        tokens = st["counts"]["tokens"]
        total = sum(tokens.values())
        # consumed tokens = emitted + the unread rest of the document being split (< one document)
        assert total >= i * seq_len
        max_doc = max(max_doc, total - i * seq_len)
        if i >= 2000 and i % 250 == 0:  # one document is < 1% of the amount taken by then, in every unit
            counts = st["counts"][mix_by]
            for lang, share in target.items():
                got = counts[lang] / sum(counts.values())
                assert abs(got - share) < 0.01, (i, lang, got, share)
    assert total > 380_000
    assert max_doc < 10_000
    if mix_by != "tokens" and len(weights) == 2:  # the unit matters: Korean takes more bytes per token than English
        tok_share = st["counts"]["tokens"]["ko"] / total
        assert abs(tok_share - target["ko"]) > 0.01, tok_share


def test_achieved_shares_in_every_unit(make_dm):
    dm = make_dm(mix_by="bytes", num_workers=0, seq_len=512)
    for batch, _ in zip(dm.train_dataloader(), range(20)):
        dm.on_before_batch_transfer(batch, 0)
    shares = dm.achieved_shares()
    assert set(shares) == {"bytes", "tokens", "documents"}
    assert shares["bytes"]["ko"] == pytest.approx(0.9, abs=0.03)
    for unit in shares:
        assert sum(shares[unit].values()) == pytest.approx(1.0)
    state = dm.state_dict()
    assert state["mix_by"] == "bytes" and state["achieved_shares"] == shares


def test_zero_weight_language_is_never_read(make_dm):
    dm = make_dm({"en": 0.0, "ko": 1.0})
    for _, st in _states(dm.train_dataset().iterate(0), 300):  # noqa: B007 - the last state is checked
        pass
    assert all(st["counts"][u]["en"] == 0 for u in ("bytes", "tokens", "documents"))
    assert st["cursors"]["en"]["doc"] == 0


@pytest.mark.parametrize("add_bos", [False, True])
def test_packing_reproduces_documents_in_order(make_dm, tokenizer, add_bos):
    seq_len = 64
    dm = make_dm({"en": 1.0}, seq_len=seq_len, shuffle_shards=False, add_bos=add_bos)
    docs = []
    for i in range(2):
        docs += sample_texts(os.path.join(SAMPLE, "en", f"train-{i:05d}.jsonl"))
    expected = []
    for text in docs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected += ([tokenizer.bos_token_id] if add_bos else []) + ids + [tokenizer.eos_token_id]
    n = len(expected) // seq_len + 40  # run past the end of the epoch: the next epoch starts over
    got = []
    for sample in itertools.islice(dm.train_dataset().iterate(0), n):
        assert sample["input_ids"].shape == (seq_len,) and sample["input_ids"].dtype.is_floating_point is False
        assert sample["labels"].tolist() == sample["input_ids"].tolist()
        got += sample["input_ids"].tolist()
    assert got[: len(expected)] == expected
    assert got[len(expected):] == expected[: len(got) - len(expected)]  # epoch 2, same order (no shuffle)


def test_shuffled_epochs_permute_whole_shards(make_dm, tokenizer):
    dm = make_dm({"ja": 1.0}, seq_len=64, shuffle_shards=True)
    shards = []
    for i in range(2):
        ids = []
        for text in sample_texts(os.path.join(SAMPLE, "ja", f"train-{i:05d}.jsonl")):
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        shards.append(ids)
    epoch = len(shards[0]) + len(shards[1])
    got = []
    for sample in itertools.islice(dm.train_dataset().iterate(0), 6 * epoch // 64 + 1):
        got += sample["input_ids"].tolist()
    orders = []
    for e in range(6):
        chunk = got[e * epoch:(e + 1) * epoch]
        order = [0, 1] if chunk == shards[0] + shards[1] else [1, 0] if chunk == shards[1] + shards[0] else None
        assert order is not None, e
        orders.append(tuple(order))
    assert len(set(orders)) == 2  # the seeded permutation changes between epochs


@pytest.mark.parametrize("family,bos", [("llama", True), ("gemma3", True), ("qwen2-tied", False)])
def test_documents_start_with_bos_when_the_tokenizer_adds_it(tmp_path, family, bos):
    """Llama-3 (post-processor) and Gemma (add_bos_token) tokenizers add BOS, Qwen2's does not: the packed stream
    follows the tokenizer, in training and in validation; only a sequence cut inside a document lacks it."""
    from tiny_models import BOS_STYLE, real_like_tokenizer

    from elo_lightning.data import BilingualDataModule
    from tests.data.conftest import source

    tok_dir = tmp_path / "tok"
    tok = real_like_tokenizer(BOS_STYLE[family])
    tok.save_pretrained(tok_dir)
    dm = BilingualDataModule(str(tok_dir), [source("en")], seq_len=64, batch_size=2, shuffle_shards=False)
    docs = sample_texts(os.path.join(SAMPLE, "en", "train-00000.jsonl"))[:5]
    expected = []
    for text in docs:
        expected += ([1] if bos else []) + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    got = [t for s in itertools.islice(dm.train_dataset().iterate(0), len(expected) // 64) for t in s["input_ids"]]
    assert got == expected[: len(got)]
    assert dm.add_bos is bos and dm.state_dict()["add_bos"] is bos
    dm.setup("validate")
    first = dm._build_val_sets()[0][0]["input_ids"].tolist()
    assert (first[0] == 1) is bos
    # explicit choice wins over the tokenizer
    off = BilingualDataModule(str(tok_dir), [source("en")], seq_len=64, add_bos=False, shuffle_shards=False)
    assert next(off.train_dataset().iterate(0))["input_ids"][0].item() != 1
