"""Shard discovery, validation and reading for :mod:`elo_lightning.data.bilingual`.

Local shards: ``.jsonl`` / ``.json`` (JSON lines, one object per line with a text field), ``.txt`` (one
document per line) and ``.parquet`` (a text column). Blank lines are skipped and never counted as documents.
A record is addressed by a *position*: the byte offset of its line (jsonl/txt; the reader seeks there) or its
row index (parquet). Hub datasets (``hf://org/name[:config][@split]`` or ``org/name:config[@split]``) are
streamed with ``datasets``; their position is the example index after ``split_dataset_by_node``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from elo_lightning.errors import ELOError

SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".txt", ".parquet")
_GLOB_CHARS = re.compile(r"[*?\[]")
_HUB_NO_PREFIX = re.compile(r"^[\w.-]+/[\w.-]+:[\w.-]+(@[\w.\-\[\]:%]+)?$")


@dataclass(frozen=True)
class HubSpec:
    path: str
    config: str | None
    split: str

    def __str__(self) -> str:
        return f"hf://{self.path}" + (f":{self.config}" if self.config else "") + f"@{self.split}"


def is_hub_spec(entry: str) -> bool:
    if entry.startswith("hf://"):
        return True
    return bool(_HUB_NO_PREFIX.match(entry)) and not os.path.exists(entry) and not _GLOB_CHARS.search(entry)


def parse_hub_spec(entry: str, default_split: str) -> HubSpec:
    body = entry[len("hf://"):] if entry.startswith("hf://") else entry
    split = default_split
    if "@" in body:
        body, split = body.rsplit("@", 1)
    config = None
    if ":" in body:
        body, config = body.split(":", 1)
    if not re.match(r"^[\w.-]+(/[\w.-]+)?$", body) or not split or config == "":
        raise ELOError(f"bad hub dataset id {entry!r}: expected hf://org/name[:config][@split]")
    return HubSpec(body, config, split)


def resolve_entries(entries: list[str], lang: str, what: str, default_split: str) -> list[str] | HubSpec:
    """Expand globs/directories into an ordered, de-duplicated list of local shard paths, or return the
    single hub spec. Raises ELOError for a glob matching no file, a missing path or a mixed list."""
    if isinstance(entries, str):
        entries = [entries]
    if not entries:
        raise ELOError(f"language {lang!r}: {what} has no files")
    hub = [e for e in entries if is_hub_spec(e)]
    if hub:
        if len(entries) != 1:
            raise ELOError(f"language {lang!r}: {what} must be ONE hub dataset id or local paths, got {entries}")
        return parse_hub_spec(hub[0], default_split)
    out: list[str] = []
    for entry in entries:
        entry = os.path.expanduser(entry)
        if _GLOB_CHARS.search(entry):
            found = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
            found = [p for p in found if p.endswith(SUPPORTED_EXTENSIONS)]
            if not found:
                raise ELOError(f"language {lang!r}: {what} glob {entry!r} matches no file "
                               f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})")
        elif os.path.isdir(entry):
            found = sorted(os.path.join(r, f) for r, _, fs in os.walk(entry) for f in fs
                           if f.endswith(SUPPORTED_EXTENSIONS))
            if not found:
                raise ELOError(f"language {lang!r}: {what} folder {entry!r} holds no "
                               f"{'/'.join(SUPPORTED_EXTENSIONS)} file")
        elif os.path.isfile(entry):
            if not entry.endswith(SUPPORTED_EXTENSIONS):
                raise ELOError(f"language {lang!r}: {what} file {entry!r} has an unsupported extension "
                               f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})")
            found = [entry]
        else:
            hint = " (for a hub dataset write hf://org/name)" if re.match(r"^[\w.-]+/[\w.-]+$", entry) else ""
            raise ELOError(f"language {lang!r}: {what} file {entry!r} is missing (no such file){hint}")
        for p in found:
            if p not in out:
                out.append(p)
    return out


def _decode(path: str, line: bytes, position: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ELOError(f"{path}: invalid UTF-8 at byte {position + e.start} (record at byte {position}); "
                       "shards must be UTF-8 text") from None


def record_text(path: str, payload, text_field: str, position: int) -> str:
    """The document text of one raw record (a line as bytes, or a parquet cell)."""
    if path.endswith(".parquet"):
        value = payload
    elif path.endswith(".txt"):
        return _decode(path, payload, position).rstrip("\r\n")
    else:
        line = _decode(path, payload, position)
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ELOError(f"{path}: record at byte {position} is not valid JSON ({e})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            raise ELOError(f"{path}: record at byte {position} lacks the text field {text_field!r}")
        value = obj[text_field]
    if not isinstance(value, str):
        where = f"row {position}" if path.endswith(".parquet") else f"record at byte {position}"
        raise ELOError(f"{path}: {where} has a non-string text field {text_field!r}: {value!r:.60}")
    return value


def iter_records(path: str, position: int = 0) -> Iterator[tuple[int, int, object]]:
    """Yield ``(position, next_position, payload)`` for every non-blank record from ``position`` on."""
    if path.endswith(".parquet"):
        raise RuntimeError("use ParquetShard for parquet files")
    with open(path, "rb") as f:
        f.seek(position)
        pos = position
        for line in f:
            end = pos + len(line)
            if line.strip():
                yield pos, end, line
            pos = end


class ShardReader:
    """Reads records of one local shard; keeps a parquet column in memory while the shard is in use."""

    def __init__(self, text_field: str):
        self.text_field = text_field
        self._parquet_path: str | None = None
        self._parquet_col: list | None = None

    def _column(self, path: str) -> list:
        if self._parquet_path != path:
            import pyarrow.parquet as pq

            self._parquet_col = pq.read_table(path, columns=[self.text_field]).column(0).to_pylist()
            self._parquet_path = path
        return self._parquet_col

    def records(self, path: str, position: int = 0) -> Iterator[tuple[int, int, object]]:
        if path.endswith(".parquet"):
            col = self._column(path)
            for i in range(position, len(col)):
                yield i, i + 1, col[i]
        else:
            yield from iter_records(path, position)

    def text(self, path: str, payload, position: int) -> str:
        return record_text(path, payload, self.text_field, position)

    def text_at(self, path: str, position: int) -> str:
        for pos, _, payload in self.records(path, position):
            if pos != position:
                break
            return self.text(path, payload, pos)
        raise ELOError(f"{path}: no record at {position} (the file changed since the checkpoint?)")


def check_shard(path: str, text_field: str, lang: str) -> None:
    """Raise ELOError if the shard is empty or its first record lacks the text field."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - any pyarrow failure is a bad shard
            raise ELOError(f"language {lang!r}: cannot read parquet shard {path!r}: {e}") from None
        if text_field not in pf.schema_arrow.names:
            raise ELOError(f"language {lang!r}: parquet shard {path!r} lacks the text field (column) "
                           f"{text_field!r}; columns: {pf.schema_arrow.names}")
        if pf.metadata.num_rows == 0:
            raise ELOError(f"language {lang!r}: shard {path!r} is empty (0 rows)")
        return
    for pos, _, payload in iter_records(path):
        try:
            record_text(path, payload, text_field, pos)
        except ELOError as e:
            raise ELOError(f"language {lang!r}: first record of shard {path!r} is unusable: {e}") from None
        return
    raise ELOError(f"language {lang!r}: shard {path!r} is empty (no non-blank record)")


def iter_hub_records(spec: HubSpec, text_field: str, rank: int, world_size: int, skip: int = 0,
                     epoch: int = 0) -> Iterator[tuple[int, int, str]]:
    """Stream a hub dataset split for one global stream (``split_dataset_by_node``), from this stream's example
    ``skip`` on (exact resume by example count). Needs network access."""
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    ds = load_dataset(spec.path, spec.config, split=spec.split, streaming=True)
    ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    ds.set_epoch(epoch)
    # .iter(), not iter(ds): inside a DataLoader worker IterableDataset.__iter__ splits the shards again over the
    # workers, but this stream (rank x worker) is already the split above: that would silently drop examples.
    # No ds.skip(): datasets applies it to the whole split *before* the per-node split, so resume reads past the
    # first ``skip`` examples of this stream instead (exact; it costs re-streaming them).
    i = 0
    for batch in ds.iter(batch_size=64):
        texts = batch.get(text_field)
        if texts is None:
            raise ELOError(f"{spec}: example {i} lacks the string text field {text_field!r}")
        for text in texts:
            if i >= skip:
                if not isinstance(text, str):
                    raise ELOError(f"{spec}: example {i} lacks the string text field {text_field!r}")
                yield i, i + 1, text
            i += 1


def check_hub(spec: HubSpec, text_field: str, lang: str) -> None:
    try:
        first = next(iter_hub_records(spec, text_field, 0, 1), None)
    except ELOError:
        raise
    except Exception as e:  # noqa: BLE001 - network/hub failures become one clear error
        raise ELOError(f"language {lang!r}: cannot stream hub dataset {spec}: {e}") from None
    if first is None:
        raise ELOError(f"language {lang!r}: hub dataset {spec} is empty")
