"""Run from the repo root after the CPU run: PYTHONPATH=. python docs/reproduction/investigation/detached_bpb.py"""

import json

import torch

from elo_lightning.evaluation.perplexity import evaluate_perplexity
from elo_lightning.models import load_causal_lm
from elo_lightning.surgery import detach, load_detached

M = "models/smollm2-135m-instruct"
C = "../shared/corpus/pretrain"
files = {lang: [f"{C}/{lang}/valid.jsonl"] for lang in ("ko", "en")}
full = load_causal_lm(M, dtype=torch.float32)
small, _ = detach(full, "1,30", copy_weights=True)
before = evaluate_perplexity(small, M, files, seq_len=256, max_sequences=8)
after_model, _ = load_detached("runs/reproduce-cpu/elo_1-30/elo/export")
after = evaluate_perplexity(after_model, M, files, seq_len=256, max_sequences=8)
print(
    json.dumps(
        {
            "detached_before": {lang: before[lang]["bits_per_byte"] for lang in before},
            "detached_after": {lang: after[lang]["bits_per_byte"] for lang in after},
        }
    )
)
