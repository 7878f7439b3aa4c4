"""BilingualDataModule: packed, token-mixed, exactly resumable pre-training stream over several languages.

It knows nothing of ELO: it turns per-language text shards into fixed-length causal-LM samples.

Training stream (``_PackedStream``, an IterableDataset)
-------------------------------------------------------
* **Packing.** Each document is tokenized without special tokens, EOS is appended and BOS prepended when the
  tokenizer adds one (``add_bos=None``, the default, follows the tokenizer: Llama-3 and Gemma add BOS and their
  models were trained with it, Qwen2 adds none; ``True``/``False`` override). Documents are concatenated and cut
  into ``seq_len`` sequences, so every document starts with BOS where the model expects it. A document longer
  than the room left continues in the next sequence: a sequence that starts in the middle of a document is the
  only one that does not start with BOS (as in every packed pre-training stream). A sample is
  ``{"input_ids": LongTensor[seq_len], "labels": same}`` (HF causal LMs shift the labels themselves) plus
  ``stream_id``/``stream_state`` (see resume).
* **Infinite.** Each language cycles over its shards; every pass is an *epoch* of that language. With
  ``shuffle_shards`` the shard order of each epoch is a permutation seeded by (seed, language, epoch). Documents
  inside a shard keep their file order (shards are expected to be pre-shuffled). The Trainer's ``max_steps``
  sets the training length.
* **Mixing, deterministic, in a chosen unit** (``mix_by``: ``bytes`` - the paper's, whose 1:9 is in GB of text -,
  ``tokens`` or ``documents``). Weights are ratios (normalised). Before each document the stream picks the
  language with the largest *deficit* ``w_l * T - c_l`` (``c_l`` the amount taken from language ``l`` so far in
  that unit, ``T`` their sum; ties: larger weight, then list order). Unlike sampling, this keeps every prefix of
  the stream within one document of the target ratio, needs no random state to resume (the decision is a
  function of the per-language counts, which are in the state), and a language with weight 0 is never read.
  The unit matters because documents differ in length and languages in bytes per token (Korean UTF-8 text has
  ~3 bytes per character). Counts are kept in all three units, so the achieved shares can be logged in each.
* **Budgets** (``budget``: ``9GB``, ``500MB``, ``100M tokens``; see :mod:`elo_lightning.data.budget`). In
  ``setup("fit")`` the datamodule measures bytes per token on the first ``budget_documents`` documents of
  its stream (the run's tokenizer, mixing and start position) and sets the Trainer's ``max_steps`` before
  ``configure_optimizers`` reads ``estimated_stepping_batches`` for the schedule.
* **Continuing another run's stream** (``start_after``: an export directory with ``stream_state.json``, that
  file, or a Lightning ``.ckpt``). Every stream starts after the documents the other run trained on, with
  fresh counts, so e.g. alignment reads text ELO did not (the paper's *additional* 1 GB). With the same number
  of streams each continues its own cursor; otherwise all start at the furthest position any stream reached
  (unread documents before it are skipped). A language the other run read past the end of (its epoch > 0),
  or one this run would wrap around into already-read text, is an error.
* **Distributed ranks x dataloader workers.** Global stream id ``s = rank * num_workers + worker``,
  ``W = world_size * num_workers``. Per language: if its shard count is a multiple of ``W`` the stream reads
  whole shards (``perm[s::W]``), else every ``W``-th document (a per-language-per-epoch counter of
  non-blank records, ``counter % W == s``) - the rule of ``datasets.distributed.split_dataset_by_node``.
  Streams never share a document within an epoch, and together they cover all of them.
* **Exact resume without replay.** A stream's state is small JSON: per language a cursor
  ``{"epoch", "shard", "pos", "doc"}`` (shard index in that epoch's order, byte offset of the next line for
  jsonl/txt or row index for parquet, next document counter), the amount taken per language in every unit
  (``counts``: bytes, tokens, documents), and the carry-over
  ``{"lang", "at": <cursor of the document being split>, "offset": <tokens of it already used>}``.
  Every sample carries the state *after* it; ``on_before_batch_transfer`` (called by Lightning only for the
  batch about to be trained, not for prefetched ones) pops those keys and records the latest state per stream
  and which worker's batch comes next (DataLoader workers yield round-robin). ``state_dict()`` returns them
  (all-gathered over ranks); after ``load_state_dict()`` the next ``train_dataloader()`` resumes every stream
  from its state and rotates the worker->stream mapping so the batch order is that of an uninterrupted run.
* **Hub sources** (``hf://org/name[:config][@split]``): streamed with ``datasets`` and
  ``split_dataset_by_node``; their cursor position is the example count, resumed with ``.skip(n)``.

Validation: one map-style dataset per language with ``valid`` files: its first ``val_max_sequences`` packed
sequences, read in file order (no shuffling, no mixing); ``val_dataloader()`` returns one DataLoader per
language in ``val_languages`` order, and every validation batch carries its ``language``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from elo_lightning.data.budget import BudgetPlan, parse_budget, plan_budget
from elo_lightning.data.sources import (
    HubSpec,
    ShardReader,
    check_hub,
    check_shard,
    iter_hub_records,
    resolve_entries,
)
from elo_lightning.dist import rank_and_world
from elo_lightning.errors import ELOError

STATE_VERSION = 2  # 2: counts in bytes, tokens and documents (1 had tokens only)
MIX_UNITS = ("bytes", "tokens", "documents")
STREAM_STATE = "stream_state.json"  # written beside a stage's export; read by ``start_after``


@dataclass
class LanguageSource:
    """One language of the mixture.

    ``train``/``valid``: local globs/paths (.jsonl/.json lines, .txt one document per line, .parquet, or a
    folder of those) or ONE hub dataset id ``hf://org/name[:config][@split]`` / ``org/name:config``.
    ``weight``: mixing ratio in the datamodule's ``mix_by`` unit (normalised over languages).
    ``text_field``: JSON key / parquet column.
    """

    name: str
    train: list[str] = field(default_factory=list)
    valid: list[str] | None = None
    weight: float = 1.0
    text_field: str = "text"


# --- distributed / worker info (module-level so tests can monkeypatch them) ------------------------------

_dist_info = rank_and_world  # module-level name: tests simulate other ranks by patching it


def _worker_info() -> tuple[int, int]:
    """(worker_id, num_workers) of the current DataLoader worker, (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _perm_seed(seed: int, name: str, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{epoch}".encode()).digest()[:8], "little")


# --- per-language document reader -------------------------------------------------------------------------

class _LanguageReader:
    """Documents of one language for one global stream, cycling over epochs, with a resumable cursor."""

    def __init__(self, name: str, shards: list[str] | HubSpec, text_field: str, stream_id: int,
                 num_streams: int, seed: int, shuffle: bool, last_epoch: int | None = None):
        self.name, self.shards, self.text_field = name, shards, text_field
        self.sid, self.W, self.seed, self.shuffle = stream_id, num_streams, seed, shuffle
        self.last_epoch = last_epoch  # continuing another run: wrapping past it would re-read that run's text
        self.hub = isinstance(shards, HubSpec)
        self.whole_shards = self.hub or len(shards) % num_streams == 0
        self.reader = ShardReader(text_field)
        self.cursor = {"epoch": 0, "shard": 0, "pos": 0, "doc": 0}

    def shard_order(self, epoch: int) -> list:
        if self.hub:
            return [self.shards]
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(_perm_seed(self.seed, self.name, epoch)).shuffle(order)
        if self.whole_shards:
            order = order[self.sid::self.W]
        return [self.shards[i] for i in order]

    def _records(self, shard, pos: int, epoch: int):
        if self.hub:
            return iter_hub_records(shard, self.text_field, self.sid, self.W, skip=pos, epoch=epoch)
        return self.reader.records(shard, pos)

    def _text(self, shard, payload, pos: int) -> str:
        return payload if self.hub else self.reader.text(shard, payload, pos)

    def documents(self, cursor: dict | None = None) -> Iterator[tuple[dict, str]]:
        """Yield ``(cursor_of_this_document, text)`` forever; ``self.cursor`` is the position after it.

        The start cursor is set now, not on the first ``next()``: a resumed language that is not read before the
        next state is taken must still report where it stands."""
        if cursor is not None:
            self.cursor = dict(cursor)
        return self._documents()

    def _documents(self) -> Iterator[tuple[dict, str]]:
        epoch, shard_i, pos, doc = (self.cursor[k] for k in ("epoch", "shard", "pos", "doc"))
        fresh_epoch = shard_i == 0 and pos == 0
        while True:
            found = False
            order = self.shard_order(epoch)
            while shard_i < len(order):
                shard = order[shard_i]
                for start, end, payload in self._records(shard, pos, epoch):
                    counter = doc
                    doc += 1
                    if self.whole_shards or counter % self.W == self.sid:
                        text = self._text(shard, payload, start)
                        found = True
                        self.cursor = {"epoch": epoch, "shard": shard_i, "pos": end, "doc": doc}
                        yield {"epoch": epoch, "shard": shard_i, "pos": start, "doc": counter}, text
                shard_i, pos = shard_i + 1, 0
            if fresh_epoch and not found:
                raise ELOError(f"language {self.name!r}: stream {self.sid} of {self.W} got no document in a whole "
                               f"epoch (fewer documents than dataloader streams?)")
            epoch, shard_i, pos, doc, fresh_epoch = epoch + 1, 0, 0, 0, True
            if self.last_epoch is not None and epoch > self.last_epoch:
                raise ELOError(f"language {self.name!r}: stream {self.sid} of {self.W} ran out of documents the run "
                               f"it continues (start_after) did not read; give it more shards or a smaller budget")

    def text_at(self, cursor: dict) -> str:
        """Re-read the document at ``cursor`` (the carry-over on resume) without moving ``self.cursor``."""
        shard = self.shard_order(cursor["epoch"])[cursor["shard"]]
        if self.hub:
            for _, _, text in iter_hub_records(shard, self.text_field, self.sid, self.W, skip=cursor["pos"],
                                               epoch=cursor["epoch"]):
                return text
            raise ELOError(f"{shard}: no example {cursor['pos']} on resume")
        return self.reader.text_at(shard, cursor["pos"])


def _encode(tokenizer, text: str, bos: int | None, eos: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return ([bos] if bos is not None else []) + list(ids) + [eos]


# --- datasets ---------------------------------------------------------------------------------------------

class _Mixer:
    """One stream's documents in mixing order: per-language readers, counts in every unit, the deficit rule."""

    def __init__(self, stream: _PackedStream, sid: int, state: dict | None):
        state = state or {}
        cursors = state.get("cursors", {})
        last = stream.last_epochs
        self.stream, self.names = stream, stream.names
        self.readers = [_LanguageReader(n, s, f, sid, stream.num_streams, stream.seed, stream.shuffle_shards,
                                        last.get(n))
                        for n, s, f in zip(stream.names, stream.shards, stream.text_fields)]
        self.gens = [r.documents(cursors.get(r.name)) for r in self.readers]
        counts = state.get("counts", {})
        self.counts = {u: [int(counts.get(u, {}).get(n, 0)) for n in self.names] for u in MIX_UNITS}

    def pick(self) -> int:
        c, w = self.counts[self.stream.mix_by], self.stream.weights
        total = sum(c)
        return max(range(len(c)), key=lambda i: (w[i] * total - c[i], w[i], -i))

    def next(self) -> tuple[int, dict, list[int]]:
        """(language index, cursor of the document, its token ids) of the next document; counts it."""
        i = self.pick()
        at, text = next(self.gens[i])
        ids = self.stream.encode(text)
        for unit, n in zip(MIX_UNITS, (len(text.encode("utf-8")), len(ids), 1)):
            self.counts[unit][i] += n
        return i, at, ids

    def state(self, carry: dict | None) -> dict:
        return {"cursors": {r.name: r.cursor for r in self.readers},
                "counts": {u: dict(zip(self.names, c)) for u, c in self.counts.items()},
                "carry": carry}


class _PackedStream(IterableDataset):
    """The infinite, mixed, packed training stream (see the module docstring)."""

    def __init__(self, tokenizer, names: list[str], shards: list, text_fields: list[str], weights: list[float],
                 seq_len: int, seed: int, shuffle_shards: bool, add_bos: bool, num_streams: int,
                 states: dict[int, dict] | None = None, next_role: dict[int, int] | None = None,
                 mix_by: str = "bytes", last_epochs: dict[str, int] | None = None):
        self.tokenizer, self.names, self.shards, self.text_fields = tokenizer, names, shards, text_fields
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.seq_len, self.seed, self.shuffle_shards, self.add_bos = seq_len, seed, shuffle_shards, add_bos
        self.num_streams, self.mix_by = num_streams, mix_by
        self.last_epochs = dict(last_epochs or {})
        self.states = dict(states or {})
        self.next_role = dict(next_role or {})
        self.bos = tokenizer.bos_token_id if add_bos else None
        self.eos = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return _encode(self.tokenizer, text, self.bos, self.eos)

    def stream_id(self) -> tuple[int, int]:
        """(global stream id, W) of the calling process, with the resume rotation applied."""
        rank, world = _dist_info()
        worker, nw = _worker_info()
        role = (worker + self.next_role.get(rank, 0)) % nw
        return rank * nw + role, world * nw

    def __iter__(self) -> Iterator[dict]:
        sid, W = self.stream_id()
        if W != self.num_streams:
            raise ELOError(f"the data stream was built for {self.num_streams} streams (world_size x num_workers) "
                           f"but runs in {W}")
        yield from self.iterate(sid, self.states.get(sid))

    def measure(self, sid: int, state: dict | None, documents: int) -> tuple[int, int, int]:
        """(bytes, tokens, documents) of the next ``documents`` documents of stream ``sid`` from ``state``."""
        mixer = _Mixer(self, sid, state)
        before = [sum(mixer.counts[u]) for u in MIX_UNITS]
        for _ in range(documents):
            mixer.next()
        return tuple(sum(mixer.counts[u]) - b for u, b in zip(MIX_UNITS, before))

    def iterate(self, sid: int, state: dict | None = None) -> Iterator[dict]:
        state = state or {}
        mixer = _Mixer(self, sid, state)
        cur = None  # [lang index, cursor of the document, its token ids, tokens already used]
        carry = state.get("carry")
        if carry:
            i = self.names.index(carry["lang"])
            cur = [i, carry["at"], self.encode(mixer.readers[i].text_at(carry["at"])), carry["offset"]]
        seq_len = self.seq_len
        while True:
            seq: list[int] = []
            while len(seq) < seq_len:
                if cur is None:
                    cur = [*mixer.next(), 0]
                take = min(seq_len - len(seq), len(cur[2]) - cur[3])
                seq.extend(cur[2][cur[3]:cur[3] + take])
                cur[3] += take
                if cur[3] == len(cur[2]):
                    cur = None
            new_state = mixer.state(None if cur is None else
                                    {"lang": self.names[cur[0]], "at": cur[1], "offset": cur[3]})
            ids = torch.tensor(seq, dtype=torch.long)
            yield {"input_ids": ids, "labels": ids.clone(), "stream_id": sid,
                   "stream_state": json.dumps(new_state, separators=(",", ":"))}


class _PackedValid(Dataset):
    """Map-style: the first ``max_sequences`` packed sequences of one language's valid files, in file order."""

    def __init__(self, tokenizer, name: str, shards: list | HubSpec, text_field: str, seq_len: int,
                 add_bos: bool, max_sequences: int | None):
        self.name = name
        bos = tokenizer.bos_token_id if add_bos else None
        reader = ShardReader(text_field)
        shard_list = [shards] if isinstance(shards, HubSpec) else shards
        buf: list[int] = []
        self.sequences: list[torch.Tensor] = []
        done = False
        for shard in shard_list:
            records = (iter_hub_records(shard, text_field, 0, 1) if isinstance(shard, HubSpec)
                       else reader.records(shard))
            for pos, _, payload in records:
                text = payload if isinstance(shard, HubSpec) else reader.text(shard, payload, pos)
                buf.extend(_encode(tokenizer, text, bos, tokenizer.eos_token_id))
                while len(buf) >= seq_len:
                    self.sequences.append(torch.tensor(buf[:seq_len], dtype=torch.long))
                    buf = buf[seq_len:]
                    if max_sequences is not None and len(self.sequences) >= max_sequences:
                        done = True
                        break
                if done:
                    break
            if done:
                break
        if not self.sequences:
            raise ELOError(f"language {name!r}: valid files hold fewer than seq_len={seq_len} tokens")

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.sequences[i], "labels": self.sequences[i].clone()}


def collate_with_language(items: list[dict], language: str) -> dict:
    """Default collation, plus the language the batch belongs to (validation is logged by it)."""
    return {**default_collate(items), "language": language}


# --- the datamodule ---------------------------------------------------------------------------------------

class BilingualDataModule(L.LightningDataModule):
    """Mixed, packed pre-training data over any number of languages (e.g. en:ko = 1:9 in bytes, the paper's;
    the name is historical: one, two or more languages all work).

    Args:
        tokenizer: path or id given to ``AutoTokenizer.from_pretrained`` (e.g. ``configs/tokenizer``).
        languages: the mixture; see :class:`LanguageSource`.
        seq_len: tokens per packed sequence (>= 2).
        batch_size / val_batch_size: train / validation batch size (validation defaults to ``batch_size``).
        num_workers: DataLoader workers of the train and validation loaders.
        seed: seeds the per-epoch shard permutations.
        add_bos: prepend BOS to every document; ``None`` (default): exactly when the tokenizer adds BOS itself
            (``tokenizer(text)`` starts with it), so training sees what the model was trained on. EOS is always
            appended.
        val_max_sequences: validation sequences per language (None: all).
        shuffle_shards: permute each language's shard order every epoch.
        pin_memory: pin batches (off by default).
        mix_by: unit of the mixing weights: ``bytes`` of text (the paper's 1:9 is in GB), ``tokens`` or
            ``documents``.
        budget: training length in bytes of text (``9GB``, ``500MB``) or tokens (``100M tokens``); sets the
            Trainer's ``max_steps`` from the measured bytes per token (then leave ``trainer.max_steps`` unset).
        budget_documents: documents of the stream on which bytes per token are measured.
        start_after: continue the stream after another run's (alignment after ELO): its export directory
            (``stream_state.json`` inside), that JSON file, or its Lightning ``.ckpt``.
    """

    def __init__(self, tokenizer: str | None, languages: list[LanguageSource], seq_len: int = 2048, batch_size: int = 4,
                 val_batch_size: int | None = None, num_workers: int = 0, seed: int = 42, add_bos: bool | None = None,
                 val_max_sequences: int | None = 256, shuffle_shards: bool = True, pin_memory: bool = False,
                 mix_by: Literal["bytes", "tokens", "documents"] = "bytes", budget: str | None = None,
                 budget_documents: int = 1000, start_after: str | None = None):
        super().__init__()
        self.save_hyperparameters(logger=False)  # recorded in checkpoints and in the export's elo_export.json
        self.tokenizer_name = None if tokenizer is None else str(tokenizer)
        self.languages = [LanguageSource(**lang) if isinstance(lang, dict) else lang for lang in (languages or [])]
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.val_batch_size = int(val_batch_size) if val_batch_size is not None else self.batch_size
        self.num_workers, self.seed = int(num_workers), int(seed)
        self.add_bos = None if add_bos is None else bool(add_bos)  # None: resolved from the tokenizer on load
        self.val_max_sequences, self.shuffle_shards, self.pin_memory = val_max_sequences, shuffle_shards, pin_memory
        self.mix_by, self.budget, self.budget_documents = mix_by, budget, int(budget_documents)
        self.start_after = None if start_after is None else str(start_after)
        self._check_arguments()
        self._check_stream_arguments()
        self._tokenizer = None
        self._train_shards: list | None = None
        self._valid_shards: dict[str, list | HubSpec] = {}
        self._val_sets: list[_PackedValid] | None = None
        self._streams: dict[int, dict] = {}      # latest recorded state per global stream id
        self._next_role: dict[int, int] = {}     # per rank: the worker role whose batch comes next
        self._loaded: dict | None = None         # state from load_state_dict, checked in train_dataloader
        self._start: dict[int, dict] | None = None  # start states per stream from start_after
        self.budget_plan: BudgetPlan | None = None
        self._shares_logged_at = -1

    @classmethod
    def from_folder(cls, folder: str | Path, weights: dict[str, float], tokenizer: str,
                    **kwargs) -> BilingualDataModule:
        """Languages laid out as ``<folder>/<lang>/train-*.jsonl`` and ``<folder>/<lang>/valid.jsonl`` (the shipped
        sample), mixed by ``weights``; ``kwargs`` go to the constructor."""
        folder = Path(folder)
        languages = [LanguageSource(name=lang, train=[str(folder / lang / "train-*.jsonl")],
                                    valid=[str(folder / lang / "valid.jsonl")], weight=w)
                     for lang, w in weights.items()]
        return cls(tokenizer=tokenizer, languages=languages, **kwargs)

    # -- checks --------------------------------------------------------------------------------------------
    def _check_arguments(self) -> None:
        if not self.languages:
            raise ELOError("BilingualDataModule: the language list is empty")
        names = [lang.name for lang in self.languages]
        if any(not isinstance(n, str) or not n for n in names):
            raise ELOError(f"BilingualDataModule: every language needs a non-empty name, got {names}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ELOError(f"BilingualDataModule: duplicate language names {dup}")
        for lang in self.languages:
            w = lang.weight
            if not isinstance(w, (int, float)) or math.isnan(w) or math.isinf(w) or w < 0:
                raise ELOError(f"language {lang.name!r}: weight must be a finite number >= 0, got {w!r}")
        if sum(lang.weight for lang in self.languages) <= 0:
            weights = {lang.name: lang.weight for lang in self.languages}
            raise ELOError(f"BilingualDataModule: language weights sum to zero ({weights})")
        if self.seq_len < 2:
            raise ELOError(f"BilingualDataModule: seq_len must be >= 2, got {self.seq_len}")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise ELOError("BilingualDataModule: batch sizes must be >= 1")
        if self.num_workers < 0:
            raise ELOError(f"BilingualDataModule: num_workers must be >= 0, got {self.num_workers}")
        if self.val_max_sequences is not None and self.val_max_sequences < 1:
            raise ELOError(f"BilingualDataModule: val_max_sequences must be >= 1 or None, got {self.val_max_sequences}")
        for lang in self.languages:
            if not lang.train:
                raise ELOError(f"language {lang.name!r}: no train files")

    def _check_stream_arguments(self) -> None:
        """Mixing unit, budget and start_after: cheap checks before any data is read."""
        if self.mix_by not in MIX_UNITS:
            raise ELOError(f"BilingualDataModule: mix_by must be one of {list(MIX_UNITS)}, got {self.mix_by!r}")
        if self.budget is not None:
            parse_budget(self.budget)
        if self.budget_documents < 1:
            raise ELOError(f"BilingualDataModule: budget_documents must be >= 1, got {self.budget_documents}")
        if self.start_after is not None and not Path(self.start_after).exists():
            raise ELOError(f"start_after: {self.start_after} not found (an export directory with {STREAM_STATE}, "
                           f"that file, or a .ckpt of the run to continue)")

    @property
    def tokenizer(self):
        """The HF tokenizer, loaded once on first use."""
        if self._tokenizer is None:
            from elo_lightning.tokenizer import load_data_tokenizer

            tok = load_data_tokenizer(self.tokenizer_name, "BilingualDataModule")
            if tok.eos_token_id is None:
                raise ELOError(f"tokenizer {self.tokenizer_name!r} has no eos token (needed as document boundary)")
            if self.add_bos and tok.bos_token_id is None:
                raise ELOError(f"tokenizer {self.tokenizer_name!r} has no bos token but add_bos=True")
            if self.add_bos is None:
                from elo_lightning.tokenizer import adds_bos

                self.add_bos = adds_bos(tok)
            self._tokenizer = tok
        return self._tokenizer

    @property
    def val_languages(self) -> list[str]:
        return [lang.name for lang in self.languages if lang.valid]

    @property
    def weights(self) -> dict[str, float]:
        total = sum(lang.weight for lang in self.languages)
        return {lang.name: lang.weight / total for lang in self.languages}

    @property
    def num_streams(self) -> int:
        return _dist_info()[1] * max(self.num_workers, 1)

    def _prepare(self) -> None:
        """Resolve and check every shard and load the tokenizer (idempotent). Raises ELOError."""
        if self._train_shards is not None:
            return
        _ = self.tokenizer
        train, valid = [], {}
        for lang in self.languages:
            shards = resolve_entries(lang.train, lang.name, "train", "train")
            self._check_shards(shards, lang)
            train.append(shards)
            if lang.valid:
                vs = resolve_entries(lang.valid, lang.name, "valid", "validation")
                self._check_shards(vs, lang)
                valid[lang.name] = vs
        self._train_shards, self._valid_shards = train, valid

    def check_inputs(self) -> None:
        """Every shard and the tokenizer, checked now (the CLI calls it before the trainer creates any folder)."""
        self._prepare()

    @staticmethod
    def _check_shards(shards, lang: LanguageSource) -> None:
        if isinstance(shards, HubSpec):
            check_hub(shards, lang.text_field, lang.name)
        else:
            for path in shards:
                check_shard(path, lang.text_field, lang.name)

    def setup(self, stage: str | None = None) -> None:
        self._prepare()
        if stage in (None, "fit", "validate"):
            self._build_val_sets()
        if stage in (None, "fit") and self.budget is not None and self.trainer is not None:
            self._apply_budget(self.trainer)

    # -- budget --------------------------------------------------------------------------------------------
    def plan_budget(self, world_size: int = 1, accumulate: int = 1) -> BudgetPlan:
        """Measure bytes per token on the first ``budget_documents`` documents of stream 0 (from where it
        starts: the beginning, or after ``start_after``) and turn ``budget`` into optimizer steps."""
        if self.budget is None:
            raise ELOError("BilingualDataModule: no budget set")
        nbytes, ntokens, ndocs = self._stream({}).measure(0, self._start_states().get(0), self.budget_documents)
        return plan_budget(parse_budget(self.budget), nbytes / ntokens, ndocs, self.batch_size, self.seq_len,
                           world_size, accumulate)

    def _apply_budget(self, trainer) -> None:
        """Set ``trainer.max_steps`` from the budget, before ``configure_optimizers`` sizes the schedule."""
        if trainer.max_steps != -1 and (self.budget_plan is None or trainer.max_steps != self.budget_plan.max_steps):
            raise ELOError(f"data budget {self.budget!r} sets the training length but trainer.max_steps="
                           f"{trainer.max_steps} is set too: keep one (trainer.max_steps: -1 or data budget: null)")
        plan = self.plan_budget(trainer.world_size, trainer.accumulate_grad_batches)
        trainer.fit_loop.epoch_loop.max_steps = plan.max_steps
        self.budget_plan = plan
        metrics = {"data/budget_bytes": plan.budget_bytes, "data/budget_tokens": plan.budget_tokens,
                   "data/bytes_per_token": plan.bytes_per_token, "data/budget_steps": float(plan.max_steps)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=0)
        rank_zero_info(
            f"data budget {plan.budget}: {plan.budget_bytes:.4g} bytes = {plan.budget_tokens:.4g} tokens at "
            f"{plan.bytes_per_token:.3f} bytes/token (measured on {plan.measured_documents} documents) -> "
            f"max_steps {plan.max_steps} ({plan.tokens_per_step} tokens/step = batch {self.batch_size} x seq "
            f"{self.seq_len} x world {trainer.world_size} x accumulate {trainer.accumulate_grad_batches})")

    # -- start_after ---------------------------------------------------------------------------------------
    def _start_states(self) -> dict[int, dict]:
        """Where each stream starts when not resuming: after the run in ``start_after``, else at the beginning."""
        if self.start_after is None:
            return {}
        if self._start is None:
            saved = load_stream_state(self.start_after)
            self._check_continuation(saved)
            sizes = {lang.name: None if isinstance(s, HubSpec) else len(s)
                     for lang, s in zip(self.languages, self._train_shards)}
            self._start = continue_streams(saved, sizes, self.num_streams)
        return self._start

    def _check_continuation(self, saved: dict) -> None:
        def bad(what: str, old, new):
            raise ELOError(f"start_after {self.start_after}: {what} differs (that run: {old}, this run: {new}), so "
                           f"its stream positions mean other documents")

        for key, now in (("seed", self.seed), ("shuffle_shards", self.shuffle_shards)):
            if saved.get(key) != now:
                bad(key, saved.get(key), now)
        shards = self._shard_ids()
        for name, ids in shards.items():
            if name in saved.get("shards", {}) and saved["shards"][name] != ids:
                bad(f"the shard list of {name!r}", saved["shards"][name], ids)

    # -- dataloaders ---------------------------------------------------------------------------------------
    def _build_val_sets(self) -> list[_PackedValid]:
        if self._val_sets is None:
            self._prepare()
            by_name = {lang.name: lang for lang in self.languages}
            self._val_sets = [
                _PackedValid(self.tokenizer, n, self._valid_shards[n], by_name[n].text_field, self.seq_len,
                             self.add_bos, self.val_max_sequences)
                for n in self.val_languages
            ]
        return self._val_sets

    def train_dataset(self) -> _PackedStream:
        self._prepare()
        if self._loaded is not None:
            self._check_resume(self._loaded)
        rank, _ = _dist_info()
        nw = max(self.num_workers, 1)
        start = self._start_states()
        for sid in range(rank * nw, (rank + 1) * nw):  # streams that have not trained yet start after start_after
            if sid not in self._streams and sid in start:
                self._streams[sid] = start[sid]
        mine = {sid: st for sid, st in self._streams.items() if sid // nw == rank}
        return self._stream(mine, next_role={rank: self._next_role.get(rank, 0)})

    def _stream(self, states: dict[int, dict], next_role: dict[int, int] | None = None) -> _PackedStream:
        self._prepare()
        last = {} if self.start_after is None else {n: 0 for n in self._start_languages()}
        return _PackedStream(
            self.tokenizer, [lang.name for lang in self.languages], self._train_shards,
            [lang.text_field for lang in self.languages], [lang.weight for lang in self.languages], self.seq_len,
            self.seed, self.shuffle_shards, self.add_bos, self.num_streams, states=states, next_role=next_role,
            mix_by=self.mix_by, last_epochs=last,
        )

    def _start_languages(self) -> list[str]:
        """Languages whose documents the run in ``start_after`` read (this run must not wrap around into them)."""
        return sorted({n for st in self._start_states().values() for n in st["cursors"]})

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset(), batch_size=self.batch_size, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=False)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(ds, batch_size=self.val_batch_size, shuffle=False, num_workers=self.num_workers,
                           pin_memory=self.pin_memory, collate_fn=partial(collate_with_language, language=ds.name))
                for ds in self._build_val_sets()]

    # -- resume --------------------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        """Pop ``stream_id``/``stream_state`` from a training batch and record the stream's latest state."""
        if isinstance(batch, dict) and "stream_state" in batch:
            states = batch.pop("stream_state")
            sids = batch.pop("stream_id")
            sid = int(sids[-1]) if not isinstance(sids, int) else sids
            state = states[-1] if isinstance(states, (list, tuple)) else states
            self._streams[sid] = json.loads(state)
            nw = max(self.num_workers, 1)
            self._next_role[sid // nw] = (sid % nw + 1) % nw
            self._log_shares()
        return batch

    def achieved_shares(self, streams: dict | None = None) -> dict[str, dict[str, float]]:
        """Share of each language in every unit, over the given stream states (default: this rank's)."""
        streams = self._streams if streams is None else streams
        out = {}
        for unit in MIX_UNITS:
            per = {lang.name: sum(st.get("counts", {}).get(unit, {}).get(lang.name, 0) for st in streams.values())
                   for lang in self.languages}
            total = sum(per.values())
            out[unit] = {n: (c / total if total else 0.0) for n, c in per.items()}
        return out

    def _log_shares(self) -> None:
        """``data/share_<unit>/<lang>`` every ``log_every_n_steps`` (this rank's streams; loggers write on rank 0)."""
        trainer = self.trainer
        if trainer is None or not trainer.loggers:
            return
        step = trainer.global_step
        if step == self._shares_logged_at or step % max(trainer.log_every_n_steps, 1):
            return
        self._shares_logged_at = step
        metrics = {f"data/share_{u}/{n}": v for u, per in self.achieved_shares().items() for n, v in per.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _identity(self) -> dict:
        tok = self.tokenizer
        try:
            blob = tok.backend_tokenizer.to_str()
        except AttributeError:
            blob = json.dumps(sorted(tok.get_vocab().items()))
        return {"name_or_path": self.tokenizer_name, "vocab_size": len(tok),
                "sha256": hashlib.sha256(blob.encode()).hexdigest()[:16],
                "bos": tok.bos_token_id if self.add_bos else None, "eos": tok.eos_token_id}

    def _shard_ids(self) -> dict[str, list[str]]:
        import os

        self._prepare()
        return {lang.name: ([str(s)] if isinstance(s, HubSpec) else [os.path.basename(p) for p in s])
                for lang, s in zip(self.languages, self._train_shards)}

    def state_dict(self) -> dict:
        _ = self.tokenizer  # resolves add_bos
        streams = {str(k): v for k, v in self._streams.items()}
        next_role = {str(k): v for k, v in self._next_role.items()}
        _, world = _dist_info()
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, (streams, next_role))
            streams, next_role = {}, {}
            for s, r in gathered:
                streams.update(s)
                next_role.update(r)
        return {
            "version": STATE_VERSION,
            "num_streams": world * max(self.num_workers, 1),
            "world_size": world,
            "num_workers": self.num_workers,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "shuffle_shards": self.shuffle_shards,
            "add_bos": self.add_bos,
            "weights": self.weights,
            "mix_by": self.mix_by,
            "achieved_shares": self.achieved_shares(streams),
            "budget": None if self.budget_plan is None else self.budget_plan.to_dict(),
            "start_after": self.start_after,
            "languages": [lang.name for lang in self.languages],
            "shards": self._shard_ids(),
            "tokenizer": self._identity(),
            "streams": streams,
            "next_role": next_role,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        self._loaded = state
        self._streams = {int(k): v for k, v in state.get("streams", {}).items()}
        self._next_role = {int(k): int(v) for k, v in state.get("next_role", {}).items()}

    def _check_resume(self, st: dict) -> None:
        def bad(what: str, old, new):
            raise ELOError(f"cannot resume the data stream: {what} changed (checkpoint: {old}, now: {new})")

        if st.get("version") != STATE_VERSION:
            bad("state version", st.get("version"), STATE_VERSION)
        W = self.num_streams
        if st["num_streams"] != W:
            bad("number of data streams W = world_size x num_workers",
                f"{st['num_streams']} = {st['world_size']} x {max(st['num_workers'], 1)}",
                f"{W} = {_dist_info()[1]} x {max(self.num_workers, 1)}")
        if max(st["num_workers"], 1) != max(self.num_workers, 1):
            bad("num_workers", st["num_workers"], self.num_workers)
        if st["seq_len"] != self.seq_len:
            bad("seq_len", st["seq_len"], self.seq_len)
        names = [lang.name for lang in self.languages]
        if st["languages"] != names:
            bad("language set", st["languages"], names)
        ident = self._identity()
        old = st["tokenizer"]
        if (old["vocab_size"], old["sha256"], old["bos"], old["eos"]) != (
                ident["vocab_size"], ident["sha256"], ident["bos"], ident["eos"]):
            bad("tokenizer", f"{old['name_or_path']} ({old['vocab_size']} tokens, {old['sha256']})",
                f"{ident['name_or_path']} ({ident['vocab_size']} tokens, {ident['sha256']})")
        for key, now in (("seed", self.seed), ("shuffle_shards", self.shuffle_shards), ("add_bos", self.add_bos)):
            if st[key] != now:
                bad(key, st[key], now)
        shards = self._shard_ids()
        if st["shards"] != shards:
            bad("shard list", st["shards"], shards)
        if st["weights"] != self.weights or st["mix_by"] != self.mix_by:
            warnings.warn(f"resuming the data stream with new mixing weights {self.weights} by {self.mix_by} "
                          f"(checkpoint: {st['weights']} by {st['mix_by']}); the counts so far are kept", stacklevel=2)

    def export_state(self) -> dict[str, dict]:
        """Files a stage writes beside its export: ``stream_state.json`` (the position after the last trained
        batch, for ``start_after``). Collective under distributed training: every rank must call it."""
        return {STREAM_STATE: self.state_dict()}


# --- continuing another run's stream (start_after) --------------------------------------------------------

def load_stream_state(path: str | Path) -> dict:
    """The data-stream state of another run: an export dir (``stream_state.json``), that file, or a ``.ckpt``."""
    p = Path(path)
    if p.is_dir():
        if not (p / STREAM_STATE).is_file():
            raise ELOError(f"start_after: {p} has no {STREAM_STATE} (stages write it beside their export; or give "
                           f"the run's .ckpt)")
        p = p / STREAM_STATE
    if p.suffix == ".ckpt":
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any load failure is a bad argument
            raise ELOError(f"start_after: {p} is not a readable checkpoint ({type(e).__name__}: {e})") from None
        state = ckpt.get(BilingualDataModule.__qualname__) if isinstance(ckpt, dict) else None
        if state is None:
            raise ELOError(f"start_after: {p} holds no {BilingualDataModule.__qualname__} state")
    else:
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ELOError(f"start_after: {p} is not a readable stream state ({e})") from None
    if not isinstance(state, dict) or "streams" not in state or "num_streams" not in state:
        raise ELOError(f"start_after: {p} is not a data-stream state")
    if state.get("version") != STATE_VERSION:
        raise ELOError(f"start_after: {p} has stream-state version {state.get('version')}, this code reads "
                       f"{STATE_VERSION}")
    return state


def continue_streams(saved: dict, shard_counts: dict[str, int | None], num_streams: int) -> dict[int, dict]:
    """Start states for ``num_streams`` streams that read no document the streams in ``saved`` trained on.

    ``shard_counts``: this run's languages and their local shard counts (None: a hub dataset). Counts restart at
    zero; the carry-over (a document cut at the end of the other run) is dropped. With the same number of streams
    each continues its own cursor. Otherwise, per language, all start at the furthest position any old stream
    reached in the epoch's shard order (a stream reading whole shards reads ``order[s::W]``, so its shard ``i``
    is ``s + i * W`` there). Languages the other run did not have start at the beginning.
    """
    w_old = int(saved["num_streams"])
    old = {int(k): v for k, v in saved.get("streams", {}).items()}
    out = {sid: {"cursors": {}, "counts": {}, "carry": None} for sid in range(num_streams)}
    for name, n in shard_counts.items():
        if name not in saved.get("languages", []):
            continue
        cursors = {sid: st["cursors"][name] for sid, st in old.items() if name in st.get("cursors", {})}
        epoch = max((c["epoch"] for c in cursors.values()), default=0)
        if epoch > 0:
            raise ELOError(f"start_after: the run it continues read all of language {name!r} (it was in epoch "
                           f"{epoch + 1}), so no unseen text of it is left: give that language more shards")
        if num_streams == w_old:
            for sid, c in cursors.items():
                out[sid]["cursors"][name] = dict(c)
            continue
        if n is None:
            raise ELOError(f"start_after: language {name!r} streams a hub dataset, whose positions only carry over "
                           f"to the same number of streams (that run: {w_old}, this run: {num_streams} = world "
                           f"size x num_workers)")
        whole_old = n % w_old == 0
        frontier = max(((sid + c["shard"] * w_old if whole_old else c["shard"], c["pos"], c["doc"])
                        for sid, c in cursors.items()), default=None)
        if frontier is None:
            continue
        g, pos, doc = frontier
        whole = n % num_streams == 0
        for sid in range(num_streams):
            if whole:
                i = max(0, -(-(g - sid) // num_streams))  # this stream's first shard at or after g
                at = pos if sid + i * num_streams == g else 0
                out[sid]["cursors"][name] = {"epoch": 0, "shard": i, "pos": at, "doc": 0}
            else:
                out[sid]["cursors"][name] = {"epoch": 0, "shard": g, "pos": pos, "doc": doc}
    return out
