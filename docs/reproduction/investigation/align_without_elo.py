"""Control: the alignment stage without ELO (FFT from the base, same 3 steps, same text as the align stage).

Run from the repo root after the CPU run: python docs/reproduction/investigation/align_without_elo.py
"""

import dataclasses
import json
from pathlib import Path

from elo_lightning.modules import AlignmentModule
from elo_lightning.reproduce import Context, _finish, evaluate, load_settings, run_training

s = dataclasses.replace(load_settings("cpu"), data="../shared/corpus/pretrain")
out = Path("runs/reproduce-cpu-investigation")
out.mkdir(parents=True, exist_ok=True)
ctx = Context(settings=s, model="models/smollm2-135m-instruct", out=out, n_layers=30, tokens_per_step=1024)
elo = json.loads(Path("runs/reproduce-cpu/elo_1-30/elo/result.json").read_text())
m = AlignmentModule(model=ctx.model, tokenizer=ctx.model, optimizer=ctx.optimizer(), seed=s.seed)
_, rec = run_training(ctx, out / "align_without_elo", m, 3, stream=elo["stream_end"])
rec["eval"] = evaluate(ctx, m.model)
_finish(out / "align_without_elo", rec)
print(
    json.dumps({k: rec[k] for k in ("steps", "train_cpu_s", "train_wall_s", "train_loss")}),
    json.dumps({lang: rec["eval"][lang]["bits_per_byte"] for lang in ("ko", "en")}),
)
