"""Shared fixtures for the data tests: the shipped sample and tokenizer, and a datamodule factory."""

from __future__ import annotations

import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(REPO, "data", "sample", "pretrain")
TOKENIZER = os.path.join(REPO, "configs", "tokenizer")


def train_glob(lang: str) -> str:
    return os.path.join(SAMPLE, lang, "train-*.jsonl")


def valid_file(lang: str) -> str:
    return os.path.join(SAMPLE, lang, "valid.jsonl")


def sample_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def source(lang: str, weight: float = 1.0, valid: bool = True):
    from elo_lightning.data import LanguageSource

    return LanguageSource(name=lang, train=[train_glob(lang)], valid=[valid_file(lang)] if valid else None,
                          weight=weight)


@pytest.fixture
def make_dm():
    from elo_lightning.data import BilingualDataModule

    def make(weights: dict[str, float] | None = None, languages=None, **kw):
        if languages is None:
            languages = [source(n, w) for n, w in (weights or {"en": 1.0, "ko": 9.0}).items()]
        kw.setdefault("seq_len", 64)
        kw.setdefault("batch_size", 4)
        return BilingualDataModule(TOKENIZER, languages, **kw)

    return make


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)
