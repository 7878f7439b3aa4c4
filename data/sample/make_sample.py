"""Recreate the shipped corpus sample (data/sample/) from the full corpus, deterministically.

Usage: python data/sample/make_sample.py /work/shared/corpus [--out data/sample]

Selection (no randomness, so the output is byte-identical on every run):

* per language, a byte budget for train (ko 1.2 MB, ja 0.6 MB, en 0.6 MB) and for valid (80 KB);
* the budget is split evenly across the language's sources ("water-filling": a source smaller than its
  share is taken whole and the rest goes to the others), so every source is represented;
* within a source, whole documents (JSON lines, copied verbatim) are taken in corpus order (train shards
  are already shuffled with a fixed seed by the corpus builder) until its share is reached;
* train documents come from the corpus train shards, valid documents from the corpus valid.jsonl only,
  so train and valid never share a document;
* the selected train lines keep their corpus order; each goes to the currently smaller of two shards.
The dialogue set sft/conversations.jsonl is copied whole when under 1 MB (it is ~0.8 MB).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil

TRAIN_BUDGET = {"ko": 1_200_000, "ja": 600_000, "en": 600_000}
VALID_BUDGET = 80_000
N_TRAIN_SHARDS = 2
SFT_MAX_BYTES = 1_000_000


def _read_lines(paths: list[str]) -> list[bytes]:
    lines = []
    for path in paths:
        with open(path, "rb") as f:
            lines.extend(line if line.endswith(b"\n") else line + b"\n" for line in f if line.strip())
    return lines


def _water_fill(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split `budget` evenly over sources; a source smaller than its share is taken whole."""
    shares: dict[str, int] = {}
    left = dict(sizes)
    remaining = budget
    while left:
        share = remaining // len(left)
        small = {s: n for s, n in left.items() if n <= share}
        if not small:
            shares.update({s: share for s in left})
            break
        for s, n in small.items():
            shares[s] = n
            remaining -= n
            del left[s]
    return shares


def select(lines: list[bytes], budget: int) -> list[bytes]:
    """Whole lines, balanced across the `source` field, in their original order."""
    sources = [json.loads(line).get("source", "?") for line in lines]
    sizes: dict[str, int] = {}
    for src, line in zip(sources, lines):
        sizes[src] = sizes.get(src, 0) + len(line)
    shares = _water_fill(dict(sorted(sizes.items())), budget)
    taken: dict[str, int] = {s: 0 for s in sizes}
    out = []
    for src, line in zip(sources, lines):
        if taken[src] < shares[src]:
            out.append(line)
            taken[src] += len(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", help="path of the full corpus (folder with pretrain/ and sft/)")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    for lang, budget in TRAIN_BUDGET.items():
        src_dir = os.path.join(args.corpus, "pretrain", lang)
        out_dir = os.path.join(args.out, "pretrain", lang)
        os.makedirs(out_dir, exist_ok=True)
        train = select(_read_lines(sorted(glob.glob(os.path.join(src_dir, "train-*.jsonl")))), budget)
        total = sum(map(len, train))
        shards: list[list[bytes]] = [[] for _ in range(N_TRAIN_SHARDS)]
        sizes = [0] * N_TRAIN_SHARDS
        for line in train:  # each line to the currently smallest shard: balanced sizes, mixed sources
            i = sizes.index(min(sizes))
            shards[i].append(line)
            sizes[i] += len(line)
        for i, shard in enumerate(shards):
            with open(os.path.join(out_dir, f"train-{i:05d}.jsonl"), "wb") as f:
                f.writelines(shard)
        valid = select(_read_lines([os.path.join(src_dir, "valid.jsonl")]), VALID_BUDGET)
        with open(os.path.join(out_dir, "valid.jsonl"), "wb") as f:
            f.writelines(valid)
        print(f"{lang}: train {len(train)} docs {total:,} B in {N_TRAIN_SHARDS} shards; "
              f"valid {len(valid)} docs {sum(map(len, valid)):,} B")

    sft_src = os.path.join(args.corpus, "sft", "conversations.jsonl")
    sft_dst = os.path.join(args.out, "sft", "conversations.jsonl")
    os.makedirs(os.path.dirname(sft_dst), exist_ok=True)
    if os.path.getsize(sft_src) <= SFT_MAX_BYTES:
        shutil.copyfile(sft_src, sft_dst)
    else:  # keep every language: every k-th conversation
        lines = _read_lines([sft_src])
        k = -(-os.path.getsize(sft_src) // SFT_MAX_BYTES)
        with open(sft_dst, "wb") as f:
            f.writelines(lines[::k])
    print(f"sft: {os.path.getsize(sft_dst):,} B")


if __name__ == "__main__":
    main()
