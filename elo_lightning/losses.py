"""Causal-LM loss without the full logits: fused / chunked linear cross-entropy.

The LM head of a Llama-3.1-8B-shaped model maps every token to 128,256 logits: at seq 8192 and batch 4 that is
4.2G values (16.8 GB in fp32, twice that with their gradient), more than the two decoder layers ELO trains. A
*linear cross-entropy* computes ``cross_entropy(hidden @ W.T, labels)`` and its gradients w.r.t. ``hidden`` and
``W`` without ever holding all logits.

Implementations (``LINEAR_CE_CHOICES``; the stage switch ``linear_ce``):

* ``liger``: Liger Kernel's fused linear cross-entropy (``pip install liger-kernel``; Triton, CUDA only).
* ``cce``: Apple's Cut Cross-Entropy (``pip install cut-cross-entropy``; Triton, CUDA only).
* ``chunked``: :class:`ChunkedLinearCrossEntropy`, plain PyTorch, any device. The tokens are cut into chunks of
  ``chunk_tokens``; for each chunk it computes the logits (matmul in the input dtype, upcast to fp32 as
  transformers does), their logsumexp, the loss, and -- in the same pass, as Liger does -- the gradient of the
  summed loss w.r.t. the chunk's hidden states and (when the head trains) its contribution to the head's
  gradient, accumulated in fp32. Backward only scales the stored gradients. At most one chunk of logits (plus
  its gradient, in place) is alive at a time. Same matmuls as the plain loss, so the same FLOPs (tested with
  ``FlopCounterMode`` on meta).
* ``auto`` (default): ``liger`` when the model is on CUDA and it imports, else ``cce`` likewise, else ``chunked``.
* ``off``: transformers' own loss on full logits (``model(**batch).loss``).

Semantics are transformers' ``ForCausalLMLoss``: labels shifted left by one (position t predicts t + 1; the last
position predicts nothing), ``ignore_index=-100``, token mean, or -- when ``num_items_in_batch`` is given, as the
base module does under DDP/FSDP -- token sum divided by it. Gemma's ``final_logit_softcapping`` is applied to the
fp32 logits (transformers applies it in the model dtype: equal in fp32, closer to exact in bf16).

Sharding: the loss runs through the model's own call and *inside the LM head's own call*
(:func:`enable_linear_ce` gives the causal LM and its head a forward that also accepts a :class:`LossRequest`), so
FSDP2's hooks on the root unit (final norm, rotary buffers) and on the head's unit gather the weights for the
forward, gather them again for backward and reduce-scatter the gradients exactly as for the plain
``model(**batch)``; a tied head lives in one unit with the embedding and is handled the same way.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from elo_lightning.errors import ELOError

IGNORE_INDEX = -100
LINEAR_CE_CHOICES = ("auto", "off", "chunked", "liger", "cce")
# fp32 logits of one chunk: 256 MiB (512 tokens at a 128,256 vocabulary; 8192 tokens at 8,192)
CHUNK_BYTES = 256 * 2**20
_PACKAGES = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}


def default_chunk_tokens(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk of fp32 logits takes ``chunk_bytes`` (a multiple of 64 when >= 64)."""
    n = max(1, chunk_bytes // (4 * vocab_size))
    return n - n % 64 if n >= 64 else n


def check_linear_ce(name: str) -> None:
    """Cheap validation of the switch (before any model is built)."""
    if name not in LINEAR_CE_CHOICES:
        raise ELOError(f"unknown linear_ce {name!r}; choose one of {', '.join(LINEAR_CE_CHOICES)}")
    if name in _PACKAGES and importlib.util.find_spec(_PACKAGES[name]) is None:
        pip = {"liger": "liger-kernel", "cce": "cut-cross-entropy"}[name]
        raise ELOError(f"linear_ce={name!r} needs the package {pip} (pip install {pip}; CUDA only); use 'auto'")


def resolve_linear_ce(name: str, device: torch.device | str) -> str:
    """The implementation ``name`` means on ``device``: ``auto`` picks liger > cce (CUDA, installed) > chunked."""
    check_linear_ce(name)
    on_cuda = torch.device(device).type == "cuda"
    if name in _PACKAGES and not on_cuda:
        raise ELOError(f"linear_ce={name!r} runs on CUDA only (the model is on {device}); use 'auto' or 'chunked'")
    if name != "auto":
        return name
    if on_cuda:
        for impl, package in _PACKAGES.items():
            if importlib.util.find_spec(package) is not None:
                return impl
    return "chunked"


# -- the chunked PyTorch implementation -------------------------------------------------------------------------


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` (optionally soft-capped) against ``targets``, chunk by chunk.

    ``hidden`` (N, H), ``weight`` (V, H), ``targets`` (N,) already shifted; ignored targets contribute 0.
    Returns a scalar fp32 tensor: the sum over the non-ignored tokens.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int, softcap: float | None, grad_hidden: bool,
                grad_weight: bool):
        n = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if grad_hidden else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_weight else None
        for start in range(0, n, chunk_tokens):
            h = hidden[start:start + chunk_tokens]
            y = targets[start:start + chunk_tokens]
            z = (h @ weight.t()).float()  # (c, V): the only logits alive
            t = None
            if softcap is not None:
                t = torch.tanh(z / softcap)
                z = t * softcap
            valid = y != IGNORE_INDEX
            y_safe = torch.where(valid, y, 0).unsqueeze(1)
            lse = torch.logsumexp(z, dim=-1)
            target_logit = z.gather(1, y_safe).squeeze(1)
            total += ((lse - target_logit) * valid).sum()
            if not (grad_hidden or grad_weight):
                continue
            g = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            g.scatter_add_(1, y_safe, torch.full_like(y_safe, -1, dtype=g.dtype))
            g.mul_(valid.unsqueeze(1))
            if t is not None:
                g.mul_(1 - t * t)  # d softcap*tanh(z/softcap) / dz
            g = g.to(hidden.dtype)
            if grad_hidden:
                d_hidden[start:start + chunk_tokens] = g @ weight
            if grad_weight:
                d_weight += (g.t() @ h).float()
        ctx.save_for_backward(d_hidden if grad_hidden else None, d_weight if grad_weight else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        d_hidden, d_weight = ctx.saved_tensors
        gh = d_hidden * grad_out.to(d_hidden.dtype) if d_hidden is not None else None
        gw = (d_weight * grad_out).to(ctx.weight_dtype) if d_weight is not None else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, impl: str = "chunked",
                             softcap: float | None = None, chunk_tokens: int | None = None) -> torch.Tensor:
    """Sum over non-ignored tokens of the cross-entropy of ``hidden @ weight.T``; hidden (N, H), targets (N,)."""
    if impl == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum",
                                                softcap=softcap).float()
    if impl == "cce":
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, softcap=softcap,
                                    reduction="sum").float()
    if impl != "chunked":
        raise ELOError(f"unknown linear cross-entropy implementation {impl!r}")
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0])
    grad_on = torch.is_grad_enabled()
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, int(chunk), softcap,
                                           grad_on and hidden.requires_grad, grad_on and weight.requires_grad)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal shift: position t is scored on label t + 1; the last position on nothing."""
    return nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   num_items_in_batch: torch.Tensor | float | None = None, impl: str = "chunked",
                   softcap: float | None = None, chunk_tokens: int | None = None) -> torch.Tensor:
    """``ForCausalLMLoss(hidden @ weight.T, labels)`` without full logits: token mean, or sum / num_items_in_batch."""
    targets = shift_labels(labels).reshape(-1).to(hidden.device)
    total = linear_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]), weight, targets, impl, softcap,
                                     chunk_tokens)
    if num_items_in_batch is None:
        return total / (targets != IGNORE_INDEX).sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


# -- running it inside the LM head's call (FSDP2-safe) ---------------------------------------------------------


class LossRequest:
    """What the head needs to return the loss instead of logits. A plain object, not a dataclass: FSDP2's
    mixed-precision policy casts floating tensors in forward arguments (and in dataclasses), and the
    ``num_items_in_batch`` denominator must stay fp32."""

    def __init__(self, labels, num_items_in_batch=None, impl="chunked", softcap=None, chunk_tokens=None):
        self.labels, self.num_items_in_batch, self.impl = labels, num_items_in_batch, impl
        self.softcap, self.chunk_tokens = softcap, chunk_tokens


class _LinearCEHead:
    """Mixin in front of the head's class: ``head(hidden, loss_request=r)`` returns the loss instead of logits."""

    def forward(self, input, loss_request: LossRequest | None = None):
        if loss_request is None:
            return super().forward(input)
        r = loss_request
        return causal_lm_loss(input, self.weight, r.labels, r.num_items_in_batch, r.impl, r.softcap, r.chunk_tokens)


class _LinearCECausalLM:
    """Mixin in front of the HF causal LM's class: ``lm(..., loss_request=r)`` runs the decoder (``lm.model``) and
    hands its last hidden state to the head's call (above). Entered through the model's own call, so every FSDP2
    unit on the way (the root: final norm, rotary buffers) unshards and reduces as in a plain forward."""

    def forward(self, *args, loss_request: LossRequest | None = None, **kwargs):
        if loss_request is None:
            return super().forward(*args, **kwargs)
        # what wrappers (peft) pass along as None, and the labels, which travel in the request
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("labels", "return_dict")}
        hidden = self.model(*args, **kwargs).last_hidden_state
        return self.get_output_embeddings()(hidden, loss_request=loss_request)


_CLASSES: dict[tuple[type, type], type] = {}


def _give_mixin(module: nn.Module, mixin: type) -> None:
    """Put ``mixin`` in front of the module's class, in place. The new class keeps the name, module and qualname
    (``save_pretrained`` writes the class name into config.json's ``architectures``); parameters, buffers, state
    dict and hooks (FSDP2's included, before or after ``fully_shard``) are untouched."""
    cls = type(module)
    if isinstance(module, mixin):
        return
    if (mixin, cls) not in _CLASSES:
        attrs = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        _CLASSES[mixin, cls] = type(cls.__name__, (mixin, cls), attrs)
    module.__class__ = _CLASSES[mixin, cls]


def _inner(model: nn.Module) -> nn.Module:
    from elo_lightning.sharding import _inner as inner

    return inner(model)


def enable_linear_ce(model: nn.Module) -> None:
    """Let ``model(..., loss_request=r)`` return the loss through the head's linear cross-entropy. In place."""
    lm = _inner(model)
    head = lm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None or not hasattr(lm, "model"):
        raise ELOError(f"linear_ce needs a decoder at .model and a bias-free nn.Linear LM head; "
                       f"{type(lm).__name__} has {type(head).__name__}: use linear_ce=off")
    _give_mixin(head, _LinearCEHead)
    _give_mixin(lm, _LinearCECausalLM)


def is_linear_ce_enabled(model: nn.Module) -> bool:
    lm = _inner(model)
    return isinstance(lm, _LinearCECausalLM) and isinstance(lm.get_output_embeddings(), _LinearCEHead)


def model_loss(model: nn.Module, inputs: dict, impl: str, chunk_tokens: int | None = None) -> torch.Tensor:
    """The causal-LM loss of ``model(**inputs)`` (inputs hold ``labels``; maybe ``num_items_in_batch``) computed
    by the decoder and then the head's linear cross-entropy: no full logits. Called through ``model``'s own call."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    num_items = inputs.pop("num_items_in_batch", None)
    if not is_linear_ce_enabled(model):
        enable_linear_ce(model)
    softcap = getattr(_inner(model).config, "final_logit_softcapping", None)
    return model(**inputs, loss_request=LossRequest(labels, num_items, impl, softcap, chunk_tokens))


def logits_bytes(tokens: int, vocab_size: int) -> int:
    """fp32 bytes of a full logits tensor (what ``linear_ce=off`` materialises, before its gradient)."""
    return 4 * tokens * vocab_size


__all__ = [
    "CHUNK_BYTES",
    "LINEAR_CE_CHOICES",
    "ChunkedLinearCrossEntropy",
    "LossRequest",
    "causal_lm_loss",
    "check_linear_ce",
    "default_chunk_tokens",
    "enable_linear_ce",
    "is_linear_ce_enabled",
    "linear_cross_entropy_sum",
    "logits_bytes",
    "model_loss",
    "resolve_linear_ce",
    "shift_labels",
]
