"""Helpers for ``notebooks/analysis.ipynb``: TensorBoard scalars -> tidy rows, loss curves, perplexity bars.

Scalar tags follow the training modules: ``train/loss``, ``val/<lang>/loss``, ``val/<lang>/ppl`` (any tag works).
A "run" is a directory holding ``events.out.tfevents.*`` files (searched recursively, so a Lightning
``runs/<stage>/version_0`` layout works); its stage label is the path relative to the root, e.g.
``elo_pretrain/version_0``.

Results JSON (``runs/pipeline/results.json``)::

    {"models": {"base": {"ko": {"perplexity": 41.2, ...}, "en": {...}}, "elo_aligned": {...}, "sft": {...}}}
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError
from elo_lightning.io import read_json

MODEL_ORDER = ("base", "elo", "elo_pretrain", "elo_aligned", "fft", "lora", "chat_vector", "sft", "elo_sft", "fft_sft")


def find_runs(roots: list[str | Path] | str | Path) -> dict[str, Path]:
    """``{label: run_dir}`` for every directory (under the roots) that contains TensorBoard event files."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    runs: dict[str, Path] = {}
    for root in map(Path, roots):
        if not root.exists():
            continue
        dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
        for d in dirs:
            rel = d.relative_to(root).as_posix()
            label = rel if rel != "." else root.name
            if len(roots) > 1:
                label = f"{root.name}/{label}" if rel != "." else label
            runs[label] = d
    return runs


def load_scalars(roots: list[str | Path] | str | Path) -> list[dict[str, Any]]:
    """All scalars of all runs as rows ``{"run", "tag", "step", "value", "wall_time"}``."""
    from tensorboard.backend.event_processing import event_accumulator

    rows: list[dict[str, Any]] = []
    for label, run_dir in find_runs(roots).items():
        acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                rows.append({"run": label, "tag": tag, "step": ev.step, "value": ev.value, "wall_time": ev.wall_time})
    return rows


def split_tag(tag: str) -> tuple[str, str | None, str]:
    """``val/ko/loss`` -> (``val``, ``ko``, ``loss``); ``train/loss`` -> (``train``, None, ``loss``)."""
    parts = tag.split("/")
    if len(parts) >= 3:
        return parts[0], "/".join(parts[1:-1]), parts[-1]
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return "", None, tag


def curves(rows: list[dict[str, Any]], metric: str = "loss") -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """``{run: {series_label: (steps, values)}}`` for tags ending in ``/<metric>``; series = split[/lang]."""
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = defaultdict(dict)
    grouped: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        split, lang, name = split_tag(r["tag"])
        if name != metric:
            continue
        series = f"{split}/{lang}" if lang else split or r["tag"]
        grouped[(r["run"], series)].append((r["step"], r["value"]))
    for (run, series), points in sorted(grouped.items()):
        points.sort()
        out[run][series] = ([p[0] for p in points], [p[1] for p in points])
    return dict(out)


def plot_loss_curves(rows: list[dict[str, Any]], metric: str = "loss", logy: bool = False,
                     order: list[str] | None = None, ncols: int = 3):
    """One panel per run (stage; in ``order`` if given, else by name), one line per split/language, ``ncols`` a row."""
    import matplotlib.pyplot as plt

    data = curves(rows, metric)
    runs = sorted(data, key=lambda r: (order.index(r) if order and r in order else len(order or ()), r))
    ncols = max(1, min(ncols, len(runs)))
    nrows = max(1, -(-len(runs) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, run in zip(flat, runs):
        for label, (steps, values) in sorted(data[run].items()):
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
        ax.set_title(run)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[len(runs):]:
        ax.axis("off")
    if not data:
        flat[0].text(0.5, 0.5, f"no */{metric} scalars", ha="center", va="center")
    fig.tight_layout()
    return fig


def load_results(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{"models": {...}}`` -> ``{model: {lang: metrics}}``; validates the schema."""
    data = read_json(path, "pipeline results.json")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ELOError(f"{path}: expected {{'models': {{name: {{lang: {{'perplexity': ...}}}}}}}}")
    return models


def perplexity_table(
    models: dict[str, dict[str, dict[str, float]]], metric: str = "perplexity"
) -> dict[str, dict[str, float]]:
    """``{model: {lang: value}}`` ordered base -> ELO -> FFT -> LoRA -> SFT (unknown models last)."""
    order = sorted(models, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))
    return {m: {lang: v[metric] for lang, v in models[m].items() if isinstance(v, dict) and metric in v} for m in order}


def plot_perplexity_bars(models: dict[str, dict[str, dict[str, float]]], metric: str = "perplexity", logy: bool = True):
    """Grouped bars: one group per language, one bar per model; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    table = perplexity_table(models, metric)
    langs = sorted({lang for v in table.values() for lang in v})
    names = list(table)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(langs) * max(1, len(names)) * 0.5, 3.8))
    for k, name in enumerate(names):
        xs = [i + k * width for i in range(len(langs))]
        ys = [table[name].get(lang, float("nan")) for lang in langs]
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(langs))])
    ax.set_xticklabels(langs)
    ax.set_ylabel(metric)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} per language")
    fig.tight_layout()
    return fig
