"""The shipped offline tokenizer: size, special tokens, exact round trip, compression, chat template."""

from __future__ import annotations

import json
import os

import pytest

from tests.data.conftest import SAMPLE, TOKENIZER, sample_texts

STRINGS = [
    "데이터 파일럿(피벗 테이블로도 알려짐)을 사용하면 대량의 데이터를 결합, 비교 및 분석할 수 있습니다.",
    "ファイルシステムをマウントするには、mount コマンドを使います。\n\n　全角スペースと半角 space。",
    "To be, or not to be, that is the question:\n\tWhether 'tis nobler in the mind to suffer",
    "  leading spaces, trailing spaces  \r\n mixed\u00a0nbsp, emoji 🙂, NFD 한 vs NFC 한, ﬁ ligature",
    "",
]


def test_size_and_special_tokens(tokenizer):
    assert len(tokenizer) == 8192
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    for tok in ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]:
        assert tok in tokenizer.all_special_tokens
        ids = tokenizer(tok, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, tok  # never split
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        assert os.path.isfile(os.path.join(TOKENIZER, name))


@pytest.mark.parametrize("text", STRINGS)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_round_trip_valid_documents(tokenizer):
    for lang in ["ko", "ja", "en"]:
        for text in sample_texts(os.path.join(SAMPLE, lang, "valid.jsonl"))[:15]:
            assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


# measured on the shipped valid split (held out from tokenizer training): ko 0.221, ja 0.244, en 0.326
TOKENS_PER_BYTE_MAX = {"ko": 0.25, "ja": 0.28, "en": 0.36}


@pytest.mark.parametrize("lang", ["ko", "ja", "en"])
def test_compression_on_held_out_text(tokenizer, lang):
    texts = sample_texts(os.path.join(SAMPLE, lang, "valid.jsonl"))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert n_tokens / n_bytes < TOKENS_PER_BYTE_MAX[lang], (lang, n_tokens / n_bytes)


def test_chat_template(tokenizer):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "안녕?"},
            {"role": "assistant", "content": "こんにちは"}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == "<|system|>\nbe brief<|end|>\n<|user|>\n안녕?<|end|>\n<|assistant|>\nこんにちは<|end|>\n"
    prompt = tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\n안녕?<|end|>\n<|assistant|>\n")


def test_train_tokenizer_is_deterministic(tmp_path):
    from elo_lightning.tokenizer import train_tokenizer

    f = tmp_path / "a.jsonl"
    texts = sample_texts(os.path.join(SAMPLE, "ko", "valid.jsonl"))[:20] + sample_texts(
        os.path.join(SAMPLE, "en", "valid.jsonl"))[:5]
    f.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    a = train_tokenizer([str(f)], 600, str(tmp_path / "a"))
    train_tokenizer([str(f)], 600, str(tmp_path / "b"))
    assert len(a) == 600
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_check_tokenizer_refuses_another_models_tokenizer(tmp_path):
    """A tokenizer smaller than the vocabulary used to pass; with the model's own tokenizer at hand, anything
    else is refused (unless explicitly allowed), a copy of the model's own is accepted."""
    from tiny_models import real_like_tokenizer, save_real_like
    from transformers import AutoTokenizer

    from elo_lightning.errors import ELOError
    from elo_lightning.tokenizer import check_tokenizer

    model = save_real_like(tmp_path / "model", "llama")  # vocabulary 512, its tokenizer 262 tokens, adds BOS
    other = tmp_path / "other"
    real_like_tokenizer("template", extra_tokens=10).save_pretrained(other)  # 272 tokens: fits the vocabulary
    no_bos = tmp_path / "no_bos"
    real_like_tokenizer(None).save_pretrained(no_bos)  # same vocabulary, no BOS
    copy = tmp_path / "copy"
    AutoTokenizer.from_pretrained(model).save_pretrained(copy)
    for bad, why in ((other, "vocabulary differs"), (no_bos, "special tokens differ")):
        with pytest.raises(ELOError, match=why):
            check_tokenizer(AutoTokenizer.from_pretrained(bad), str(model), 512)
        check_tokenizer(AutoTokenizer.from_pretrained(bad), str(model), 512, allow_mismatch=True)
    check_tokenizer(AutoTokenizer.from_pretrained(copy), str(model), 512)
    with pytest.raises(ELOError, match="vocabulary has 512"):  # too large is refused even when allowed
        check_tokenizer(AutoTokenizer.from_pretrained(TOKENIZER), str(model), 512, allow_mismatch=True)
    bare = tmp_path / "bare"  # a model directory without a tokenizer: only the size can be checked
    save_real_like(bare, "llama", tokenizer=False)
    check_tokenizer(AutoTokenizer.from_pretrained(other), str(bare), 512)
