"""Every bad input raises ELOError before training starts, with a message naming the problem."""

from __future__ import annotations

import json
import math

import pytest

from elo_lightning.data import BilingualDataModule, LanguageSource
from elo_lightning.errors import ELOError
from tests.data.conftest import TOKENIZER, source, train_glob


def _dm(languages, **kw):
    kw.setdefault("seq_len", 64)
    return BilingualDataModule(TOKENIZER, languages, **kw)


def _setup_error(languages, match, **kw):
    dm = _dm(languages, **kw)
    with pytest.raises(ELOError, match=match):
        dm.setup("fit")


@pytest.mark.parametrize("weights,match", [
    ({"en": -1.0, "ko": 9.0}, "'en': weight must be a finite number >= 0"),
    ({"en": math.nan, "ko": 9.0}, "'en': weight must be a finite number >= 0"),
    ({"en": math.inf, "ko": 9.0}, "'en': weight must be a finite number"),
    ({"en": 0.0, "ko": 0.0}, "weights sum to zero"),
])
def test_bad_weights(weights, match):
    with pytest.raises(ELOError, match=match):
        _dm([source(n, w) for n, w in weights.items()])


def test_duplicate_and_empty_languages():
    with pytest.raises(ELOError, match=r"duplicate language names \['ko'\]"):
        _dm([source("ko"), source("en"), source("ko")])
    with pytest.raises(ELOError, match="language list is empty"):
        _dm([])


def test_seq_len_too_small():
    with pytest.raises(ELOError, match="seq_len must be >= 2"):
        _dm([source("ko")], seq_len=1)


def test_missing_file_and_empty_glob(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    _setup_error([source("en"), LanguageSource("ko", [missing])], f"'ko': train file '{missing}' is missing")
    _setup_error([LanguageSource("ko", [str(tmp_path / "*.jsonl")])], "matches no file")
    _setup_error([LanguageSource("ko", [train_glob("ko")], valid=[missing])], "'ko': valid file .* is missing")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_shard(tmp_path, content):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    empty = tmp_path / "b.jsonl"
    empty.write_text(content)
    _setup_error([LanguageSource("ko", [str(tmp_path / "*.jsonl")])], f"shard '{empty}' is empty")


def test_missing_text_field(tmp_path):
    bad = tmp_path / "a.jsonl"
    bad.write_text(json.dumps({"content": "hello"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    _setup_error([LanguageSource("ko", [str(bad)])], "lacks the text field 'text'")
    _setup_error([LanguageSource("ko", [str(bad)], text_field="body")], "lacks the text field 'body'")


def test_parquet_without_column_and_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a", "b"]}), str(tmp_path / "a.parquet"))
    _setup_error([LanguageSource("ko", [str(tmp_path / "a.parquet")])], "lacks the text field \\(column\\) 'text'")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), str(tmp_path / "b.parquet"))
    _setup_error([LanguageSource("ko", [str(tmp_path / "b.parquet")])], "is empty")


def test_tokenizer_that_fails_to_load(tmp_path):
    dm = BilingualDataModule(str(tmp_path / "no-tokenizer"), [source("ko")], seq_len=64)
    with pytest.raises(ELOError, match="tokenizer .* failed to load"):
        dm.setup("fit")


def test_hub_id_argument_handling():
    from elo_lightning.data.sources import is_hub_spec, parse_hub_spec, resolve_entries

    assert is_hub_spec("hf://org/name") and is_hub_spec("org/name:ko") and not is_hub_spec("data/x.jsonl")
    spec = parse_hub_spec("hf://org/name:ko@train[:10%]", "train")
    assert (spec.path, spec.config, spec.split) == ("org/name", "ko", "train[:10%]")
    assert parse_hub_spec("org/name:ko", "validation").split == "validation"
    with pytest.raises(ELOError, match="ONE hub dataset id"):
        resolve_entries(["hf://org/name", train_glob("ko")], "ko", "train", "train")
    with pytest.raises(ELOError, match="hf://org/name"):  # a bare org/name that is no file: hint at hf://
        resolve_entries(["org/name"], "ko", "train", "train")


def test_validation_loaders(make_dm):
    dm = make_dm({"en": 1.0, "ko": 9.0}, val_max_sequences=10, val_batch_size=4, seq_len=64)
    dm.languages[0].valid = None
    dm.setup("fit")
    assert dm.val_languages == ["ko"]
    (loader,) = dm.val_dataloader()
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    assert all(b["input_ids"].shape[1] == 64 and set(b) == {"input_ids", "labels", "language"} for b in batches)
    assert {b["language"] for b in batches} == {"ko"}  # each validation batch names its language
    again = [b["input_ids"] for b in dm.val_dataloader()[0]]
    assert all((a == b["input_ids"]).all() for a, b in zip(again, batches))  # not shuffled
