"""Peak memory of an ELO training step with and without the linear cross-entropy (``linear_ce``).

Each point (sequence length x loss) runs in a fresh process, so allocator state and other points stay out of the
number. A point builds the stage module exactly as training does (``DetachedLayerModule``: detached embedding, λ,
final norm and head; ``configure_model``), then runs ``steps`` optimizer steps (forward, backward, torch AdamW step)
on random tokens. Recorded: the peak RSS over the steps (Linux: VmHWM reset after the build through
``/proc/self/clear_refs``; the build of the full source model, which is then cut, has its own peak, recorded
apart), the RSS after the build (imports + weights) and the difference, the step's own memory.

    python -m elo_lightning.bench.memory --output docs/bench/cpu-linear-ce-memory

Meant to move into the bench package as ``elo bench-memory`` (``linear_ce_memory`` is the entry point).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from elo_lightning.errors import ELOError
from elo_lightning.io import write_json_atomic

LOSSES = ("off", "chunked")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM in /proc/self/status")


def _arch_with_vocab(arch: str, vocab_size: int | None, tmp: Path) -> str:
    if vocab_size is None:
        return arch
    fields = json.loads(Path(arch).read_text())
    fields["vocab_size"] = vocab_size
    out = tmp / f"{Path(arch).stem}-vocab{vocab_size}.json"
    out.write_text(json.dumps(fields))
    return str(out)


def memory_point(arch: str, seq_len: int, linear_ce: str, batch_size: int = 1, layers: str = "1,-1",
                 steps: int = 2, vocab_size: int | None = None, seed: int = 0) -> dict:
    """One point, in this process (call it in a fresh one): peak RSS of ``steps`` ELO steps."""
    import torch

    from elo_lightning.modules import DetachedLayerModule
    from elo_lightning.optim import OptimizerConfig

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        source = _arch_with_vocab(arch, vocab_size, Path(tmp))
        module = DetachedLayerModule(model=source, layers=layers, linear_ce=linear_ce, measure_flops=False,
                                     optimizer=OptimizerConfig(name="adamw"))
        module.configure_model()
    model = module.model.train()
    vocab = model.config.vocab_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    build_peak = _rss_gb()
    built = _current_rss_gb()
    reset = _reset_peak_rss()
    ids = torch.randint(0, vocab, (batch_size, seq_len))
    batch = {"input_ids": ids, "labels": ids, "use_cache": False}
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        loss = module(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return {
        "seq_len": seq_len,
        "batch_size": batch_size,
        "linear_ce": linear_ce,
        "impl": module._linear_ce_impl(),
        "vocab_size": vocab,
        "hidden_size": model.config.hidden_size,
        # peak RSS over the steps alone (VmHWM reset after the build); else over the whole process
        "peak_rss_gb": _hwm_gb() if reset else _rss_gb(),
        "peak_rss_window": "steps" if reset else "process",
        "build_peak_rss_gb": build_peak,
        "rss_after_build_gb": built,
        "step_peak_gb": (_hwm_gb() if reset else _rss_gb()) - built,
        "logits_fp32_gb": 4 * batch_size * seq_len * vocab / 1024**3,
        "losses": losses,
        "step_time_s": (time.perf_counter() - start) / steps,
    }


def linear_ce_memory(
    output: str = "docs/bench/cpu-linear-ce-memory",
    arch: str = "configs/models/llama-3.1-8b-scaled.json",
    vocab_size: int | None = 128256,
    seq_lens: str = "512,1024,2048,4096",
    losses: str = "off,chunked",
    batch_size: int = 1,
    layers: str = "1,-1",
    steps: int = 2,
) -> dict:
    """Peak RSS of an ELO step per (seq_len, loss), one fresh process each; writes results.json, memory.png and
    its table (memory.md) into ``output``.

    Args:
        output: results directory.
        arch: architecture config; ``vocab_size`` overrides its vocabulary (Llama-3's 128,256 by default).
        vocab_size: vocabulary of the measured model (None: the config's).
        seq_lens: comma-separated sequence lengths.
        losses: comma-separated ``linear_ce`` values to compare (off = transformers' loss on full logits).
        batch_size: sequences per step.
        layers: λ, 1-based.
        steps: optimizer steps per point.
    """
    seqs = [int(s) for s in seq_lens.split(",") if s.strip()]
    kinds = [k.strip() for k in losses.split(",") if k.strip()]
    if not seqs or min(seqs) < 2:
        raise ELOError(f"seq_lens must be integers >= 2, got {seq_lens!r}")
    from elo_lightning.losses import check_linear_ce

    for k in kinds:
        check_linear_ce(k)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    points = []
    for seq in seqs:
        for kind in kinds:
            cmd = [sys.executable, "-m", "elo_lightning.bench.memory", "point", "--arch", arch, "--seq_len", str(seq),
                   "--linear_ce", kind, "--batch_size", str(batch_size), "--layers", layers, "--steps", str(steps)]
            if vocab_size is not None:
                cmd += ["--vocab_size", str(vocab_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory point seq {seq} {kind} failed:\n{proc.stderr[-3000:]}")
            point = json.loads(proc.stdout.strip().splitlines()[-1])
            points.append(point)
            print(f"[memory] seq {seq} {kind}: peak {point['peak_rss_gb']:.2f} GB "
                  f"(step {point['step_peak_gb']:.2f} GB), loss {point['losses'][0]:.4f}", flush=True)
    from torch import __version__ as torch_version
    from transformers import __version__ as tf_version

    report = {
        "what": "peak RSS of an ELO training step (DetachedLayerModule, torch AdamW), one fresh process per point",
        "arch": Path(arch).stem,
        "vocab_size": vocab_size,
        "layers": layers,
        "batch_size": batch_size,
        "steps": steps,
        "device": platform.processor() or "cpu",
        "versions": {"torch": torch_version, "transformers": tf_version, "python": platform.python_version()},
        "points": points,
    }
    write_json_atomic(out / "results.json", report)
    _figure(report, out / "memory.png")
    (out / "memory.md").write_text(table(report))
    return report


def _by(report: dict) -> dict:
    return {(p["seq_len"], p["linear_ce"]): p for p in report["points"]}


def table(report: dict) -> str:
    """Markdown table: one row per sequence length, peak and step memory per loss, and their ratio."""
    pts = _by(report)
    seqs = sorted({s for s, _ in pts})
    kinds = sorted({k for _, k in pts}, key=lambda k: LOSSES.index(k) if k in LOSSES else 9)
    head = ["seq", "fp32 logits (GB)"] + [f"{k}: peak RSS (GB)" for k in kinds] + [f"{k}: step (GB)" for k in kinds]
    ratio = len(kinds) == 2
    if ratio:
        head += [f"peak {kinds[1]}/{kinds[0]}", f"step {kinds[1]}/{kinds[0]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in seqs:
        row = [str(s), f"{next(p for (q, _), p in pts.items() if q == s)['logits_fp32_gb']:.2f}"]
        row += [f"{pts[s, k]['peak_rss_gb']:.2f}" if (s, k) in pts else "n/a" for k in kinds]
        row += [f"{pts[s, k]['step_peak_gb']:.2f}" if (s, k) in pts else "n/a" for k in kinds]
        if ratio and all((s, k) in pts for k in kinds):
            a, b = pts[s, kinds[0]], pts[s, kinds[1]]
            row += [f"{b['peak_rss_gb'] / a['peak_rss_gb']:.2f}", f"{b['step_peak_gb'] / a['step_peak_gb']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = _by(report)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind in sorted({k for _, k in pts}):
        xs = sorted(s for s, k in pts if k == kind)
        label = "full logits (linear_ce=off)" if kind == "off" else f"linear_ce={kind}"
        ax.plot(xs, [pts[s, kind]["peak_rss_gb"] for s in xs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"sequence length (batch {report['batch_size']})")
    ax.set_ylabel("peak RSS of the process (GB)")
    ax.set_title(f"ELO step memory, {report['arch']}, vocab {report['vocab_size']:,}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _main(argv: list[str]) -> None:
    from jsonargparse import auto_cli

    if argv[:1] == ["point"]:
        print(json.dumps(auto_cli(memory_point, args=argv[1:], as_positional=False)))
    else:
        auto_cli(linear_ce_memory, args=argv, as_positional=False)


if __name__ == "__main__":
    _main(sys.argv[1:])
