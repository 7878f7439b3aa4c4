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
