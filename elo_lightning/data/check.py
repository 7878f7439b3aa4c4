"""``elo check-data``: read every record of every shard once and list ALL bad ones, before a run finds them.

Training reads shards lazily, so a malformed record deep in a shard stops a run hours in. This scans a data
config's shards (or any globs) with the readers training uses and prints one line per bad record, with its
file and byte offset (row for parquet): invalid UTF-8, invalid JSON, a missing or non-string text field, empty
text; SFT files (an ``SFTDataModule`` config or ``--sft true``): every conversation that SFT would skip, with
the reason. Exit code 0 when clean, 2 (an ``ELOError``) when any record is bad. Hub datasets are not scanned.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from elo_lightning.data.sources import HubSpec, iter_records, record_text, resolve_entries
from elo_lightning.errors import ELOError


@dataclass(frozen=True)
class Shard:
    path: str
    text_field: str = "text"
    sft: bool = False


@dataclass
class Report:
    shards: int = 0
    records: int = 0
    bad: list[str] = field(default_factory=list)
    bad_shards: int = 0
    skipped: list[str] = field(default_factory=list)  # hub datasets


# --------------------------------------------------------------------------------------------------- records


def _sft_problem(line: bytes) -> str | None:
    from elo_lightning.data.sft import _Skip, normalize_conversation

    try:
        normalize_conversation(json.loads(line))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return f"is not valid JSON ({e})" if not isinstance(e, UnicodeDecodeError) else f"has invalid UTF-8 ({e})"
    except _Skip as skip:
        return f"is skipped by SFT: {skip.reason}"
    return None


def _parquet_records(path: str, text_field: str) -> Iterator[tuple[int, int, object]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - any pyarrow failure is a bad shard
        raise ELOError(f"{path}: cannot read parquet shard: {e}") from None
    if text_field not in pf.schema_arrow.names:
        raise ELOError(f"{path}: parquet shard lacks the text column {text_field!r}; columns: {pf.schema_arrow.names}")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            yield row, row + 1, value
            row += 1


def bad_records(shard: Shard) -> Iterator[tuple[int, str | None]]:
    """``(next_position, message or None)`` for every record of a shard, in order (positions drive progress)."""
    path = shard.path
    records = _parquet_records(path, shard.text_field) if path.endswith(".parquet") else iter_records(path)
    for pos, end, payload in records:
        where = f"row {pos}" if path.endswith(".parquet") else f"record at byte {pos}"
        if shard.sft:
            problem = _sft_problem(payload)
            yield end, (f"{path}: {where} {problem}" if problem else None)
            continue
        try:
            text = record_text(path, payload, shard.text_field, pos)
        except ELOError as e:
            yield end, str(e)
            continue
        yield end, (None if text.strip() else f"{path}: {where} has empty text")


# --------------------------------------------------------------------------------------------------- shards


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ELOError(f"cannot read data config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ELOError(f"{path} is not a data config (expected a mapping)")
    return data


def shards_of_config(config: str | Path) -> tuple[list[Shard], list[str]]:
    """Local shards (and hub ids, not scanned) of a BilingualDataModule / SFTDataModule config, or of a stage
    config whose ``data`` is one (inline or a path relative to it)."""
    path = Path(config)
    cfg = _load_yaml(path)
    if "data" in cfg:
        data = cfg["data"]
        if isinstance(data, str):
            return shards_of_config(path.parent / data)
        cfg = data if isinstance(data, dict) else {}
    init = cfg.get("init_args", cfg)
    shards, hub = [], []
    if "languages" in init:
        for lang in init["languages"] or []:
            name, text_field = lang.get("name", "?"), lang.get("text_field", "text")
            for what, split in (("train", "train"), ("valid", "validation")):
                if not lang.get(what):
                    continue
                found = resolve_entries(lang[what], name, what, split)
                if isinstance(found, HubSpec):
                    hub.append(str(found))
                else:
                    shards += [Shard(p, text_field) for p in found]
    elif "files" in init:
        for f in init["files"] or []:
            p = f["path"] if isinstance(f, dict) else str(f)
            if not os.path.isfile(p):
                raise ELOError(f"SFT file not found: {p}")
            shards.append(Shard(p, sft=True))
    else:
        raise ELOError(f"{config} is not a data config: no `languages` (BilingualDataModule) or `files` "
                       "(SFTDataModule) in it")
    return list(dict.fromkeys(shards)), hub


# --------------------------------------------------------------------------------------------------- command


def scan(shards: list[Shard], progress: bool | None = None, echo: bool = True) -> Report:
    """Read every record of every shard; collect (and print, with ``echo``) one line per bad record."""
    from tqdm.auto import tqdm

    report = Report(shards=len(shards))
    for shard in shards:
        parquet = shard.path.endswith(".parquet")
        total = None if parquet else os.path.getsize(shard.path)
        n_bad = 0
        with tqdm(total=total, unit="rows" if parquet else "B", unit_scale=True, desc=os.path.basename(shard.path),
                  disable=None if progress is None else not progress, leave=False) as bar:
            done = 0
            for end, message in bad_records(shard):
                report.records += 1
                bar.update(end - done)
                done = end
                if message is not None:
                    n_bad += 1
                    report.bad.append(message)
                    if echo:
                        tqdm.write(message)
        if n_bad == 0 and done == 0:
            report.bad.append(f"{shard.path}: empty shard (no non-blank record)")
            n_bad = 1
            if echo:
                print(report.bad[-1], flush=True)
        report.bad_shards += n_bad > 0
    return report


def check_data(config: str | None = None, paths: list[str] | None = None, text_field: str = "text",
               sft: bool = False, progress: bool | None = None) -> dict:
    """Scan every shard of a data config (or of globs) and list every bad record with file and byte offset.

    Args:
        config: a data config (configs/cpu/data/en-ko.yaml, configs/cpu/data/sft.yaml) or a stage config with `data:`.
        paths: instead of a config: files, folders or globs of .jsonl/.json/.txt/.parquet shards.
        text_field: JSON key / parquet column of the text (with `paths`).
        sft: with `paths`: the files are SFT conversations (ShareGPT / messages JSON lines).
        progress: progress bars on stderr (default: when stderr is a terminal).
    """
    if (config is None) == (not paths):
        raise ELOError("check-data takes a data config (--config) or shard paths/globs (--paths), one of the two")
    if config is not None:
        shards, hub = shards_of_config(config)
    else:
        try:
            found = resolve_entries(list(paths), "", "paths", "train")
        except ELOError as e:
            raise ELOError(str(e).removeprefix("language '': ")) from None
        if isinstance(found, HubSpec):
            raise ELOError(f"{found} is a hub dataset: check-data scans local shards only")
        shards, hub = [Shard(p, text_field, sft) for p in found], []
    report = scan(shards, progress=progress)
    for spec in hub:
        print(f"not scanned (hub dataset): {spec}")
    summary = {"shards": report.shards, "records": report.records, "bad_records": len(report.bad),
               "bad_shards": report.bad_shards, "hub_not_scanned": hub}
    print(json.dumps(summary))
    if report.bad:
        raise ELOError(f"{len(report.bad)} bad record(s) in {report.bad_shards} of {report.shards} shard(s), "
                       "listed above")
    return summary
