"""Held-out bits per byte of the *detached* model (embedding -> λ -> norm -> head) before and after ELO.

Run from the repo root after a CPU run (default runs/reproduce-cpu; any run directory of `elo reproduce`):
    PYTHONPATH=. python docs/reproduction/investigation/detached_bpb.py [RUN_DIR [ARM]]
"""

import json
import sys
from pathlib import Path

import torch

from elo_lightning.evaluation.perplexity import evaluate_perplexity
from elo_lightning.models import load_causal_lm
from elo_lightning.surgery import detach, load_detached

run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce-cpu")
arm = sys.argv[2] if len(sys.argv) > 2 else "elo_1-30"
settings = json.loads((run / "settings.json").read_text())
M, C = settings["model"], settings["data"]
files = {lang: [f"{C}/{lang}/valid.jsonl"] for lang in (settings["target"], settings["english"])}
export = run / arm / "elo" / "export"
layers = ",".join(str(x) for x in json.loads((export / "elo_manifest.json").read_text())["layers_1based"])
kw = dict(seq_len=settings["seq_len"], max_sequences=settings["eval_windows"])
small, _ = detach(load_causal_lm(M, dtype=torch.float32), layers, copy_weights=True)
before = evaluate_perplexity(small, M, files, **kw)
after = evaluate_perplexity(load_detached(str(export))[0], M, files, **kw)
print(json.dumps({"run": str(run), "arm": arm, "elo_tokens": settings["elo_tokens"],
                  "detached_before": {lang: before[lang]["bits_per_byte"] for lang in before},
                  "detached_after": {lang: after[lang]["bits_per_byte"] for lang in after}}))
