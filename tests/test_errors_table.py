"""Every bad input of issue #12 through `elo` itself: exit 2, one `error:` line, no traceback; writes docs/errors.md.

Each case is one line of ``CASES``: ``C(bad input, "elo arguments", message regex, what is kept)``. In the
arguments ``{fx}`` is a folder of shared broken fixtures (built once, see ``fx``) and ``{tmp}`` an empty folder of
the case's own; ``prep`` (optional) patches something first, e.g. a full disk. A case whose ``kept`` starts with
"nothing" must leave ``{tmp}`` empty. After all cases ran, the table of their real messages must equal
``docs/errors.md``; regenerate it with ``ELO_WRITE_ERRORS_TABLE=1 pytest tests/test_errors_table.py``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from elo_lightning.cli import main

DOC = Path("docs/errors.md")
TINY = "configs/models/tiny-llama.json"
EN = "{name: en, train: [data/sample/pretrain/en/train-*.jsonl], weight: %s}"
KO = "{name: ko, train: [data/sample/pretrain/ko/train-*.jsonl], weight: %s}"
PLUMBING = " --trainer.logger.init_args.save_dir {tmp} --model.init_args.export_dir {tmp}/x"  # not shown in the doc
ELO = "fit --config configs/cpu/elo.yaml" + PLUMBING
SFT_NO_TOKENIZER = "fit --config configs/cpu/sft.yaml" + PLUMBING + f" --model.init_args.model {TINY}"
SFT = SFT_NO_TOKENIZER + " --data.init_args.tokenizer configs/tokenizer"  # the tiny arch carries no tokenizer
NOTHING = "nothing is written"


@dataclass(frozen=True)
class Case:
    name: str
    argv: str
    match: str
    kept: str = NOTHING
    prep: Callable | None = None
    code: int = 2


def _disk_full(monkeypatch) -> None:
    """The first weights file written hits a full disk (what ``save_pretrained`` sees from the OS)."""
    import transformers.modeling_utils as mu

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mu, "safe_save_file", full)


C = Case
CASES = [
    # -- data arguments (checked when the datamodule is built, before any file is opened) --
    C("language weight negative", f"{ELO} --data.init_args.languages '[{EN % -1}]'", r"'en': weight must be a finite number >= 0, got -1"),
    C("language weight NaN", f"{ELO} --data.init_args.languages '[{EN % '.nan'}]'", r"weight must be a finite number >= 0, got nan"),
    C("language weight inf", f"{ELO} --data.init_args.languages '[{EN % '.inf'}]'", r"weight must be a finite number >= 0, got inf"),
    C("language weights all zero", f"{ELO} --data.init_args.languages '[{EN % 0}, {KO % 0}]'", r"weights sum to zero"),
    C("duplicate language names", f"{ELO} --data.init_args.languages '[{EN % 1}, {EN % 9}]'", r"duplicate language names \['en'\]"),
    C("empty language list", f"{ELO} --data.init_args.languages '[]'", r"the language list is empty"),
    C("seq_len 0", f"{ELO} --data.init_args.seq_len 0", r"seq_len must be >= 2, got 0"),
    C("batch_size 0", f"{ELO} --data.init_args.batch_size 0", r"batch sizes must be >= 1"),
    C("SFT on a model without a tokenizer, none given", SFT_NO_TOKENIZER, r"no tokenizer: the model .* carries none"),
    C("SFT seq_len 0", f"{SFT} --data.init_args.seq_len 0", r"seq_len must be >= 2, got 0"),
    C("SFT batch_size 0", f"{SFT} --data.init_args.batch_size 0", r"batch_size must be >= 1, got 0"),
    C("SFT empty language weights", f"{SFT} --data.init_args.lang_weights '{{}}'", r"lang_weights is empty"),
    C("SFT language weight negative", f"{SFT} --data.init_args.lang_weights '{{ko: -1, en: 1}}'", r"lang_weights\['ko'\] must be a finite number >= 0"),
    C("SFT language weight NaN", f"{SFT} --data.init_args.lang_weights '{{ko: .nan}}'", r"lang_weights\['ko'\] must be a finite number"),
    C("SFT language weights all zero", f"{SFT} --data.init_args.lang_weights '{{ko: 0, en: 0}}'", r"lang_weights sum to zero"),
    # -- shards (checked at setup, before the model is built) --
    C("missing shard", f"{ELO} --data.init_args.languages '[{{name: ko, train: [{{fx}}/nope.jsonl]}}]'", r"'ko': train file .*nope.jsonl' is missing"),
    C("glob matching no file", f"{ELO} --data.init_args.languages '[{{name: ko, train: [{{fx}}/none-*.jsonl]}}]'", r"matches no file"),
    C("empty shard", f"{ELO} --data.init_args.languages '[{{name: ko, train: [{{fx}}/empty.jsonl]}}]'", r"shard .*empty.jsonl' is empty"),
    C("record without the text field", f"{ELO} --data.init_args.languages '[{{name: ko, train: [{{fx}}/notext.jsonl]}}]'", r"lacks the text field 'text'"),
    C("non-UTF-8 .txt shard", f"{ELO} --data.init_args.languages '[{{name: ko, train: [{{fx}}/latin1.txt]}}]'", r"latin1.txt: invalid UTF-8 at byte 2 \(record at byte 0\)"),
    C("bad record deep in a shard (found in training)", f"{ELO} --data.init_args.languages '[{{name: ko, train: [{{fx}}/deep.jsonl]}}]' --data.init_args.num_workers 1 --data.init_args.seq_len 64 --data.init_args.batch_size 2 --trainer.max_steps 3", r"deep.jsonl: record at byte 153 is not valid JSON",
      "the run's log folder (config.yaml, TensorBoard events); no checkpoint, no export"),
    C("SFT file missing", f"{SFT} --data.init_args.files '[{{path: {{fx}}/nope.jsonl}}]'", r"SFT file not found"),
    # -- check-data (exit 2 when any record is bad; every bad record listed above the error) --
    C("check-data: bad records", "check-data --paths '[{fx}/bad-records.jsonl]' --progress false", r"3 bad record\(s\) in 1 of 1 shard\(s\), listed above", "nothing is written; every bad record is listed on stdout"),
    C("check-data: nothing to scan", "check-data", r"takes a data config \(--config\) or shard paths"),
    # -- models and detached checkpoints --
    C("layer out of range", f"detach --model {TINY} --layers 1,9 --output {{tmp}}/x", r"layer 9 out of range for a model with 8 layers"),
    C("duplicate layers", f"detach --model {TINY} --layers 2,2 --output {{tmp}}/x", r"duplicate layers"),
    C("layer 0", f"detach --model {TINY} --layers 0,1 --output {{tmp}}/x", r"layer 0 does not exist: layers are 1-based"),
    C("model not found", "detach --model {tmp}/nowhere --layers 1 --output {tmp}/x", r"model not found"),
    C("unknown architecture", "detach --model {fx}/gpt2.json --layers 1 --output {tmp}/x", r"unknown architecture 'gpt2'"),
    C("empty safetensors", "detach --model {fx}/empty-weights --layers 1 --output {tmp}/x", r"model.safetensors is empty or truncated \(0 bytes\)"),
    C("truncated safetensors", "detach --model {fx}/truncated-weights --layers 1 --output {tmp}/x", r"model.safetensors is truncated or corrupt \(100,000 bytes"),
    C("corrupt safetensors header", "detach --model {fx}/corrupt-weights --layers 1 --output {tmp}/x", r"model.safetensors is corrupt \(unreadable safetensors header\)"),
    C("broken config.json", "detach --model {fx}/broken-config --layers 1 --output {tmp}/x", r"config.json is not valid JSON"),
    C("broken architecture .json", "init --arch {fx}/broken.json --output {tmp}/x", r"broken.json is not valid JSON"),
    C("not a detached checkpoint", "attach --model {fx}/base --detached {fx}/base --output {tmp}/x", r"not an ELO detached checkpoint: no elo_manifest.json"),
    C("broken manifest JSON", "attach --model {fx}/base --detached {fx}/manifest-broken --output {tmp}/x", r"elo_manifest.json is not valid JSON"),
    C("manifest names a missing layer", "attach --model {fx}/base --detached {fx}/manifest-layer99 --output {tmp}/x", r"names layer\(s\) \[99\] \(1-based\) that do not exist: the source has 8 layers"),
    C("manifest lacks keys", "attach --model {fx}/base --detached {fx}/manifest-nokeys --output {tmp}/x", r"is not a valid ELO manifest"),
    C("detached from another model", "attach --model {fx}/other.json --detached {fx}/elo --output {tmp}/x", r"comes from a different model"),
    # -- sharded checkpoints given to consolidate --
    C("consolidate: a .ckpt file", "consolidate --checkpoint_dir {fx}/file.ckpt --output_dir {tmp}/x", r"is a single-file checkpoint; consolidate takes a sharded"),
    C("consolidate: a plain model folder", "consolidate --checkpoint_dir {fx}/base --output_dir {tmp}/x", r"is a model directory \(config.json\), not a training checkpoint"),
    C("consolidate: a fake folder", "consolidate --checkpoint_dir {fx}/fake --output_dir {tmp}/x", r"is not a training checkpoint: no elo_checkpoint.json"),
    C("consolidate: an interrupted save", "consolidate --checkpoint_dir {fx}/interrupted.ckpt --output_dir {tmp}/x", r"is incomplete \(no elo_checkpoint.json: its save was interrupted\)"),
    C("consolidate: missing folder", "consolidate --checkpoint_dir {tmp}/nope --output_dir {tmp}/x", r"checkpoint not found"),
    # -- bench (checked before any model is built or worker started) --
    C("bench: steps 0", "bench --steps 0 --output {tmp}/x", r"bench: steps must be >= 1, got 0"),
    C("bench: seq_len 0", "bench --seq_len 0 --output {tmp}/x", r"bench: seq_len must be >= 2, got 0"),
    C("bench: unknown precision", "bench --precision bf17 --output {tmp}/x", r"bench: unknown precision 'bf17'"),
    C("bench: unknown method", "bench --methods elo,dora --output {tmp}/x", r"unknown methods \['dora'\]"),
    # -- --ckpt_path (checked before any model is built) --
    C("--ckpt_path missing", f"{ELO} --ckpt_path {{tmp}}/nope.ckpt", r"checkpoint not found: .*nope.ckpt"),
    C("--ckpt_path empty file", f"{ELO} --ckpt_path {{fx}}/empty.ckpt", r"checkpoint .*empty.ckpt is empty \(0 bytes\)"),
    C("--ckpt_path truncated", f"{ELO} --ckpt_path {{fx}}/truncated.ckpt", r"truncated.ckpt is truncated or not a checkpoint"),
    C("--ckpt_path a model folder", f"{ELO} --ckpt_path {{fx}}/base", r"is a model directory \(config.json\), not a training checkpoint"),
    C("--ckpt_path a sharded folder without FSDP2", f"validate --config configs/cpu/elo.yaml{PLUMBING} --ckpt_path {{fx}}/sharded.ckpt", r"is a sharded \(FSDP2\) checkpoint directory"),
    # -- the machine --
    C("full disk (simulated: writing the weights fails with ENOSPC)", "init --arch configs/models/tiny-llama.json --output {tmp}/x", r"no space left on device while writing .*/x",
      "nothing is written: the half-written temporary folder is removed", prep=_disk_full),
]


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Broken inputs, built once through the package's own API (no CLI)."""
    from elo_lightning.models import init_model, load_config
    from elo_lightning.surgery import MANIFEST, detach, save_detached

    fx = tmp_path_factory.mktemp("fx")
    model = init_model(load_config(TINY), seed=0)
    model.save_pretrained(fx / "base")
    small, manifest = detach(init_model(load_config(TINY), seed=0), "1,-1", copy_weights=False)
    save_detached(small, manifest, fx / "elo")
    weights = (fx / "base" / "model.safetensors").read_bytes()
    for name, data in {"empty-weights": b"", "truncated-weights": weights[:100_000],
                       "corrupt-weights": weights[:10] + b"garbage!!" + weights[19:]}.items():
        shutil.copytree(fx / "base", fx / name)
        (fx / name / "model.safetensors").write_bytes(data)
    shutil.copytree(fx / "base", fx / "broken-config")
    (fx / "broken-config" / "config.json").write_text('{"model_type": "llama",\n')
    (fx / "broken.json").write_text('{"model_type": "llama", "hidden_size": }')
    (fx / "gpt2.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    (fx / "other.json").write_text(Path(TINY).read_text().replace('"num_hidden_layers": 8', '"num_hidden_layers": 4'))
    good = json.loads((fx / "elo" / MANIFEST).read_text())
    manifests = {"manifest-broken": '{"layers": [0, 7],', "manifest-layer99": json.dumps({**good, "layers": [0, 98]}),
                 "manifest-nokeys": json.dumps({"format": good["format"], "layers": [0, 7]})}
    for name, text in manifests.items():
        shutil.copytree(fx / "elo", fx / name)
        (fx / name / MANIFEST).write_text(text)
    (fx / "empty.jsonl").write_text("\n")
    (fx / "notext.jsonl").write_text('{"body": "x"}\n')
    (fx / "deep.jsonl").write_text("".join(json.dumps({"text": f"good document number {i} with some words"}) + "\n"
                                           for i in range(3)) + '{"text": broken\n')
    (fx / "latin1.txt").write_bytes("Ol\u00e1 mundo\n".encode("latin-1"))
    (fx / "bad-records.jsonl").write_bytes(b'{"text": "ok"}\n{"text": \n{"text": ""}\n{"text": "caf\xe9"}\n')
    torch.save({"global_step": 1, "state_dict": {}}, fx / "file.ckpt")
    (fx / "empty.ckpt").write_bytes(b"")
    (fx / "truncated.ckpt").write_bytes((fx / "file.ckpt").read_bytes()[:200])
    (fx / "sharded.ckpt").mkdir()
    torch.save({"global_step": 2}, fx / "sharded.ckpt" / "meta.pt")
    (fx / "sharded.ckpt" / "elo_checkpoint.json").write_text('{"global_step": 2}')
    (fx / "fake").mkdir()
    (fx / "fake" / "notes.txt").write_text("not a checkpoint")
    (fx / "interrupted.ckpt").mkdir()
    torch.save({"global_step": 2}, fx / "interrupted.ckpt" / "meta.pt")
    return fx


# --------------------------------------------------------------------------------------------------- cases

RESULTS: dict[str, dict] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line(case: Case, fx: Path, tmp_path: Path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    argv = [a.replace("{fx}", str(fx)).replace("{tmp}", str(work)) for a in shlex.split(case.argv)]
    if case.prep is not None:
        case.prep(monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    message = errors[-1][len("error: "):] if errors else ""
    RESULTS[case.name] = {"code": exit_info.value.code, "message": _portable(message, fx, work),
                          "one_line": len(errors) == 1 and err.strip().splitlines()[-1] == errors[0],
                          "traceback": "Traceback" in out + err}
    assert "Traceback" not in out + err
    assert exit_info.value.code == case.code
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-2000:]
    assert re.search(case.match, message), message
    if case.kept.startswith("nothing"):
        assert not any(work.iterdir()), sorted(work.rglob("*"))


def _portable(message: str, fx: Path, work: Path) -> str:
    return message.replace(str(work), "<tmp>").replace(str(fx), "<fx>").replace(os.getcwd() + os.sep, "")


# --------------------------------------------------------------------------------------------------- the doc


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(results: dict[str, dict]) -> str:
    one_line = sum(r["one_line"] and r["code"] == 2 for r in results.values())
    tracebacks = sum(r["traceback"] for r in results.values())
    rows = [RESULTS_HEADER.format(cases=len(CASES), one_line=one_line, tracebacks=tracebacks),
            "| bad input | command | exit | message (`error: ...` on stderr) | what is kept |", "|---|---|---|---|---|"]
    for c in CASES:
        r = results[c.name]
        command = c.argv.replace(PLUMBING, "").replace("{fx}", "<fx>").replace("{tmp}", "<tmp>")
        rows.append(f"| {_md(c.name)} | `elo {_md(command)}` | {r['code']} | {_md(r['message'])} | {_md(c.kept)} |")
    return "\n".join(rows) + "\n"


RESULTS_HEADER = """# Bad input: one line, exit code 2

Generated by `tests/test_errors_table.py` from the messages `elo` really printed (regenerate:
`ELO_WRITE_ERRORS_TABLE=1 pytest tests/test_errors_table.py`; a test fails when this file is stale).
Every case runs the `elo` entry point in-process and checks: exit code 2, exactly one `error: ...` line as the
last line of stderr, no traceback, and (where "nothing is written") an output folder left empty.
`<fx>` is a folder of broken fixtures built by the test, `<tmp>` an empty folder; every `elo fit` case also passes
`--trainer.logger.init_args.save_dir <tmp> --model.init_args.export_dir <tmp>/x`.

**{cases} cases, {one_line} one-line errors, {tracebacks} tracebacks left.**
"""


def test_docs_table_is_current():
    if set(RESULTS) != {c.name for c in CASES}:
        pytest.skip("runs after every case of this module (run the whole file)")
    table = render_table(RESULTS)
    if os.environ.get("ELO_WRITE_ERRORS_TABLE") == "1":
        DOC.write_text(table)
    assert DOC.is_file() and DOC.read_text() == table, \
        "docs/errors.md is stale: ELO_WRITE_ERRORS_TABLE=1 pytest tests/test_errors_table.py"
