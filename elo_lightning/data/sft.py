"""Supervised fine-tuning (SFT) data: chat conversations -> token ids with assistant-only labels.

Input: JSON lines, one conversation per line, in either layout

* ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|"user"|"assistant", "value": "..."}], "lang": "ko"}``
* OpenAI-style: ``{"messages": [{"role": "user"|"assistant"|"system", "content": "..."}], "lang": "en"}``
* Tagengo (lightblue/tagengo-gpt4): ``{"conversation": [{"from": "human"|"gpt", "value": "..."}],
  "language": "Korean"}`` -- the language *name* is mapped to its code (:data:`LANGUAGE_CODES`: ``Korean`` ->
  ``ko``, ``English`` -> ``en``, ...); a name not in the table is kept lower-cased (and counted among the dropped
  languages unless ``lang_weights`` names it).

Rendering uses the tokenizer's chat template (``tokenizer.apply_chat_template``); when the tokenizer has none,
:data:`FALLBACK_CHAT_TEMPLATE` is used: ``<|role|>\\ncontent{eos}\\n`` per turn (the shipped
``configs/tokenizer`` template is the same layout with ``<|end|>`` as end-of-turn token).

Labels are ``-100`` everywhere except on the tokens of assistant contents and the end-of-turn token right after
each assistant content (``<|end|>`` for the shipped template), so the model learns to answer and to stop, and
never learns to predict user/system text or template markup. Message contents are stripped of surrounding
whitespace before rendering.

Language mixing (one design): every record has a language -- its ``lang`` field, else its ``language`` field
(Tagengo; a name or a code), else the ``language`` of its :class:`SFTSource`, else ``"unknown"``.
``lang_weights`` (default ``{"ko": 1.0, "en": 1.0}``: target language and
English 1:1) selects languages and their shares of the training epoch; records of other languages are dropped
(counted in ``dropped_languages``). The epoch has as many examples as the selected languages have together;
a language whose share exceeds its data is oversampled (whole repeats plus a random remainder), one below
is subsampled without replacement. The mix is drawn once at ``setup`` from ``seed``; the train loader reshuffles
it every epoch. Validation holds out ``val_fraction`` of each language *before* mixing and is never resampled.

Exact resume: epoch ``e`` visits the training rows in an order fixed by ``(seed, e)``; every training batch carries
the position after it (epoch, rows of the epoch's order consumed by all ranks), the datamodule records the position
of the last trained batch (``on_before_batch_transfer``) and ``state_dict`` puts it in every checkpoint. After
``load_state_dict`` the train loader continues the same epoch's order where it stopped, so a killed and resumed
run trains the same batches as an uninterrupted one (no batch replayed, none skipped, later epochs unchanged). The
loader shards each epoch's order over ranks itself (rank ``r`` takes rows ``r, r + W, ...``), so Lightning does not
wrap it in another distributed sampler; a resume on another world size, batch size or training set is refused.

Malformed conversations are never trained on: they are counted per reason in ``datamodule.skipped``
(``invalid_json``, ``malformed``, ``empty``, ``unknown_role``, ``no_assistant_turn``, ``template_mismatch``,
``too_long``) and summarised at setup. A conversation longer than ``seq_len`` is, by default
(``overlong="truncate"``), cut at a turn boundary: the longest prefix that ends after a complete assistant turn
and fits is kept (whole turns, the same assistant-only labels as if it had been the whole conversation), counted
per language in ``datamodule.truncated``; when no such prefix fits it is skipped as ``too_long``.
``overlong="skip"`` skips every overlong conversation (``too_long``). Epochs are the Trainer's ``max_epochs``.

Batches (dicts passed straight to an HF causal LM):

* ``packing=False``: ``input_ids``, ``attention_mask``, ``labels``, right-padded to the batch max with the pad id
  (labels ``-100`` on pads).
* ``packing=True``: several conversations per row (greedy, up to ``seq_len`` tokens), ``input_ids``,
  ``labels``, ``position_ids`` restarting at 0 for each conversation and **no** ``attention_mask``: transformers
  (>=4.56, ``masking_utils.find_packed_sequence_indices``) then builds a block-diagonal causal mask from the
  position ids for sdpa/eager/flash attention, so conversations in one row never attend to each other (tested:
  logits of a packed row equal each conversation run alone). Row padding forms its own block, labels ``-100``.
  Packed batches also carry ``use_cache=False`` (a plain bool): transformers only detects packed sequences when
  no cache is passed, and ``config.use_cache`` defaults to True even in train mode, which would silently let
  packed conversations attend to each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from elo_lightning.dist import rank_and_world
from elo_lightning.errors import ELOError
from elo_lightning.tokenizer import FALLBACK_CHAT_TEMPLATE

__all__ = ["FALLBACK_CHAT_TEMPLATE", "IGNORE_INDEX", "SFTDataModule", "SFTSource"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}

SKIP_REASONS = (
    "invalid_json",
    "malformed",
    "empty",
    "unknown_role",
    "no_assistant_turn",
    "template_mismatch",
    "too_long",
)

DEFAULT_LANG_WEIGHTS = {"ko": 1.0, "en": 1.0}

OVERLONG_POLICIES = ("truncate", "skip")

# English language names (as Tagengo's ``language`` field spells them) -> ISO 639-1 codes.
LANGUAGE_CODES = {
    "afrikaans": "af", "albanian": "sq", "amharic": "am", "arabic": "ar", "armenian": "hy", "azerbaijani": "az",
    "basque": "eu", "belarusian": "be", "bengali": "bn", "bosnian": "bs", "bulgarian": "bg", "burmese": "my",
    "catalan": "ca", "chinese": "zh", "simplified chinese": "zh", "traditional chinese": "zh", "croatian": "hr",
    "czech": "cs", "danish": "da", "dutch": "nl", "english": "en", "esperanto": "eo", "estonian": "et",
    "filipino": "tl", "tagalog": "tl", "finnish": "fi", "french": "fr", "galician": "gl", "georgian": "ka",
    "german": "de", "greek": "el", "gujarati": "gu", "hebrew": "he", "hindi": "hi", "hungarian": "hu",
    "icelandic": "is", "indonesian": "id", "irish": "ga", "italian": "it", "japanese": "ja", "kannada": "kn",
    "kazakh": "kk", "khmer": "km", "korean": "ko", "kyrgyz": "ky", "lao": "lo", "latin": "la", "latvian": "lv",
    "lithuanian": "lt", "macedonian": "mk", "malay": "ms", "malayalam": "ml", "maltese": "mt", "marathi": "mr",
    "mongolian": "mn", "nepali": "ne", "norwegian": "no", "norwegian bokmal": "nb", "persian": "fa", "farsi": "fa",
    "polish": "pl", "portuguese": "pt", "punjabi": "pa", "romanian": "ro", "russian": "ru", "serbian": "sr",
    "sinhala": "si", "slovak": "sk", "slovenian": "sl", "somali": "so", "spanish": "es", "swahili": "sw",
    "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "turkish": "tr", "ukrainian": "uk", "urdu": "ur",
    "uzbek": "uz", "vietnamese": "vi", "welsh": "cy", "yoruba": "yo", "zulu": "zu",
}


@dataclass
class SFTSource:
    """One SFT file (JSON lines). ``language`` is used for records without a ``lang`` field."""

    path: str
    language: str | None = None


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------- parsing


def record_language(record: Any, default: str | None) -> str:
    """``lang`` (a code), else ``language`` (Tagengo: a name such as ``"Korean"``, or a code), else ``default``."""
    if isinstance(record, dict):
        if isinstance(record.get("lang"), str) and record["lang"].strip():
            return record["lang"].strip()
        language = record.get("language")
        if isinstance(language, str) and language.strip():
            name = language.strip().lower()
            return LANGUAGE_CODES.get(name, name)
    return default or "unknown"



def normalize_conversation(record: Any) -> list[dict[str, str]]:
    """ShareGPT (``conversations``/``from``/``value``), Tagengo (``conversation``/``from``/``value``) or
    ``messages``/``role``/``content`` -> role/content list.

    Raises ``_Skip(reason)`` for malformed records.
    """
    if not isinstance(record, dict):
        raise _Skip("malformed")
    if "conversations" in record or "conversation" in record:
        turns, role_key, content_key = record.get("conversations", record.get("conversation")), "from", "value"
    elif "messages" in record:
        turns, role_key, content_key = record["messages"], "role", "content"
    else:
        raise _Skip("malformed")
    if not isinstance(turns, list):
        raise _Skip("malformed")
    if not turns:
        raise _Skip("empty")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise _Skip("malformed")
        role = turn.get(role_key, turn.get("role", turn.get("from")))
        content = turn.get(content_key, turn.get("content", turn.get("value")))
        if not isinstance(role, str) or (content is not None and not isinstance(content, str)):
            raise _Skip("malformed")
        if role.lower() not in ROLE_MAP:
            raise _Skip("unknown_role")
        if content is None or not content.strip():
            raise _Skip("empty")
        messages.append({"role": ROLE_MAP[role.lower()], "content": content.strip()})
    if not any(m["role"] == "assistant" for m in messages):
        raise _Skip("no_assistant_turn")
    return messages


class ChatEncoder:
    """Renders conversations with a chat template and builds assistant-only labels."""

    def __init__(self, tokenizer: Any, seq_len: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        if getattr(tokenizer, "chat_template", None) is None:
            rank_zero_warn("tokenizer has no chat template; using elo_lightning.tokenizer.FALLBACK_CHAT_TEMPLATE")
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if not getattr(tokenizer, "is_fast", False):
            raise ELOError("SFT labels need a fast tokenizer (offset mapping); got a slow one")
        self.end_marker = self._detect_end_marker()

    def _detect_end_marker(self) -> str | None:
        sentinel = "ZZSENTINELZZ"
        text = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}])
        after = text[text.rindex(sentinel) + len(sentinel):]
        specials = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
        specials |= set((self.tokenizer.get_added_vocab() or {}).keys())
        candidates = [s for s in specials if s and after.startswith(s)]
        if candidates:
            return max(candidates, key=len)
        rank_zero_warn(
            "chat template puts no special end-of-turn token after assistant content; "
            "the model will not be trained to stop"
        )
        return None

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def encode(self, messages: list[dict[str, str]]) -> dict[str, list[int]]:
        text = self.render(messages)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for m in messages:
            pos = text.find(m["content"], cursor)
            if pos < 0:
                raise _Skip("template_mismatch")
            end = pos + len(m["content"])
            cursor = end
            if m["role"] == "assistant":
                if self.end_marker and text.startswith(self.end_marker, end):
                    end += len(self.end_marker)
                spans.append((pos, end))
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if len(ids) > self.seq_len:
            raise _Skip("too_long")
        labels = [IGNORE_INDEX] * len(ids)
        k = 0
        for j, (start, stop) in enumerate(enc["offset_mapping"]):
            if stop <= start:
                continue
            while k < len(spans) and spans[k][1] <= start:
                k += 1
            if k < len(spans) and start < spans[k][1] and stop > spans[k][0]:
                labels[j] = ids[j]
        if all(lab == IGNORE_INDEX for lab in labels):
            raise _Skip("template_mismatch")
        return {"input_ids": ids, "labels": labels}

    def encode_truncating(self, messages: list[dict[str, str]]) -> tuple[dict[str, list[int]], bool]:
        """:meth:`encode`, or, when too long, the longest prefix ending after a complete assistant turn that fits:
        ``(example, truncated)``. Raises ``_Skip("too_long")`` when not even the first exchange fits."""
        try:
            return self.encode(messages), False
        except _Skip as skip:
            if skip.reason != "too_long":
                raise
        ends = [i + 1 for i, m in enumerate(messages[:-1]) if m["role"] == "assistant"]
        for end in reversed(ends):
            try:
                return self.encode(messages[:end]), True
            except _Skip as skip:
                if skip.reason != "too_long":
                    raise
        raise _Skip("too_long")


# --------------------------------------------------------------------------------------------------- datasets


class _ListDataset(Dataset):
    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int | tuple[int, int, int]) -> dict[str, Any]:
        if isinstance(i, tuple):  # from _EpochOrderSampler: (epoch, rows consumed after this one, row)
            epoch, consumed, row = i
            return {**self.items[row], POSITION_KEY: (epoch, consumed)}
        return self.items[i]


POSITION_KEY = "sft_position"  # training batches: [epoch, rows of the epoch consumed by all ranks after this batch]
STATE_VERSION = 1


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``n`` training rows in ``epoch``: a permutation fixed by ``(seed, epoch)`` alone."""
    order = list(range(n))
    random.Random(f"elo-sft:{seed}:{epoch}").shuffle(order)
    return order


class _EpochOrderSampler(DistributedSampler):
    """Epoch ``e`` yields ``(e, consumed, row)`` for this rank's share of :func:`epoch_order` from position ``start``;
    each ``iter()`` is the next epoch. A ``DistributedSampler`` so that Lightning does not wrap it in another one
    (the order is already split over ranks: rank ``r`` takes positions ``r, r + W, ...``, the last group padded by
    wrapping around as ``DistributedSampler`` does). ``__len__`` is a whole epoch: after a resume mid-epoch Lightning
    counts the epoch's batches from the restored batch index, and the epoch ends where the uninterrupted one would."""

    def __init__(self, n: int, seed: int, epoch: int, start: int, rank: int, world: int):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.num_replicas, self.shuffle, self.drop_last = rank, world, True, False
        self.num_samples = math.ceil(n / world)
        self.total_size = self.num_samples * world

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Lightning's epoch hint is ignored: the position recorded from the trained batches is the truth."""

    def __iter__(self):
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        return self._positions(epoch, start)

    def _positions(self, epoch: int, start: int):
        order = epoch_order(self.n, self.seed, epoch)
        for p in range(start + self.rank, self.total_size, self.num_replicas):
            yield epoch, p - self.rank + self.num_replicas, order[p % self.n]


class _PositionCollate:
    """Wraps a collate function: strips each row's position and puts the batch's (the last) in the batch."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        positions = [x.pop(POSITION_KEY) for x in items]
        batch = self.collate_fn(items)
        batch[POSITION_KEY] = torch.tensor(max(positions), dtype=torch.long)
        return batch


_dist_info = rank_and_world  # module-level name: tests simulate other ranks by patching it


def pack_examples(examples: list[dict[str, Any]], seq_len: int) -> list[dict[str, list[int]]]:
    """Greedy next-fit packing: conversations in order, a new row when the next one does not fit."""
    rows: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        n = len(ex["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > seq_len:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        labels = list(ex["labels"])
        labels[0] = IGNORE_INDEX  # never predict across a conversation boundary
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += labels
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


def collate(items: list[dict[str, Any]], pad_id: int, packed: bool, language: str | None = None) -> dict[str, Any]:
    """Right-pad rows to the batch max. Unpacked rows get an attention_mask; packed rows get position_ids that
    restart per conversation (padding is its own block), from which transformers builds a block-diagonal mask.
    ``language``: the loader's language, carried by the batch (validation is logged by it)."""
    batch = _collate_rows(items, pad_id, packed)
    if language is not None:
        batch["language"] = language
    return batch


def _collate_rows(items: list[dict[str, Any]], pad_id: int, packed: bool) -> dict[str, Any]:
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    extra = torch.zeros((len(items), width), dtype=torch.long)  # attention_mask or position_ids
    for r, x in enumerate(items):
        n = len(x["input_ids"])
        ids[r, :n] = torch.tensor(x["input_ids"])
        labels[r, :n] = torch.tensor(x["labels"])
        if packed:
            extra[r, :n] = torch.tensor(x["position_ids"])
            extra[r, n:] = torch.arange(width - n)
        else:
            extra[r, :n] = 1
    if not packed:
        return {"input_ids": ids, "attention_mask": extra, "labels": labels}
    # use_cache=False is part of the batch on purpose: HF models default to use_cache=True (even in train mode),
    # which creates a DynamicCache and silently disables the packed-sequence (block-diagonal) mask.
    return {"input_ids": ids, "labels": labels, "position_ids": extra, "use_cache": False}


def mix_by_language(
    by_lang: dict[str, list[Any]], weights: dict[str, float], seed: int
) -> tuple[list[Any], dict[str, dict[str, int]]]:
    """Draw an epoch of ``sum(len)`` items where language ``l`` gets share ``w_l / sum(w)`` (seeded)."""
    rng = random.Random(seed)
    langs = [lang for lang in weights if by_lang.get(lang)]
    total = sum(len(by_lang[lang]) for lang in langs)
    wsum = sum(weights[lang] for lang in langs)
    mixed: list[Any] = []
    report: dict[str, dict[str, int]] = {}
    for lang in langs:
        pool = by_lang[lang]
        want = int(round(total * weights[lang] / wsum)) if wsum > 0 else 0
        reps, rem = divmod(want, len(pool))
        drawn = pool * reps + rng.sample(pool, rem)
        mixed += drawn
        report[lang] = {"available": len(pool), "drawn": len(drawn)}
    rng.shuffle(mixed)
    return mixed, report


# --------------------------------------------------------------------------------------------------- module


def check_arguments(files: list[SFTSource], lang_weights: dict[str, float], seq_len: int, batch_size: int,
                    num_workers: int, val_fraction: float) -> None:
    """Every SFTDataModule argument, before any file is opened. Raises ELOError."""
    if not files:
        raise ELOError("SFTDataModule: files is empty: give at least one JSONL file")
    if not lang_weights:
        raise ELOError("SFTDataModule: lang_weights is empty: give the languages to train on, e.g. {ko: 1, en: 1}")
    for lang, w in lang_weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ELOError(f"SFTDataModule: lang_weights[{lang!r}] must be a finite number >= 0, got {w!r}")
    if sum(lang_weights.values()) <= 0:
        raise ELOError(f"SFTDataModule: lang_weights sum to zero ({lang_weights}): nothing to train on")
    if seq_len < 2:
        raise ELOError(f"SFTDataModule: seq_len must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise ELOError(f"SFTDataModule: batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ELOError(f"SFTDataModule: num_workers must be >= 0, got {num_workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise ELOError(f"SFTDataModule: val_fraction must be in [0, 1), got {val_fraction}")


class SFTDataModule(L.LightningDataModule):
    """Bilingual SFT conversations with assistant-only labels, language mixing and optional packing.

    Args:
        tokenizer: tokenizer directory or id; ``None`` (default): ``elo fit`` takes the trained model's own, as for
            pretraining (a mismatch with the model's tokenizer is refused).
        files: JSONL sources; plain strings are accepted as ``SFTSource(path)``.
        lang_weights: languages to train on and their shares of the epoch (default ``{"ko": 1, "en": 1}``).
        seq_len: longest conversation in tokens (see ``overlong``) and packed row length.
        batch_size: rows per batch (conversations, or packed rows with ``packing``).
        num_workers: DataLoader workers.
        seed: split, mix and shuffle seed.
        packing: pack several conversations per row (``position_ids``, no ``attention_mask``).
        val_fraction: share of each language held out for validation (0 disables validation).
        val_per_language: return one validation loader per language (order: ``val_languages``) instead of one.
        overlong: ``truncate`` (default) keeps the longest prefix of an overlong conversation that ends after a
            complete assistant turn and fits; ``skip`` drops it. Both are counted (``truncated`` per language,
            ``skipped["too_long"]``).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        files: list[SFTSource] | None = None,
        lang_weights: dict[str, float] | None = None,
        seq_len: int = 2048,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 42,
        packing: bool = False,
        val_fraction: float = 0.05,
        val_per_language: bool = False,
        overlong: str = "truncate",
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # recorded in checkpoints and in the export's elo_export.json
        if overlong not in OVERLONG_POLICIES:
            raise ELOError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got {overlong!r}")
        self.overlong = overlong
        if files is None:
            files = [SFTSource("data/sample/sft/conversations.jsonl")]
        self.files = [SFTSource(f) if isinstance(f, (str, Path)) else f for f in files]
        self.files = [SFTSource(**f) if isinstance(f, dict) else f for f in self.files]
        self.tokenizer_path = tokenizer
        self.lang_weights = dict(DEFAULT_LANG_WEIGHTS if lang_weights is None else lang_weights)
        check_arguments(self.files, self.lang_weights, seq_len, batch_size, num_workers, val_fraction)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.packing = packing
        self.val_fraction = val_fraction
        self.val_per_language = val_per_language
        self.tokenizer: Any = None
        self.skipped: dict[str, int] = {}
        self.truncated: dict[str, int] = {}
        self.dropped_languages: dict[str, int] = {}
        self.mix: dict[str, dict[str, int]] = {}
        self.val_languages: list[str] = []
        self.train_examples: list[dict[str, Any]] = []
        self.val_examples: dict[str, list[dict[str, Any]]] = {}
        self._ready = False
        self._position = {"epoch": 0, "consumed": 0}  # after the last trained batch (see state_dict)
        self._loaded: dict | None = None  # state from load_state_dict, checked by train_dataloader

    # ----------------------------------------------------------------------------------------------- setup

    def load_tokenizer(self) -> Any:
        from elo_lightning.tokenizer import load_data_tokenizer

        if self.tokenizer is None:
            self.tokenizer = load_data_tokenizer(self.tokenizer_path, "SFTDataModule")
        return self.tokenizer

    def check_inputs(self) -> None:
        """The files exist and the tokenizer loads (the CLI calls it before the trainer creates any folder)."""
        self._check_files()
        self.load_tokenizer()

    def _check_files(self) -> None:
        for src in self.files:
            if not Path(src.path).is_file():
                raise ELOError(f"SFT file not found: {src.path}")

    @property
    def pad_id(self) -> int:
        tok = self.load_tokenizer()
        if tok.pad_token_id is not None:
            return tok.pad_token_id
        if tok.eos_token_id is not None:
            return tok.eos_token_id
        return 0

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        self._check_files()
        by_lang, skipped, dropped = self._read_by_language(ChatEncoder(self.load_tokenizer(), self.seq_len))
        self.skipped = {reason: skipped.get(reason, 0) for reason in SKIP_REASONS}
        self.dropped_languages = dict(dropped)
        if not any(by_lang.values()):
            raise ELOError(
                f"no usable SFT conversations in {[s.path for s in self.files]} for languages "
                f"{sorted(self.lang_weights)} (skipped: {dict(skipped)}, other languages: {dict(dropped)})"
            )
        train_by_lang = self._hold_out_validation(by_lang)
        self.val_examples = {k: v for k, v in self.val_examples.items() if v}
        self.val_languages = [lang for lang in self.lang_weights if lang in self.val_examples]
        self.train_examples, self.mix = mix_by_language(train_by_lang, self.lang_weights, self.seed)
        missing = [lang for lang in self.lang_weights if self.lang_weights[lang] > 0 and lang not in self.mix]
        if missing:
            rank_zero_warn(f"SFT: no usable conversations for languages {missing}")
        self._ready = True
        n_skip = sum(self.skipped.values())
        rank_zero_info(
            f"SFT data: {sum(len(v) for v in by_lang.values())} conversations kept "
            f"({', '.join(f'{k}={len(v)}' for k, v in sorted(by_lang.items()))}); "
            f"train mix {self.mix}; val {({k: len(v) for k, v in self.val_examples.items()})}; "
            f"truncated at a turn boundary {self.truncated}; "
            f"skipped {n_skip} {({k: v for k, v in self.skipped.items() if v})}; "
            f"other languages dropped {self.dropped_languages}"
        )

    def _read_by_language(self, encoder: ChatEncoder) -> tuple[dict[str, list[dict[str, Any]]], Counter, Counter]:
        """Encoded conversations of the selected languages, and the counts of skipped / other-language records."""
        skipped: Counter[str] = Counter()
        truncated: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for src in self.files:
            with open(src.path, "rb") as fh:  # bytes: a non-UTF-8 line is one invalid record, not a crash
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:  # JSONDecodeError, UnicodeDecodeError
                        skipped["invalid_json"] += 1
                        continue
                    lang = record_language(record, src.language)
                    if lang not in self.lang_weights:
                        dropped[lang] += 1
                        continue
                    try:
                        messages = normalize_conversation(record)
                        if self.overlong == "truncate":
                            example, cut = encoder.encode_truncating(messages)
                            truncated[lang] += int(cut)
                        else:
                            example = encoder.encode(messages)
                    except _Skip as skip:
                        skipped[skip.reason] += 1
                        continue
                    example["lang"] = lang
                    by_lang[lang].append(example)
        self.truncated = {lang: n for lang, n in sorted(truncated.items()) if n}
        return by_lang, skipped, dropped

    def _hold_out_validation(self, by_lang: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        """Set ``val_examples`` (``val_fraction`` of each language, seeded) and return the rest, per language."""
        rng = random.Random(self.seed)
        train_by_lang: dict[str, list[dict[str, Any]]] = {}
        self.val_examples = {}
        for lang in sorted(by_lang):
            items = list(by_lang[lang])
            rng.shuffle(items)
            n_val = int(round(self.val_fraction * len(items)))
            if self.val_fraction > 0 and n_val == 0 and len(items) > 1:
                n_val = 1
            self.val_examples[lang] = items[:n_val]
            train_by_lang[lang] = items[n_val:]
        return train_by_lang

    # ----------------------------------------------------------------------------------------------- loaders

    def _rows(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return pack_examples(examples, self.seq_len) if self.packing else examples

    def _loader(self, rows: list[dict[str, Any]], language: str | None = None) -> DataLoader:
        """A validation loader (in order); the train loader is :meth:`train_dataloader`'s."""
        return DataLoader(
            _ListDataset(rows),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.pad_id, packed=self.packing, language=language),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Rows in each epoch's order from the recorded position (0 at the start, the checkpoint's after a resume)."""
        self.setup("fit")
        rows = self._rows(self.train_examples)
        if self._loaded is not None:
            self._check_resume(self._loaded, rows)
            self._loaded = None
        rank, world = _dist_info()
        epoch, start = self._position["epoch"], self._position["consumed"]
        if start >= math.ceil(len(rows) / world) * world:  # stopped at the end of an epoch: the next one
            epoch, start = epoch + 1, 0
        return DataLoader(
            _ListDataset(rows),
            batch_size=self.batch_size,
            sampler=_EpochOrderSampler(len(rows), self.seed, epoch, start, rank, world),
            num_workers=self.num_workers,
            collate_fn=_PositionCollate(partial(collate, pad_id=self.pad_id, packed=self.packing)),
            persistent_workers=self.num_workers > 0,
        )

    # ----------------------------------------------------------------------------------------------- resume

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Record the position after a training batch (Lightning calls this right before the step trains it)."""
        if isinstance(batch, dict) and POSITION_KEY in batch:
            epoch, consumed = (int(v) for v in batch.pop(POSITION_KEY).reshape(-1)[:2])
            self._position = {"epoch": epoch, "consumed": consumed}
        return batch

    def _fingerprint(self, rows: list[dict[str, Any]]) -> str:
        key = (id(self.train_examples), len(rows))
        if getattr(self, "_fingerprint_cache", (None,))[0] != key:
            h = hashlib.sha256()
            for row in rows:
                h.update(json.dumps([row["input_ids"], row["labels"]]).encode())
            self._fingerprint_cache = (key, h.hexdigest()[:16])
        return self._fingerprint_cache[1]

    def state_dict(self) -> dict[str, Any]:
        """The loader's position after the last trained batch, and what it is a position in (plain JSON)."""
        rows = self._rows(self.train_examples) if self._ready else []
        return {"version": STATE_VERSION, **self._position, "seed": self.seed, "rows": len(rows),
                "rows_sha256": self._fingerprint(rows), "batch_size": self.batch_size, "world_size": _dist_info()[1],
                "packing": self.packing}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        if state.get("version") != STATE_VERSION:
            raise ELOError(f"cannot resume the SFT data: state version {state.get('version')} (expected "
                           f"{STATE_VERSION})")
        self._loaded = state
        self._position = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}

    def _check_resume(self, st: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        now = {"seed": self.seed, "batch_size": self.batch_size, "world_size": _dist_info()[1],
               "packing": self.packing, "rows": len(rows)}
        for key, value in now.items():
            if st[key] != value:
                raise ELOError(f"cannot resume the SFT data: {key} changed (checkpoint: {st[key]}, now: {value})")
        if st["rows_sha256"] != self._fingerprint(rows):
            raise ELOError("cannot resume the SFT data: the training conversations changed (same count, other "
                           "content: files, tokenizer, seq_len or language weights differ)")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        self.setup("validate")
        if self.val_per_language:
            return [self._loader(self._rows(self.val_examples[lang]), language=lang)
                    for lang in self.val_languages]
        merged = [ex for lang in self.val_languages for ex in self.val_examples[lang]]
        return self._loader(self._rows(merged))

    def summary(self) -> dict[str, Any]:
        """What setup kept, mixed and skipped (for logs/manifests)."""
        return {
            "mix": self.mix,
            "val": {k: len(v) for k, v in self.val_examples.items()},
            "skipped": dict(self.skipped),
            "truncated": dict(self.truncated),
            "overlong": self.overlong,
            "dropped_languages": dict(self.dropped_languages),
            "packing": self.packing,
            "seq_len": self.seq_len,
        }
