"""FLOP accounting for ELO, freeze-tuning, LoRA and full fine-tuning (FFT) of Llama-family causal LMs.

Two independent ways to count training FLOPs, which the tests cross-check against each other:

* :func:`analytic_train_flops_per_token` -- a closed form from the architecture config (nanoGPT/PaLM style).
* :func:`measure_train_flops` -- builds the model on the ``meta`` device and counts every matmul that autograd
  actually runs in forward + backward with :func:`lightning.fabric.utilities.throughput.measure_flops`
  (``torch.utils.flop_counter.FlopCounterMode``). Frozen parameters skip their weight-gradient matmuls and
  activation gradients stop where nothing below requires grad, exactly as in a real training step.

Counting rules of the analytic model (per token, one multiply-add = 2 FLOPs)
---------------------------------------------------------------------------
Let ``P_l`` be the matmul weights of one decoder layer (q, k, v, o, gate, up, down; biases and norms are
ignored, they are O(hidden) per token) and ``P_head = vocab * hidden``.

* Forward: ``2 * P`` for every weight matrix that is *computed*, plus attention scores/values
  ``QK^T`` and ``AV``: ``2 * 2 * n_heads * head_dim * ctx`` per layer, where ``ctx = seq_len`` if
  ``causal=False`` (what ``FlopCounterMode`` counts, it ignores the causal mask) or ``(seq_len + 1) / 2``
  if ``causal=True`` (the work a causal flash-attention kernel really does). The embedding lookup is a
  gather: 0 FLOPs. The LM head is a matmul (``2 * P_head``).
* Backward, activation gradients: ``2 * P`` for every matmul that lies on the path the gradient must flow
  through, i.e. from the loss down to the lowest layer holding a trainable weight, plus ``2x`` the attention
  forward FLOPs for those layers (dQ, dK, dP, dV; we do not count the score recomputation that flash kernels do).
  The LM head always needs its activation gradient when anything below it trains, even if it is frozen.
  Inside the lowest trainable layer only q/k/v input gradients could be skipped, and they are not, because its
  (trainable) ``input_layernorm`` needs them; under LoRA the norms are frozen, so layer 0's q/k/v input
  gradients are skipped (autograd sees that the embedding output does not require grad).
* Backward, weight gradients: ``2 * P`` only for trainable weight matrices (the embedding gradient is a
  scatter-add: 0 FLOPs). For LoRA these are the adapters, ``r * (d_in + d_out)`` per adapted matrix.

FLOP kinds (``layer_indices``: λ as 0-based decoder-layer indices; default: first and last layer). Which stage is
counted with which kind is the stage registry's (``elo_lightning.modules.STAGES``: alignment and SFT are ``fft``).

* ``fft``: all layers computed, everything trainable -> the classic ``6 * N`` (+ attention).
* ``elo``: the detached model computes embedding, λ, final norm and head only; λ trainable, head frozen.
  Gradient flows head -> ... -> lowest λ layer.  Middle layers are never computed.
* ``freeze``: all layers computed forward; backward flows from the head down to the lowest λ layer;
  weight gradients for λ only.
* ``lora``: all base weights frozen; activation gradients through all layers; weight gradients only for
  the rank-``r`` adapters (default targets q, k, v, o, gate, up, down).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from elo_lightning.models import PROJECTIONS

__all__ = [
    "ArchShape",
    "FLOP_KINDS",
    "analytic_train_flops_per_token",
    "arch_shape",
    "count_parameters",
    "equivalent_seq_len",
    "measure_train_flops",
]

FLOP_KINDS = ("fft", "elo", "freeze", "lora")


@dataclass(frozen=True)
class ArchShape:
    """The numbers of a dense Llama-family decoder that decide its FLOPs."""

    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    def matrices(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each weight matrix of one decoder layer."""
        h, q, kv = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, self.intermediate),
            "up_proj": (h, self.intermediate),
            "down_proj": (self.intermediate, h),
        }

    @property
    def layer_params(self) -> int:
        return sum(i * o for i, o in self.matrices().values())

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden


def _config_get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def arch_shape(config: Any) -> ArchShape:
    """Shape from a ``transformers`` config, a config dict, or a path to a ``config.json``."""
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            config = json.load(f)
    if _config_get(config, "text_config") is not None and _config_get(config, "hidden_size") is None:
        config = _config_get(config, "text_config")
    hidden = int(_config_get(config, "hidden_size"))
    n_heads = int(_config_get(config, "num_attention_heads"))
    n_kv = _config_get(config, "num_key_value_heads") or n_heads
    head_dim = _config_get(config, "head_dim") or hidden // n_heads
    return ArchShape(
        hidden=hidden,
        n_layers=int(_config_get(config, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        head_dim=int(head_dim),
        intermediate=int(_config_get(config, "intermediate_size")),
        vocab=int(_config_get(config, "vocab_size")),
    )


def analytic_train_flops_per_token(
    config: Any,
    kind: str,
    layer_indices: Sequence[int] | None = None,
    seq_len: int = 2048,
    lora_rank: int = 16,
    *,
    causal: bool = True,
    lora_targets: Sequence[str] = PROJECTIONS,
) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring for the counting rules.

    ``config``: HF config / dict / path. ``kind``: one of ``FLOP_KINDS``. ``layer_indices``: λ for ``elo``/``freeze``
    (0-based; default first and last; ignored for ``fft``/``lora``). ``causal``: count only the unmasked half of the
    attention scores.
    """
    if kind not in FLOP_KINDS:
        raise ValueError(f"unknown FLOP kind {kind!r}; expected one of {FLOP_KINDS}")
    s = arch_shape(config)
    n_layers = s.n_layers
    lam = sorted(set(int(i) for i in (layer_indices if layer_indices is not None else (0, n_layers - 1))))
    if kind in ("elo", "freeze"):
        if not lam:
            raise ValueError("layer_indices must not be empty for elo/freeze")
        bad = [i for i in lam if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"layer indices {bad} out of range for a {n_layers}-layer model")

    mats = s.matrices()
    P_l, P_head = s.layer_params, s.head_params
    ctx = (seq_len + 1) / 2 if causal else float(seq_len)
    attn_fwd = 4.0 * s.n_heads * s.head_dim * ctx  # QK^T and AV, per token per layer
    qkv = sum(i * o for n, (i, o) in mats.items() if n in ("q_proj", "k_proj", "v_proj"))

    if kind == "fft":
        computed = path = trainable = n_layers
        fwd = computed * (2 * P_l + attn_fwd) + 2 * P_head
        bwd_act = path * (2 * P_l + 2 * attn_fwd) + 2 * P_head
        bwd_w = trainable * 2 * P_l + 2 * P_head
        return float(fwd + bwd_act + bwd_w)

    if kind in ("elo", "freeze"):
        computed = len(lam) if kind == "elo" else n_layers
        # elo: every computed layer is a λ layer, so all of them lie on the gradient path.
        path = len(lam) if kind == "elo" else n_layers - lam[0]
        fwd = computed * (2 * P_l + attn_fwd) + 2 * P_head
        bwd_act = path * (2 * P_l + 2 * attn_fwd) + 2 * P_head  # frozen head: activation grad only
        bwd_w = len(lam) * 2 * P_l
        return float(fwd + bwd_act + bwd_w)

    # lora
    unknown = set(lora_targets) - set(mats)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; known: {sorted(mats)}")
    r = lora_rank
    adapter = sum(r * (i + o) for n, (i, o) in mats.items() if n in lora_targets)
    qkv_targets = [n for n in ("q_proj", "k_proj", "v_proj") if n in lora_targets]
    adapter_qkv_in = sum(r * mats[n][0] for n in qkv_targets)
    fwd = n_layers * (2 * P_l + 2 * adapter + attn_fwd) + 2 * P_head
    bwd_act = n_layers * (2 * P_l + 2 * adapter + 2 * attn_fwd) + 2 * P_head
    # layer 0: its input (embedding output, frozen input_layernorm) does not require grad
    bwd_act -= 2 * qkv + 2 * adapter_qkv_in
    bwd_w = n_layers * 2 * adapter
    return float(fwd + bwd_act + bwd_w)


def measure_train_flops(build_model: Callable[[], torch.nn.Module], batch_size: int, seq_len: int) -> int:
    """FLOPs of one training step (forward + backward of the causal-LM loss) on a ``batch_size x seq_len`` batch.

    ``build_model`` is called under ``torch.device("meta")`` (no memory, no weights) and must set
    ``requires_grad`` as training would. Counted with Lightning's ``measure_flops`` (``FlopCounterMode``).
    Note: ``FlopCounterMode`` ignores causal masking in attention and counts the score recomputation of
    fused-attention backward kernels. Raises ``RuntimeError`` if nothing could be counted.
    """
    from lightning.fabric.utilities.throughput import measure_flops

    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    with torch.device("meta"):
        model = build_model()
    if not any(p.requires_grad for p in model.parameters()):
        raise RuntimeError("measure_train_flops: the model has no trainable parameter, nothing to backpropagate")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None) or _config_get(getattr(model, "config", {}), "vocab_size")
    if not vocab:
        raise RuntimeError("measure_train_flops: cannot find the vocabulary size of the model")
    input_ids = torch.randint(0, int(vocab), (batch_size, seq_len), device="meta")
    model.train()

    def forward() -> torch.Tensor:
        # use_cache=True: without a cache transformers probes position_ids for packed sequences (.item() on meta).
        out = model(input_ids=input_ids, labels=input_ids, use_cache=True)
        loss = out.loss if hasattr(out, "loss") else out["loss"]
        if loss is None:
            raise RuntimeError("measure_train_flops: model returned no loss for labels=input_ids")
        return loss

    try:
        flops = measure_flops(model, forward, loss_fn=lambda loss: loss)
    except Exception as e:  # noqa: BLE001 - re-raise with context
        raise RuntimeError(
            f"measure_train_flops: meta-device FLOP counting failed for {type(model).__name__}: {e}"
        ) from e
    if not flops:
        raise RuntimeError(
            f"measure_train_flops: counted 0 FLOPs for {type(model).__name__}; its ops are not covered "
            "by torch.utils.flop_counter"
        )
    return int(flops)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """``{"trainable": ..., "total": ...}``; parameters shared between modules are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": int(trainable), "total": int(total)}


def equivalent_seq_len(real_config: Any, scaled_config: Any, seq_len: int) -> int:
    """Sequence length at which ``scaled_config`` has the attention/matmul FLOP balance ``real_config`` has at
    ``seq_len``.

    Attention FLOPs per token per layer grow as ``n_heads * head_dim * seq_len`` while matmul FLOPs grow as the layer's
    weight count, so a narrower model must run a proportionally shorter sequence to keep the ELO/FFT and freeze/FFT
    ratios (e.g. ``llama-3.1-8b-scaled`` at 512 tokens <-> Llama-3.1-8B at 8192 tokens).
    """
    r, s = arch_shape(real_config), arch_shape(scaled_config)
    rho_r = r.n_heads * r.head_dim / r.layer_params
    rho_s = s.n_heads * s.head_dim / s.layer_params
    return max(1, round(seq_len * rho_r / rho_s))
