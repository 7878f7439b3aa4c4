"""`elo check-data`: every bad record of every shard, with file and byte offset; exit 2 when any, 0 when clean."""

from __future__ import annotations

import json

import pytest

from elo_lightning.data.check import check_data, shards_of_config
from elo_lightning.errors import ELOError


def _lines(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def test_every_bad_record_is_listed_with_its_byte_offset(tmp_path, capsys):
    records = [{"text": "fine"}, b"{not json", {"body": "x"}, {"text": 3}, {"text": "  "},
               b'{"text": "caf\xe9"}', {"text": "also fine"}]
    data = _lines(*records)
    (tmp_path / "a.jsonl").write_bytes(data)
    offsets = [0]
    for line in data.splitlines(keepends=True)[:-1]:
        offsets.append(offsets[-1] + len(line))
    with pytest.raises(ELOError, match=r"5 bad record\(s\) in 1 of 1 shard"):
        check_data(paths=[str(tmp_path / "*.jsonl")], progress=False)
    out = capsys.readouterr().out.splitlines()
    bad = [line for line in out if line.startswith(str(tmp_path))]
    assert len(bad) == 5
    assert f"record at byte {offsets[1]} is not valid JSON" in bad[0]
    assert f"record at byte {offsets[2]} lacks the text field 'text'" in bad[1]
    assert f"record at byte {offsets[3]} has a non-string text field" in bad[2]
    assert f"record at byte {offsets[4]} has empty text" in bad[3]
    assert f"invalid UTF-8 at byte {offsets[5] + data[offsets[5]:].index(0xE9)}" in bad[4]
    assert json.loads(out[-1]) == {"shards": 1, "records": 7, "bad_records": 5, "bad_shards": 1,
                                   "hub_not_scanned": []}


def test_txt_parquet_and_empty_shards(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_bytes(b"one\n\ntwo \xff\xfe\n")
    pq.write_table(pa.table({"text": ["ok", "", None, "ok"]}), str(tmp_path / "b.parquet"))
    (tmp_path / "c.jsonl").write_text("\n\n")
    with pytest.raises(ELOError, match=r"4 bad record\(s\) in 3 of 3 shard"):
        check_data(paths=[str(tmp_path)], progress=False)
    out = capsys.readouterr().out
    assert f"{tmp_path / 'a.txt'}: invalid UTF-8 at byte 9 (record at byte 5)" in out
    assert f"{tmp_path / 'b.parquet'}: row 1 has empty text" in out
    assert f"{tmp_path / 'b.parquet'}: row 2 has a non-string text field 'text'" in out
    assert f"{tmp_path / 'c.jsonl'}: empty shard" in out


def test_clean_config_passes_and_lists_every_shard(capsys):
    summary = check_data(config="configs/cpu/data/en-ko.yaml", progress=False)
    shards, _ = shards_of_config("configs/cpu/data/en-ko.yaml")
    assert summary["bad_records"] == 0 and summary["shards"] == len(shards) >= 4
    assert summary["records"] > 100
    assert check_data(config="configs/cpu/elo.yaml", progress=False)["shards"] == len(shards)  # stage config: its data


def test_sft_files_report_what_sft_would_skip(tmp_path, capsys):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = tmp_path / "sft.jsonl"
    path.write_bytes(_lines(good, {"conversations": [{"from": "human", "value": "hi"}]}, b"\xff"))
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"class_path: elo_lightning.data.sft.SFTDataModule\ninit_args:\n  files:\n    - path: {path}\n")
    with pytest.raises(ELOError, match=r"2 bad record"):
        check_data(config=str(cfg), progress=False)
    out = capsys.readouterr().out
    assert "is skipped by SFT: no_assistant_turn" in out and "has invalid UTF-8" in out
    assert check_data(config="configs/cpu/data/sft.yaml", progress=False)["bad_records"] == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ELOError, match="one of the two"):
        check_data()
    with pytest.raises(ELOError, match="^paths glob .* matches no file"):
        check_data(paths=[str(tmp_path / "*.jsonl")])
    (tmp_path / "x.yaml").write_text("trainer: {}\n")
    with pytest.raises(ELOError, match="is not a data config"):
        check_data(config=str(tmp_path / "x.yaml"))
