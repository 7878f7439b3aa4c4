"""The speedup figure: training time vs pretraining data size (paper Figure 3) and the time columns of Table 1.

Input: ``results.json`` written by the benchmark runner. Schema (all throughputs are *global*, i.e. summed over
every device of the run; ``null`` where unknown)::

    {
      "arch": "llama-3.1-8b",                # configs/models/<arch>.json
      "device": "1x NVIDIA H100 80GB HBM3",  # free text, shown in the title
      "world_size": 1,                       # optional, number of devices the tokens/s were measured on
      "seq_len": 8192,
      "versions": {"torch": "...", "transformers": "...", ...},
      "methods": {
        "elo":    {"tokens_per_s": float, "step_time_s": float, "flops_per_token": float, "mfu": float|null,
                   "peak_mem_gb": float, "trainable_params": int, "computed_params": int, "batch_size": int,
                   "best_batch": {"batch_size": int, "tokens_per_s": float} | null,
                   "strategy": str, "activation_checkpointing": bool, "optimizer": str, "precision": str},
        "fft":    {...same keys...},
        "lora":   {...},
        "freeze": {...},
        "align":  {...}                      # optional: throughput of the alignment (FFT) phase; default = "fft"
      },
      "analytic_flops_per_token": {"elo": float, "fft": float, "lora": float, "freeze": float},
      "settings_differ": {setting: {method: value}}   # the settings in which the methods were timed differently
    }

Any method may be missing (e.g. FFT does not fit); its columns then read ``n/a``.

Model of the training time for ``D`` GB of pretraining text (Table 1 / Figure 3 of the paper)::

    FFT(D)  = D * TOKENS_PER_GB / tokens_per_s["fft"]
    LoRA(D) = D * TOKENS_PER_GB / tokens_per_s["lora"]
    ELO(D)  = (D - ALIGN_GB) * TOKENS_PER_GB / tokens_per_s["elo"]  +  ALIGN_GB * TOKENS_PER_GB / tokens_per_s["align"]

i.e. like Table 1 (10 GB = 9 GB ELO phase + 1 GB alignment at FFT speed), the alignment GB come out of the budget.
Absolute hours are for *our* device count; the paper used 8x H100. The speedups (ratios of times) are what compare
across hardware, and are what the right-hand panel shows. With a scaled-down CPU model the hours are meaningless,
only the ratios are informative.

Paper numbers drawn beside ours: Table 1 (Llama-3.1-8B, 10 GB, 8x H100): FFT 19.8 h; ELO 1.5 h (9 GB) + alignment
2.0 h (1 GB). Figure 3: ELO vs FFT speedup 5.66x at 10 GB (= Table 1's 19.8 h / 3.5 h), 6.04x at 50 GB and 12.23x
at 200 GB; ELO vs LoRA 5.29x at 50 GB and 10.72x at 200 GB. The paper's speedups roughly double from 50 to 200 GB,
while a time-linear-in-data model at fixed speeds (ours) predicts ~+15% (the fixed 1 GB alignment weighs less as D
grows); we plot them as published.

CLI: ``elo figure --results results.json [--out DIR] [--best_batch true]`` (:func:`figure_cmd`) writes
``DIR/speedup.png`` and ``DIR/speedup.md``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from elo_lightning.errors import ELOError
from elo_lightning.io import read_json
from elo_lightning.modules import STAGES

__all__ = [
    "ALIGN_GB",
    "BYTES_PER_TOKEN",
    "DATA_SIZES_GB",
    "figure_cmd",
    "PAPER_FIG3_ELO_VS_FFT",
    "PAPER_FIG3_ELO_VS_LORA",
    "PAPER_TABLE1_H",
    "TOKENS_PER_GB",
    "load_results",
    "make_figure",
    "markdown_tables",
    "plot_speedup",
    "time_table",
]

# Bytes of Korean UTF-8 text per Llama-3 (128k tiktoken-BPE) token. The paper does not state its GB->token factor;
# this is our estimate: Hangul syllables are 3 bytes, ~2.5 bytes/char with spaces and punctuation, ~1.3-1.5 chars per
# Llama-3 token on Korean web text -> ~3.5 bytes/token. Cross-check against Table 1: 10 GB in 19.8 h on 8x H100
# is then 2.86e9 tokens / 71,280 s = 40k tokens/s = 5.0k tokens/s/GPU, i.e. ~250 TFLOP/s/GPU (~25% bf16 MFU) at
# ~50 GFLOP/token for 8B FFT: a plausible figure, so the estimate is not off by a large factor.
BYTES_PER_TOKEN = 3.5
TOKENS_PER_GB = 1e9 / BYTES_PER_TOKEN  # ~2.86e8 tokens per GB (GB = 1e9 bytes)
ALIGN_GB = 1.0  # the paper's fixed alignment run (FFT of the re-attached model) on 1 GB
DATA_SIZES_GB = (10, 50, 200)

PAPER_TABLE1_H = {  # Llama-3.1-8B, 10 GB of Korean text, 8x H100 (paper Table 1)
    "fft": 19.8,
    "elo_phase": 1.5,  # 9 GB
    "align": 2.0,  # 1 GB
}
PAPER_FIG3_ELO_VS_LORA = {50: 5.29, 200: 10.72}  # paper Figure 3
PAPER_FIG3_ELO_VS_FFT = {10: 5.66, 50: 6.04, 200: 12.23}  # paper Figure 3 (10 GB: Table 1, 19.8 h / 3.5 h)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    res = read_json(path, "benchmark results.json")
    if not isinstance(res, dict) or not isinstance(res.get("methods"), dict) or "elo" not in res["methods"]:
        raise ELOError(f"{path}: results.json needs a 'methods' dict with at least 'elo'")
    return res


def _tps(res: dict, method: str, best_batch: bool) -> float | None:
    m = res["methods"].get(method)
    if method == "align" and m is None:
        m = res["methods"].get("fft")
    if not m:
        return None
    if best_batch and m.get("best_batch") and m["best_batch"].get("tokens_per_s"):
        v = m["best_batch"]["tokens_per_s"]
    else:
        v = m.get("tokens_per_s")
    return float(v) if v else None


def _hours(gb: float, tps: float | None) -> float | None:
    return None if tps is None or gb < 0 else gb * TOKENS_PER_GB / tps / 3600.0


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def time_table(
    res: dict[str, Any], sizes_gb: Sequence[float] = DATA_SIZES_GB, best_batch: bool = False
) -> list[dict[str, Any]]:
    """One row per data size: hours for FFT, LoRA, ELO (phase + alignment) and the speedups of ELO."""
    tps = {m: _tps(res, m, best_batch) for m in ("elo", "fft", "lora", "align")}
    rows = []
    for gb in sizes_gb:
        fft, lora = _hours(gb, tps["fft"]), _hours(gb, tps["lora"])
        elo_phase, align = _hours(gb - ALIGN_GB, tps["elo"]), _hours(ALIGN_GB, tps["align"])
        elo = elo_phase + align if elo_phase is not None and align is not None else None
        rows.append(
            {
                "data_gb": gb,
                "tokens": gb * TOKENS_PER_GB,
                "fft_h": fft,
                "lora_h": lora,
                "elo_phase_h": elo_phase,
                "align_h": align,
                "elo_h": elo,
                "elo_vs_fft": _div(fft, elo),
                "elo_vs_lora": _div(lora, elo),
                "paper_elo_vs_fft": PAPER_FIG3_ELO_VS_FFT.get(int(gb)) if float(gb).is_integer() else None,
                "paper_elo_vs_lora": PAPER_FIG3_ELO_VS_LORA.get(int(gb)) if float(gb).is_integer() else None,
            }
        )
    return rows


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


def markdown_tables(res: dict[str, Any], rows: list[dict[str, Any]], best_batch: bool = False) -> str:
    """Markdown: measured per-method numbers, the Figure-3 time/speedup table, and Table 1 (paper vs ours)."""
    ws = res.get("world_size")
    lines = [
        f"# ELO speedup: {res.get('arch', '?')} on {res.get('device', '?')}"
        + (f" (world size {ws})" if ws else "")
        + f", seq_len {res.get('seq_len', '?')}",
        "",
        f"GB->tokens: {TOKENS_PER_GB:.3e} tokens/GB (estimate: {BYTES_PER_TOKEN} bytes/token, Korean text, Llama-3 "
        f"tokenizer; see `elo_lightning.bench.figure.BYTES_PER_TOKEN`). Throughput used: "
        + ("best batch size per method." if best_batch else "the common benchmark batch size.")
        + (f" Best batch: the fastest micro-batch whose peak memory stays within {res['memory_budget_gb']} GB."
           if res.get("memory_budget_gb") else ""),
    ]
    lines += _throughput_table(res) + _settings_md(res) + _time_table_md(rows)
    r10 = next((r for r in rows if r["data_gb"] == 10), None)
    if r10 is not None:
        lines += _table1_md(r10)
    return "\n".join(lines) + "\n"


def _throughput_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Measured throughput",
        "",
        "| method | tokens/s | step time (s) | FLOPs/token | analytic FLOPs/token | FLOPs vs FFT (analytic) "
        "| MFU | peak mem (GB) | trainable params | computed params | batch | best batch (tokens/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    analytic = res.get("analytic_flops_per_token") or {}
    for name in STAGES:
        m = res["methods"].get(name)
        if not m:
            continue
        bb = m.get("best_batch") or {}
        cells = [
            name,
            _f(m.get("tokens_per_s"), "{:,.0f}"),
            _f(m.get("step_time_s"), "{:.3f}"),
            _f(m.get("flops_per_token"), "{:.3e}"),
            _f(analytic.get(name), "{:.3e}"),
            _f(_div(analytic.get(name), analytic.get("fft")), "{:.3f}"),
            _f(m.get("mfu"), "{:.1%}"),
            _f(m.get("peak_mem_gb"), "{:.1f}"),
            _f(m.get("trainable_params"), "{:,}"),
            _f(m.get("computed_params"), "{:,}"),
            _f(m.get("batch_size"), "{}"),
            f"{bb['batch_size']} ({bb['tokens_per_s']:,.0f})" if bb.get("batch_size") else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _settings_md(res: dict[str, Any]) -> list[str]:
    """How each method was timed; one line saying so when they differ (their tokens/s are then not like for like)."""
    keys = ("strategy", "activation_checkpointing", "optimizer", "precision")
    lines = ["", "## How each method was timed", "", "| method | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for name in STAGES:
        m = res["methods"].get(name)
        if m:
            lines.append(f"| {name} | " + " | ".join(_f(m.get(k), "{}") for k in keys) + " |")
    if differ := res.get("settings_differ"):
        lines += ["", "**Timed under different settings:** " + "; ".join(
            f"{k} ({', '.join(f'{m}: {v}' for m, v in per.items())})" for k, per in differ.items()) + "."]
    return lines


def _time_table_md(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Training time vs data size (Figure 3)",
        "",
        "| data (GB) | tokens | FFT (h) | LoRA (h) | ELO phase (h) | alignment (h) | ELO total (h) "
        "| ELO vs FFT | ELO vs LoRA | paper ELO vs FFT | paper ELO vs LoRA |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data_gb']:g} | {r['tokens']:.3e} | {_f(r['fft_h'])} | {_f(r['lora_h'])} | {_f(r['elo_phase_h'])} "
            f"| {_f(r['align_h'])} | {_f(r['elo_h'])} | {_f(r['elo_vs_fft'], '{:.2f}x')} "
            f"| {_f(r['elo_vs_lora'], '{:.2f}x')} | {_f(r['paper_elo_vs_fft'], '{:.2f}x')} "
            f"| {_f(r['paper_elo_vs_lora'], '{:.2f}x')} |"
        )
    return lines


def _table1_md(r10: dict[str, Any]) -> list[str]:
    p = PAPER_TABLE1_H
    return [
        "",
        "## Table 1 time columns (Llama-3.1-8B, 10 GB; paper on 8x H100, ours on our device)",
        "",
        "| | FFT (h) | ELO phase, 9 GB (h) | alignment, 1 GB (h) | ELO total (h) | FFT / ELO |",
        "|---|---|---|---|---|---|",
        f"| paper | {p['fft']:.1f} | {p['elo_phase']:.1f} | {p['align']:.1f} | {p['elo_phase'] + p['align']:.1f} "
        f"| {p['fft'] / (p['elo_phase'] + p['align']):.2f}x |",
        f"| ours | {_f(r10['fft_h'])} | {_f(r10['elo_phase_h'])} | {_f(r10['align_h'])} | {_f(r10['elo_h'])} "
        f"| {_f(r10['elo_vs_fft'], '{:.2f}x')} |",
    ]


def plot_speedup(res: dict[str, Any], rows: list[dict[str, Any]], path: str | os.PathLike):
    """Left: hours vs data size (ours; paper Table 1 at 10 GB). Right: ELO speedups, ours vs the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    _plot_hours(ax1, res, rows)
    _plot_speedups(ax2, res, rows)
    fig.suptitle(f"{res.get('arch', '?')}, seq_len {res.get('seq_len', '?')}, {res.get('device', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def _plot_hours(ax1, res: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    sizes = [r["data_gb"] for r in rows]
    x = list(range(len(sizes)))
    w = 0.25

    def bars(offset, key, label, color, bottom=None):
        vals = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax1.bar([i + offset for i in x], vals, w, bottom=bottom, label=label, color=color)
        return vals

    bars(-w, "fft_h", "FFT (ours)", "#d62728")
    bars(0, "lora_h", "LoRA (ours)", "#ff7f0e")
    phase = bars(w, "elo_phase_h", "ELO phase (ours)", "#1f77b4")
    bars(w, "align_h", "ELO alignment, 1 GB at FFT speed (ours)", "#aec7e8", bottom=phase)
    if 10 in sizes:
        i10 = sizes.index(10)
        p = PAPER_TABLE1_H
        ax1.scatter([i10 - w], [p["fft"]], marker="*", s=160, color="black", zorder=5, label="paper Table 1 (8x H100)")
        ax1.scatter([i10 + w], [p["elo_phase"] + p["align"]], marker="*", s=160, color="black", zorder=5)
    ax1.set_xticks(x, [f"{s:g} GB" for s in sizes])
    ax1.set_ylabel(f"training time (h) on {res.get('device', 'our device')}")
    ax1.set_yscale("log")
    ax1.set_title("Training time vs pretraining data size")
    ax1.legend(fontsize=7)


def _plot_speedups(ax2, res: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    sizes = [r["data_gb"] for r in rows]

    def series(key):
        return [r[key] if r[key] is not None else float("nan") for r in rows]

    ax2.plot(sizes, series("elo_vs_lora"), "o-", color="#ff7f0e", label="ELO vs LoRA (ours)")
    ax2.plot(sizes, series("elo_vs_fft"), "o-", color="#d62728", label="ELO vs FFT (ours)")
    ps = sorted(PAPER_FIG3_ELO_VS_LORA)
    ax2.plot(ps, [PAPER_FIG3_ELO_VS_LORA[s] for s in ps], "*--", ms=12, color="#ff7f0e",
             label="ELO vs LoRA (paper Fig. 3)")
    ps = sorted(PAPER_FIG3_ELO_VS_FFT)
    ax2.plot(ps, [PAPER_FIG3_ELO_VS_FFT[s] for s in ps], "*--", ms=12, color="#d62728",
             label="ELO vs FFT (paper Fig. 3, Table 1)")
    an = res.get("analytic_flops_per_token") or {}
    if an.get("elo") and an.get("fft"):
        ax2.axhline(an["fft"] / an["elo"], ls=":", color="gray", label="FFT/ELO FLOPs per token (analytic)")
    for r in rows:
        for key in ("elo_vs_lora", "elo_vs_fft"):
            if r[key] is not None:
                ax2.annotate(f"{r[key]:.2f}x", (r["data_gb"], r[key]), textcoords="offset points", xytext=(4, 4),
                             fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax2.set_xlabel("pretraining data (GB)")
    ax2.set_ylabel("speedup of ELO (x)")
    ax2.set_title("ELO speedup (ratio of training times)")
    ax2.legend(fontsize=7)


def make_figure(results_path: str | os.PathLike, out_dir: str | os.PathLike, best_batch: bool = False) -> dict:
    """Write ``speedup.png`` and ``speedup.md`` to ``out_dir``; return paths, rows and the Markdown text."""
    import matplotlib.pyplot as plt

    res = load_results(results_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = time_table(res, best_batch=best_batch)
    md = markdown_tables(res, rows, best_batch=best_batch)
    (out / "speedup.md").write_text(md)
    fig = plot_speedup(res, rows, out / "speedup.png")
    plt.close(fig)
    return {"png": str(out / "speedup.png"), "md": str(out / "speedup.md"), "rows": rows, "markdown": md}


def figure_cmd(results: str, out: str | None = None, best_batch: bool = False) -> None:
    """Draw the ELO speedup figure (paper Fig. 3) and table from a benchmark results.json.

    Args:
        results: results.json written by the benchmark.
        out: output directory for speedup.png and speedup.md (default: next to results.json).
        best_batch: use each method's best-batch tokens/s instead of the common batch size.
    """
    r = make_figure(results, out or str(Path(results).parent), best_batch=best_batch)
    print(f"wrote {r['png']} and {r['md']}")
