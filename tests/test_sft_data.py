"""SFT datamodule: assistant-only labels token by token, skip accounting, padding, mixing, packing isolation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from elo_lightning.data.sft import IGNORE_INDEX, SFTDataModule, SFTSource
from elo_lightning.errors import ELOError

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "configs" / "tokenizer")
SAMPLE = ROOT / "data" / "sample" / "sft" / "conversations.jsonl"

GOOD = [
    {"conversations": [{"from": "human", "value": "안녕하세요?"}, {"from": "gpt", "value": "네, 안녕하세요! 무엇을 도와드릴까요?"}], "lang": "ko"},  # noqa: E501
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of France?"},
                       {"from": "gpt", "value": "Paris."}, {"from": "human", "value": "And Korea?"},
                       {"from": "gpt", "value": "Seoul."}], "lang": "en"},
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], "lang": "en"},
    {"conversations": [{"from": "user", "value": "김치는 뭐예요?"}, {"from": "assistant", "value": "한국의 전통 발효 음식입니다."}], "lang": "ko"},  # noqa: E501
]
BAD = [
    ("empty", {"conversations": [], "lang": "en"}),
    ("empty", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}], "lang": "en"}),
    ("no_assistant_turn", {"conversations": [{"from": "human", "value": "hello?"}], "lang": "en"}),
    ("unknown_role", {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}], "lang": "ko"}),
    ("malformed", {"text": "not a conversation", "lang": "en"}),
    ("malformed", {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "y"}], "lang": "en"}),
    ("too_long", {"conversations": [{"from": "human", "value": "long " * 400}, {"from": "gpt", "value": "ok"}], "lang": "en"}),  # noqa: E501
]


def _write(path: Path, records, extra_lines=()) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_labels_token_by_token(tmp_path, tok):
    """Expected labels built independently: tokenize template pieces separately, mark assistant pieces."""
    path = _write(tmp_path / "d.jsonl", [GOOD[1]])
    dm = SFTDataModule(TOKENIZER, [SFTSource(path)], lang_weights={"en": 1.0}, seq_len=256, val_fraction=0.0)
    dm.setup("fit")
    (ex,) = dm.train_examples
    pieces = [  # (text, trained?)
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nCapital of France?<|end|>\n<|assistant|>\n", False),
        ("Paris.", True), ("<|end|>", True),
        ("\n<|user|>\nAnd Korea?<|end|>\n<|assistant|>\n", False),
        ("Seoul.", True), ("<|end|>", True), ("\n", False),
    ]
    exp_ids, exp_labels = [], []
    for text, trained in pieces:
        ids = _ids(tok, text)
        exp_ids += ids
        exp_labels += ids if trained else [IGNORE_INDEX] * len(ids)
    assert ex["input_ids"] == exp_ids
    assert ex["labels"] == exp_labels
    end_id = tok.convert_tokens_to_ids("<|end|>")
    trained_ids = [i for i in ex["labels"] if i != IGNORE_INDEX]
    assert trained_ids.count(end_id) == 2 and tok.decode(trained_ids) == "Paris.<|end|>Seoul.<|end|>"


def test_korean_multibyte_labels(tmp_path, tok):
    path = _write(tmp_path / "d.jsonl", [GOOD[0]])
    dm = SFTDataModule(TOKENIZER, [path], lang_weights={"ko": 1.0}, seq_len=256, val_fraction=0.0)
    dm.setup()
    (ex,) = dm.train_examples
    trained = [i for i in ex["labels"] if i != IGNORE_INDEX]
    assert tok.decode(trained) == "네, 안녕하세요! 무엇을 도와드릴까요?<|end|>"
    untrained = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX]
    assert tok.decode(untrained) == "<|user|>\n안녕하세요?<|end|>\n<|assistant|>\n\n"


def test_skipped_counted_per_reason_and_never_trained(tmp_path):
    path = _write(tmp_path / "d.jsonl", GOOD + [r for _, r in BAD], extra_lines=["{not json"])
    other = _write(tmp_path / "ja.jsonl", [{"messages": [{"role": "user", "content": "こんにちは"},
                                                          {"role": "assistant", "content": "はい"}]}])
    dm = SFTDataModule(TOKENIZER, [SFTSource(path), SFTSource(other, language="ja")], seq_len=128,
                       val_fraction=0.0)
    dm.setup("fit")
    expected = {r: 0 for r in dm.skipped}
    for reason, _ in BAD:
        expected[reason] += 1
    expected["invalid_json"] = 1
    assert dm.skipped == expected
    assert dm.dropped_languages == {"ja": 1}
    assert {ex["lang"] for ex in dm.train_examples} == {"ko", "en"}
    assert all(len(ex["input_ids"]) <= 128 for ex in dm.train_examples)
    texts = {ex["lang"]: 0 for ex in dm.train_examples}
    assert sum(dm.mix[lang]["available"] for lang in dm.mix) == len(GOOD)
    assert texts


def test_padded_batches(tmp_path, tok):
    path = _write(tmp_path / "d.jsonl", GOOD)
    dm = SFTDataModule(TOKENIZER, [path], lang_weights={"ko": 1, "en": 1}, seq_len=256, batch_size=4,
                       val_fraction=0.0)
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)  # as Lightning: position popped
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max()
    for r, n in enumerate(lengths.tolist()):
        assert (batch["input_ids"][r, n:] == tok.pad_token_id).all()
        assert (batch["labels"][r, n:] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][r, :n] == 1).all()


def test_language_mix_follows_weights(tmp_path):
    records = [GOOD[0]] * 10 + [GOOD[2]] * 30
    path = _write(tmp_path / "d.jsonl", records)
    dm = SFTDataModule(TOKENIZER, [path], lang_weights={"ko": 1.0, "en": 1.0}, seq_len=128, val_fraction=0.1)
    dm.setup()
    assert {k: len(v) for k, v in dm.val_examples.items()} == {"ko": 1, "en": 3}
    assert dm.mix == {"ko": {"available": 9, "drawn": 18}, "en": {"available": 27, "drawn": 18}}
    dm3 = SFTDataModule(TOKENIZER, [path], lang_weights={"ko": 3.0, "en": 1.0}, seq_len=128, val_fraction=0.0)
    dm3.setup()
    assert dm3.mix["ko"]["drawn"] == 30 and dm3.mix["en"]["drawn"] == 10
    merged = dm.val_dataloader()
    assert "language" not in next(iter(merged))  # a merged loader names no language: it is logged as "all"
    dm_pl = SFTDataModule(TOKENIZER, [path], seq_len=128, val_fraction=0.1, val_per_language=True)
    loaders = dm_pl.val_dataloader()
    assert [len(dl.dataset) for dl in loaders] == [1, 3]
    assert [next(iter(dl))["language"] for dl in loaders] == dm_pl.val_languages == ["ko", "en"]
    with pytest.raises(ELOError, match="no usable"):
        SFTDataModule(TOKENIZER, [path], lang_weights={"ja": 1.0}).setup()


def test_packing_never_mixes_conversations(tmp_path, tok):
    path = _write(tmp_path / "d.jsonl", GOOD)
    dm = SFTDataModule(TOKENIZER, [path], lang_weights={"ko": 1, "en": 1}, seq_len=160, batch_size=2,
                       packing=True, val_fraction=0.0, seed=3)
    dm.setup()
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"} and batch["use_cache"] is False
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok))
    for attn in ("sdpa", "eager"):
        model = LlamaForCausalLM(cfg)
        model.config._attn_implementation = attn
        assert model.config.use_cache  # HF default; the batch itself must turn the cache off
        model.train()  # dropout is 0 in the tiny config; train mode like the real fit loop
        with torch.no_grad():
            packed = model(**batch).logits
            n_convs = 0
            for r in range(batch["input_ids"].shape[0]):
                pos = batch["position_ids"][r]
                starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
                for a, b in zip(starts[:-1], starts[1:]):
                    ids = batch["input_ids"][r, a:b]
                    if (ids == tok.pad_token_id).all():
                        continue  # padding block
                    n_convs += 1
                    alone = model(input_ids=ids[None]).logits[0]
                    torch.testing.assert_close(packed[r, a:b], alone, rtol=1e-4, atol=1e-4)
            assert n_convs > 2
        # sanity: without position_ids, or with a cache, the row WOULD mix (so the check above is meaningful)
        with torch.no_grad():
            mixed = model(input_ids=batch["input_ids"]).logits
            cached = model(**{**batch, "use_cache": True}).logits
        assert not torch.allclose(mixed, packed, atol=1e-4)
        assert not torch.allclose(cached, packed, atol=1e-4)
        out = model(**batch)
        assert torch.isfinite(out.loss)
    # labels survive packing: the first token of every conversation is never a target
    assert (batch["labels"][batch["position_ids"] == 0] == IGNORE_INDEX).all()


@pytest.mark.skipif(not SAMPLE.is_file(), reason="shipped SFT sample missing")
def test_shipped_sample_setup():
    dm = SFTDataModule(TOKENIZER, [str(SAMPLE)], seq_len=512, batch_size=2)
    dm.setup("fit")
    assert set(dm.mix) == {"ko", "en"} and dm.mix["ko"]["drawn"] == dm.mix["en"]["drawn"]
    assert dm.dropped_languages.get("ja", 0) > 0
    batch = next(iter(dm.train_dataloader()))
    assert (batch["labels"] != IGNORE_INDEX).any()


@pytest.mark.parametrize("kwargs,match", [
    ({"lang_weights": {}}, "lang_weights is empty"),
    ({"lang_weights": {"ko": float("nan")}}, r"lang_weights\['ko'\] must be a finite number >= 0"),
    ({"lang_weights": {"ko": float("inf")}}, r"lang_weights\['ko'\] must be a finite number >= 0"),
    ({"lang_weights": {"ko": -1.0, "en": 1.0}}, r"lang_weights\['ko'\] must be a finite number >= 0"),
    ({"lang_weights": {"ko": 0.0, "en": 0.0}}, "lang_weights sum to zero"),
    ({"seq_len": 0}, "seq_len must be >= 2"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"num_workers": -1}, "num_workers must be >= 0"),
    ({"files": []}, "files is empty"),
])
def test_out_of_range_arguments_refused_before_any_file_is_opened(kwargs, match):
    with pytest.raises(ELOError, match=match):
        SFTDataModule(tokenizer="/nonexistent", **{"files": ["/nonexistent.jsonl"], **kwargs})


def test_no_tokenizer_is_a_one_line_error_not_a_default_one(tmp_path):
    path = _write(tmp_path / "c.jsonl", GOOD)
    with pytest.raises(ELOError, match="no tokenizer"):
        SFTDataModule(files=[str(path)]).check_inputs()


def test_non_utf8_line_is_one_skipped_record(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in GOOD) + b'{"conversations": "caf\xe9"}\n')
    dm = SFTDataModule(tokenizer=TOKENIZER, files=[str(path)], lang_weights={"ko": 1.0, "en": 1.0}, val_fraction=0.0)
    dm.setup("fit")
    assert dm.skipped["invalid_json"] == 1 and len(dm.train_examples) == len(GOOD)


def test_tagengo_records_land_in_their_language(tmp_path):
    """lightblue/tagengo-gpt4 layout: ``conversation`` of from/value turns and a language *name* per record."""
    tagengo = [
        {"conversation_id": "a", "conversation": [{"from": "human", "value": "서울은 어떤 도시인가요?"},
                                                  {"from": "gpt", "value": "대한민국의 수도입니다."}],
         "language": "Korean"},
        {"conversation_id": "b", "conversation": [{"from": "human", "value": "Name a primary colour."},
                                                  {"from": "gpt", "value": "Red."}], "language": "English"},
        {"conversation_id": "c", "conversation": [{"from": "human", "value": "日本の首都は?"},
                                                  {"from": "gpt", "value": "東京です。"}], "language": "Japanese"},
        {"conversation_id": "d", "conversation": [{"from": "human", "value": "Hola"},
                                                  {"from": "gpt", "value": "¡Hola!"}], "language": "Spanish"},
    ]
    path = _write(tmp_path / "tagengo.jsonl", tagengo)
    dm = SFTDataModule(TOKENIZER, [SFTSource(path, language="en")], seq_len=128, val_fraction=0.0)
    dm.setup("fit")
    assert dm.mix == {"ko": {"available": 1, "drawn": 1}, "en": {"available": 1, "drawn": 1}}
    assert dm.dropped_languages == {"ja": 1, "es": 1}  # the record's language wins over the source's
    by_lang = {ex["lang"]: ex for ex in dm.train_examples}
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    assert "서울" in tok.decode(by_lang["ko"]["input_ids"]) and "Red." in tok.decode(by_lang["en"]["input_ids"])
    assert sum(dm.skipped.values()) == 0


def _long_conversation() -> dict:
    turns = []
    for k in range(4):
        turns += [{"from": "human", "value": f"Question {k}: " + "word " * 12},
                  {"from": "gpt", "value": f"Answer {k} " + "reply " * 12}]
    return {"conversations": turns, "lang": "en"}


@pytest.mark.parametrize("overlong", ["truncate", "skip"])
def test_overlong_conversations_truncated_at_a_turn_boundary_or_skipped(tmp_path, tok, overlong):
    record = _long_conversation()
    path = _write(tmp_path / "d.jsonl", [record, GOOD[2]])
    full = SFTDataModule(TOKENIZER, [path], lang_weights={"en": 1.0}, seq_len=4096, val_fraction=0.0)
    full.setup("fit")
    whole = max(full.train_examples, key=lambda ex: len(ex["input_ids"]))
    # a limit between two and three complete exchanges
    two = SFTDataModule(TOKENIZER, [_write(tmp_path / "two.jsonl", [{"conversations": record["conversations"][:4],
                                                                      "lang": "en"}])],
                        lang_weights={"en": 1.0}, seq_len=4096, val_fraction=0.0)
    two.setup("fit")
    (expected,) = two.train_examples
    limit = len(expected["input_ids"]) + 10
    assert limit < len(whole["input_ids"])

    dm = SFTDataModule(TOKENIZER, [path], lang_weights={"en": 1.0}, seq_len=limit, val_fraction=0.0,
                       overlong=overlong)
    dm.setup("fit")
    if overlong == "skip":
        assert dm.skipped["too_long"] == 1 and dm.truncated == {} and len(dm.train_examples) == 1
        return
    assert dm.truncated == {"en": 1} and dm.skipped["too_long"] == 0 and dm.summary()["truncated"] == {"en": 1}
    cut = max(dm.train_examples, key=lambda ex: len(ex["input_ids"]))
    # whole turns: exactly the first two exchanges, labels as if that were the whole conversation
    assert cut["input_ids"] == expected["input_ids"] and cut["labels"] == expected["labels"]
    assert cut["input_ids"] == whole["input_ids"][: len(cut["input_ids"])]
    trained = tok.decode([i for i in cut["labels"] if i != IGNORE_INDEX])
    assert trained.startswith("Answer 0") and "Answer 1" in trained and "Answer 2" not in trained
    assert trained.endswith("<|end|>")  # ends after a complete assistant turn, stop token trained
    assert "Question 1" in tok.decode(cut["input_ids"]) and "Question 2" not in tok.decode(cut["input_ids"])


def test_overlong_policy_is_validated():
    with pytest.raises(ELOError, match="overlong"):
        SFTDataModule(TOKENIZER, overlong="cut")


# -- exact resume: the loader's position is part of the checkpoint ---------------------------------------------------

def _convs(n: int) -> list[dict]:
    """n distinct short conversations, alternating ko/en."""
    return [{"conversations": [{"from": "human", "value": f"question {i}?"}, {"from": "gpt", "value": f"answer {i}."}],
             "lang": "ko" if i % 2 else "en"} for i in range(n)]


def _epoch_batches(dm, loader, limit=None):
    """One pass over ``loader`` as Lightning does it: the datamodule hook sees each batch before it is trained."""
    out = []
    for batch in loader:
        batch = dm.on_before_batch_transfer(batch, 0)
        assert "sft_position" not in batch
        out.append(batch["input_ids"].clone())
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("stop", [2, 4, 5, 9])  # mid-epoch 0, end of epoch 0 (4 batches), mid-epoch 1, 2
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, stop):
    path = _write(tmp_path / "d.jsonl", _convs(14))

    def make():
        return SFTDataModule(TOKENIZER, [path], seq_len=64, batch_size=4, val_fraction=0.0)

    dm = make()
    loader = dm.train_dataloader()
    reference = [b for _ in range(3) for b in _epoch_batches(dm, loader)]
    assert len(reference) == 12  # 14 rows, batches of 4: 4 per epoch (the last has 2 rows)

    first = make()
    loader = first.train_dataloader()
    head: list = []
    while len(head) < stop:
        head += _epoch_batches(first, loader, limit=stop - len(head))
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint holds it as plain data
    resumed = make()
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    tail: list = []
    while len(head) + len(tail) < len(reference):
        tail += _epoch_batches(resumed, loader)
    got = head + tail
    assert len(got) == len(reference)
    for i, (a, b) in enumerate(zip(got, reference)):
        assert torch.equal(a, b), f"batch {i} differs after a resume at batch {stop}"


def test_every_epoch_visits_every_row_once_in_its_own_order(tmp_path):
    dm = SFTDataModule(TOKENIZER, [_write(tmp_path / "d.jsonl", _convs(14))], seq_len=64, batch_size=4,
                       val_fraction=0.0)
    loader = dm.train_dataloader()
    epochs = [[tuple(r[r != dm.pad_id].tolist()) for b in _epoch_batches(dm, loader) for r in b] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 14
    assert epochs[0] != epochs[1]


def test_ranks_share_the_epoch_without_overlap(tmp_path, monkeypatch):
    from elo_lightning.data import sft

    path = _write(tmp_path / "d.jsonl", _convs(14))
    seen = []
    for rank in range(2):
        monkeypatch.setattr(sft, "_dist_info", lambda r=rank: (r, 2))
        dm = SFTDataModule(TOKENIZER, [path], seq_len=64, batch_size=2, val_fraction=0.0)
        seen.append({tuple(r[r != dm.pad_id].tolist()) for b in _epoch_batches(dm, dm.train_dataloader()) for r in b})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 14


@pytest.mark.parametrize("change,match", [(dict(batch_size=2), "batch_size"), (dict(seed=7), "seed"),
                                          (dict(extra=1), "rows")])
def test_resume_with_other_data_is_refused(tmp_path, change, match):
    path = _write(tmp_path / "d.jsonl", _convs(14))
    other = _write(tmp_path / "e.jsonl", _convs(15))
    dm = SFTDataModule(TOKENIZER, [path], seq_len=64, batch_size=4, val_fraction=0.0)
    _epoch_batches(dm, dm.train_dataloader(), limit=2)
    kw = dict(seq_len=64, batch_size=change.get("batch_size", 4), val_fraction=0.0, seed=change.get("seed", 42))
    resumed = SFTDataModule(TOKENIZER, [other if "extra" in change else path], **kw)
    resumed.load_state_dict(dm.state_dict())
    with pytest.raises(ELOError, match=f"cannot resume the SFT data: {match}"):
        resumed.train_dataloader()


def test_trainer_crash_and_resume_trains_the_same_batches(tmp_path):
    """A run killed after step k (its step-k checkpoint) and resumed trains bit-identical losses to the full run."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from elo_lightning.checkpoint import AtomicCheckpointIO
    from elo_lightning.modules import SFTModule
    from elo_lightning.optim import OptimizerConfig

    class Losses(Callback):
        def __init__(self):
            self.by_step = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.by_step[trainer.global_step] = outputs["loss"].item()

    path = _write(tmp_path / "d.jsonl", _convs(14))

    def run(max_steps, ckpt_path=None, every=None):
        losses = Losses()
        callbacks = [losses] + ([ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1)]
                                if every else [])
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, callbacks=callbacks,
                            enable_checkpointing=bool(every), plugins=[AtomicCheckpointIO()],
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        module = SFTModule(model=str(ROOT / "configs/models/tiny-llama.json"), tokenizer=TOKENIZER,
                           optimizer=OptimizerConfig(name="adamw", lr=1e-3, warmup_steps=2), measure_flops=False)
        dm = SFTDataModule(TOKENIZER, [path], seq_len=64, batch_size=4, val_fraction=0.0)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return losses.by_step

    reference = run(10, every=3)  # 4 batches per epoch: checkpoints mid-epoch 0 (step 3) and mid-epoch 1 (step 6)
    assert sorted(reference) == list(range(1, 11))
    for k in (3, 6):
        (ckpt,) = (tmp_path / "ckpt").glob(f"*step={k}.ckpt")
        resumed = run(10, ckpt_path=str(ckpt))
        assert sorted(resumed) == list(range(k + 1, 11))
        assert [resumed[s] for s in sorted(resumed)] == [reference[s] for s in range(k + 1, 11)], f"resume at {k}"
