"""The shipped corpus sample: layout, sizes, whole documents, train/valid disjoint, licenses."""

from __future__ import annotations

import json
import os

from tests.data.conftest import REPO, SAMPLE


def test_layout_sizes_and_split():
    total = 0
    for lang, (lo, hi) in {"ko": (1.0e6, 1.4e6), "ja": (0.5e6, 0.75e6), "en": (0.5e6, 0.75e6)}.items():
        train_docs = set()
        size = 0
        for i in range(2):
            path = os.path.join(SAMPLE, lang, f"train-{i:05d}.jsonl")
            size += os.path.getsize(path)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)  # whole JSON records only
                    assert rec["lang"] == lang and rec["text"]
                    train_docs.add((rec["doc"], rec["chunk"]))
        assert lo <= size <= hi, (lang, size)
        valid = os.path.join(SAMPLE, lang, "valid.jsonl")
        assert 50_000 <= os.path.getsize(valid) <= 110_000
        with open(valid, encoding="utf-8") as f:
            recs = [json.loads(line) for line in f]
        assert not train_docs & {(r["doc"], r["chunk"]) for r in recs}
        assert len({r["source"] for r in recs}) >= 3  # a mix of sources
        total += size + os.path.getsize(valid)
    assert total < 3.2e6
    sft = os.path.join(REPO, "data", "sample", "sft", "conversations.jsonl")
    with open(sft, encoding="utf-8") as f:
        langs = {json.loads(line)["lang"] for line in f}
    assert langs == {"ko", "ja", "en"}


def test_licenses_name_every_shipped_source():
    with open(os.path.join(REPO, "data", "sample", "LICENSES.md"), encoding="utf-8") as f:
        text = f.read()
    sources = set()
    for root, _, files in os.walk(SAMPLE):
        for name in files:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                sources |= {json.loads(line)["source"] for line in f}
    for src in sources | {"chatterbot-corpus"}:
        assert f"{src}" in text, src
    assert text.count("License") >= len(sources)
