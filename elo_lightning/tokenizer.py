"""The small offline tokenizer shipped in ``configs/tokenizer/`` (no Hugging Face hub needed).

A byte-level BPE (GPT-2 style: bytes mapped to printable characters, no normalizer, no prefix space), trained
with ``tokenizers`` on the shipped train sample of all three languages, so any UTF-8 text encodes and decodes
back exactly. Special tokens take the first ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<|system|>`` 3,
``<|user|>`` 4, ``<|assistant|>`` 5, ``<|end|>`` 6. The chat template renders each message as
``<|role|>\\ncontent<|end|>\\n`` and, with ``add_generation_prompt``, appends ``<|assistant|>\\n``.

Rebuild the shipped one: ``python -m elo_lightning.tokenizer`` (deterministic: same files -> same tokenizer.json).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

from elo_lightning.errors import ELOError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *CHAT_TOKENS]


def chat_template(end_of_turn: str) -> str:
    """``<|role|>\\ncontent{end_of_turn}\\n`` per message (``end_of_turn``: a Jinja expression), then
    ``<|assistant|>\\n`` with ``add_generation_prompt``. The one chat layout of this package."""
    return (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + " + end_of_turn + " + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template("'<|end|>'")  # the shipped tokenizer's
FALLBACK_CHAT_TEMPLATE = chat_template("eos_token")  # for tokenizers without one (SFT data, judge answers)
DEFAULT_VOCAB_SIZE = 8192
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FILES = os.path.join(_REPO, "data", "sample", "pretrain", "*", "train-*.jsonl")
DEFAULT_OUTPUT = os.path.join(_REPO, "configs", "tokenizer")


def _iter_texts(files: list[str], text_field: str = "text"):
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if path.endswith(".txt"):
                    yield line.rstrip("\n")
                else:
                    yield json.loads(line)[text_field]


def train_tokenizer(files: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE, output_dir: str = DEFAULT_OUTPUT):
    """Train a byte-level BPE of exactly ``vocab_size`` tokens (specials included) on ``files``
    (.jsonl with a ``text`` field, or .txt one document per line) and save it as a
    ``PreTrainedTokenizerFast`` directory. Returns the HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(files)  # order matters for determinism
    if not files:
        raise ValueError("train_tokenizer: no training files")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_iter_texts(files), trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"trained vocab has {tok.get_vocab_size()} tokens, wanted {vocab_size} (corpus too small?)")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=CHAT_TOKENS,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000_000,
    )
    hf.chat_template = CHAT_TEMPLATE
    os.makedirs(output_dir, exist_ok=True)
    hf.save_pretrained(output_dir)
    _add_compat_files(output_dir)
    return hf


def _add_compat_files(output_dir: str) -> None:
    """transformers 5 writes ``tokenizer_class: TokenizersBackend`` and no special_tokens_map.json; name the
    class that exists in both 4.x and 5.x and write the map too, so older transformers load it as well."""
    cfg_path = os.path.join(output_dir, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": CHAT_TOKENS}
    with open(os.path.join(output_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, ensure_ascii=False)
        f.write("\n")


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` puts BOS first (Llama-3 through its post-processor, Gemma/Llama-2 through
    ``add_bos_token``; Qwen2 and the shipped demo tokenizer add none). Asked of the tokenizer itself, so any
    mechanism counts: the model was trained on what the tokenizer produces."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(plain) and with_special[0] == bos


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def load_data_tokenizer(name: str | None, owner: str):
    """A datamodule's tokenizer: ``None`` (the model's own, filled in by ``elo fit``) or a failed load is one line."""
    from transformers import AutoTokenizer

    if name is None:
        raise ELOError(f"{owner}: no tokenizer (`elo fit` takes the model's own; set data.init_args.tokenizer when "
                       "the model carries none)")
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any load failure is a bad argument
        raise ELOError(f"tokenizer {name!r} failed to load: {type(e).__name__}: {e}") from None


def own_tokenizer_dir(model_source: str) -> str | None:
    """The model directory when it carries a tokenizer (HF export, converted checkpoint); None otherwise
    (an architecture .json, a hub id, a directory of weights only)."""
    path = Path(model_source)
    if path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES):
        return str(path)
    return None


def _identity(tokenizer) -> dict:
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")}
    return {"vocab": tokenizer.get_vocab(), "specials": specials,
            "all_special": sorted(map(str, tokenizer.all_special_tokens)), "adds_bos": adds_bos(tokenizer)}


def tokenizer_difference(tokenizer, reference) -> str | None:
    """What differs between two tokenizers (vocabulary, special tokens, BOS behaviour); None when they agree."""
    mine, theirs = _identity(tokenizer), _identity(reference)
    if mine["vocab"] != theirs["vocab"]:
        diff = len(set(mine["vocab"].items()) ^ set(theirs["vocab"].items()))
        return f"vocabulary differs ({len(mine['vocab'])} vs {len(theirs['vocab'])} tokens, {diff} entries differ)"
    for key in ("specials", "all_special", "adds_bos"):
        if mine[key] != theirs[key]:
            return f"special tokens differ ({key}: {mine[key]} vs {theirs[key]})"
    return None


def check_tokenizer(tokenizer, model_source: str, vocab_size: int, allow_mismatch: bool = False,
                    name: str | None = None) -> None:
    """Refuse a tokenizer that does not belong to the model.

    A tokenizer larger than the model's vocabulary can never work. When the model directory carries its own
    tokenizer, another one (different vocabulary or special tokens, e.g. the 8192-token demo tokenizer left in a
    data config for a real model) is refused unless ``allow_mismatch`` (a deliberate vocabulary change)."""
    name = name or getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if len(tokenizer) > vocab_size:
        raise ELOError(f"tokenizer {name} has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}: "
                       "they do not belong together")
    own = own_tokenizer_dir(model_source)
    if own is None or allow_mismatch or Path(own).resolve() == Path(str(name)).resolve():
        return
    from transformers import AutoTokenizer

    why = tokenizer_difference(tokenizer, AutoTokenizer.from_pretrained(own))
    if why is not None:
        raise ELOError(f"tokenizer {name} is not the model's own ({own}): {why}; use the model's tokenizer "
                       "or set allow_tokenizer_mismatch: true")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild the shipped byte-level BPE tokenizer.")
    ap.add_argument("--files", nargs="*", default=None, help=f"training files (default: {DEFAULT_FILES})")
    ap.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    ap.add_argument("--output-dir", default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)
    files = args.files or sorted(glob.glob(DEFAULT_FILES))
    hf = train_tokenizer(files, args.vocab_size, args.output_dir)
    print(f"saved {len(hf)} tokens to {args.output_dir} (trained on {len(files)} files)")


if __name__ == "__main__":
    main()
