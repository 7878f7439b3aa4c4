"""Held-out perplexity and bits-per-byte per language.

Each language's documents (``.jsonl`` with a ``text_field``, or ``.txt`` with one document per non-empty line)
are laid out exactly as the training stream packs them (``BilingualDataModule``): tokenized without special
tokens, each document ``[bos] doc [eos]`` with BOS exactly when the tokenizer adds one (Llama-3, Gemma) or
``add_bos`` says so, ``doc [eos]`` otherwise; the no-BOS stream starts with one ``eos`` so its first document
is conditioned like every other (after a separator). The stream is cut into windows of ``seq_len`` tokens
overlapping by one token, so every token after the first is predicted exactly once with in-window context; a
window that starts in the middle of a document has no BOS, as in training. At most ``max_sequences`` windows
are evaluated (``None``: all).

* ``loss``: mean next-token NLL (nats) over all predicted tokens (document separators included);
* ``perplexity``: ``exp(loss)``;
* ``bits_per_byte``: total NLL / ln 2 / UTF-8 bytes of the predicted text (each character's bytes are
  attributed to the first token that covers it via the tokenizer's offsets; separators count 0 bytes), which
  is comparable across tokenizers;
* ``tokens`` / ``bytes``: predicted tokens and their bytes.

Deterministic: eval mode, no grad, fixed window order. Aggregation uses ``torchmetrics`` (``SumMetric``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.aggregation import SumMetric

from elo_lightning.errors import ELOError
from elo_lightning.models import resolve_dtype


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ELOError(f"evaluation file not found: {path}")
    docs: list[str] = []
    with open(path, encoding="utf-8") as fh:
        if path.suffix in (".jsonl", ".json"):
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise ELOError(f"{path}:{n} has no field {text_field!r}")
                if record[text_field]:
                    docs.append(record[text_field])
        else:
            docs = [line.rstrip("\n") for line in fh if line.strip()]
    return docs


def _doc_tokens(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids and the UTF-8 byte count attributed to each token (bytes partition the text exactly)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    ids = list(enc["input_ids"])
    if "offset_mapping" in enc:
        nbytes, covered = [], 0
        for start, stop in enc["offset_mapping"]:
            start = max(start, covered)
            nbytes.append(len(text[start:stop].encode("utf-8")) if stop > start else 0)
            covered = max(covered, stop)
        rest = len(text[covered:].encode("utf-8"))
        if rest and nbytes:
            nbytes[-1] += rest
        return ids, nbytes
    # slow tokenizer: decode per token (approximate for tokens that split a character)
    return ids, [len(tokenizer.decode([i]).encode("utf-8")) for i in ids]


def build_windows(
    tokenizer: Any, docs: list[str], seq_len: int, max_sequences: int | None, add_bos: bool | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Windows of ``seq_len`` ids (overlap 1) and, per window, the byte counts of its predicted tokens.

    ``add_bos``: BOS before every document; ``None`` = when the tokenizer adds BOS (the training default)."""
    from elo_lightning.tokenizer import adds_bos

    if seq_len < 2:
        raise ELOError(f"seq_len must be >= 2, got {seq_len}")
    if add_bos is None:
        add_bos = adds_bos(tokenizer)
    if add_bos and tokenizer.bos_token_id is None:
        raise ELOError("add_bos=True but the tokenizer has no bos token")
    bos = [tokenizer.bos_token_id] if add_bos else []
    sep_id = tokenizer.eos_token_id
    stream: list[int] = [sep_id] if not add_bos and sep_id is not None else []
    stream_bytes: list[int] = [0] * len(stream)
    needed = None if max_sequences is None else max_sequences * (seq_len - 1) + 1
    for doc in docs:
        ids, nbytes = _doc_tokens(tokenizer, doc)
        stream += bos + ids
        stream_bytes += [0] * len(bos) + nbytes
        if sep_id is not None:
            stream.append(sep_id)
            stream_bytes.append(0)
        if needed is not None and len(stream) >= needed:
            break
    windows, window_bytes = [], []
    step = seq_len - 1
    pos = 0
    while pos + 1 < len(stream):
        if max_sequences is not None and len(windows) >= max_sequences:
            break
        windows.append(stream[pos : pos + seq_len])
        window_bytes.append(stream_bytes[pos + 1 : pos + seq_len])
        pos += step
    return windows, window_bytes


def _load(model: Any, tokenizer: Any, dtype: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, (str, Path)):
        path = str(model)
        if not Path(path).is_dir():
            raise ELOError(f"model directory not found: {path}")
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto" if dtype is None else resolve_dtype(dtype))
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if tokenizer is None:
        raise ELOError("a tokenizer is required when model is an object")
    return model, tokenizer


def _score_windows(model: Any, windows: list[list[int]], window_bytes: list[list[int]], batch_size: int, pad_id: int,
                   dev: torch.device) -> dict[str, float]:
    """NLL summed over every predicted token of the windows, in batches; the per-language metrics from it."""
    nll_sum, tok_sum, byte_sum = SumMetric(), SumMetric(), SumMetric()
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        width = max(len(w) for w in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, w in enumerate(chunk):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum",
        )
        nll_sum.update(nll.detach().cpu().double())
        tok_sum.update(float((targets != -100).sum().item()))
        byte_sum.update(float(sum(sum(x) for x in window_bytes[b : b + batch_size])))
    total_nll = float(nll_sum.compute())
    n_tok = int(tok_sum.compute())
    n_bytes = int(byte_sum.compute())
    loss = total_nll / n_tok
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total_nll / math.log(2) / n_bytes if n_bytes else float("nan"),
        "tokens": n_tok,
        "bytes": n_bytes,
        "sequences": len(windows),
    }


@torch.no_grad()
def evaluate_perplexity(
    model: Any,
    tokenizer: Any,
    files_by_lang: dict[str, list[str]],
    seq_len: int = 512,
    max_sequences: int | None = 64,
    batch_size: int = 8,
    text_field: str = "text",
    dtype: str | None = None,
    device: str | torch.device | None = None,
    add_bos: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Per-language ``{"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}`` of a causal LM.

    Args:
        model: an HF causal LM object or a model directory.
        tokenizer: tokenizer object or directory (``None``: the model directory's tokenizer).
        files_by_lang: ``{"ko": ["data/sample/pretrain/ko/valid.jsonl"], "en": [...]}``.
        seq_len: window length in tokens.
        max_sequences: windows per language (``None``: the whole files).
        batch_size: windows per forward pass.
        text_field: JSONL field holding the text.
        dtype: weights dtype when ``model`` is a path (``None``: the checkpoint's own, e.g. bf16).
        device: where to run (default: the model's device).
        add_bos: BOS before every document (``None``: when the tokenizer adds one, as the training stream).
    """
    model, tokenizer = _load(model, tokenizer, dtype)
    was_training = model.training
    model.eval()
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: dict[str, dict[str, float]] = {}
    try:
        for lang, files in files_by_lang.items():
            docs = [d for f in files for d in read_documents(f, text_field)]
            windows, window_bytes = build_windows(tokenizer, docs, seq_len, max_sequences, add_bos=add_bos)
            if not windows:
                raise ELOError(f"no text to evaluate for language {lang!r} in {files}")
            results[lang] = _score_windows(model, windows, window_bytes, batch_size, pad_id, dev)
    finally:
        if was_training:
            model.train()
    return results
