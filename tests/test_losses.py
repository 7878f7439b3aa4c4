"""The linear cross-entropy equals transformers' loss on full logits (values and gradients), never holds more than
one chunk of logits, counts the same FLOPs, and is the stage modules' default."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import RandomTokens, fit_losses, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from elo_lightning.errors import ELOError
from elo_lightning.losses import (
    causal_lm_loss,
    default_chunk_tokens,
    enable_linear_ce,
    is_linear_ce_enabled,
    linear_cross_entropy_sum,
    model_loss,
    resolve_linear_ce,
)


def _reference(hidden, weight, labels, num_items=None, softcap=None):
    """transformers' ForCausalLMLoss on full logits."""
    logits = (hidden @ weight.t()).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    target = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    reduction = "mean" if num_items is None else "sum"
    loss = F.cross_entropy(logits.reshape(-1, weight.shape[0]), target, ignore_index=-100, reduction=reduction)
    return loss if num_items is None else loss / num_items


def _inputs(b=3, t=11, h=16, v=50, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g).to(dtype).requires_grad_(True)
    weight = (0.3 * torch.randn(v, h, generator=g)).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :4] = -100  # a masked "prompt"
    labels[-1, 7] = -100
    return hidden, weight, labels


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk", [1, 4, 7, 33, 1000])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("num_items", [None, 17.0])
def test_chunked_equals_full_logits_loss_and_gradients(chunk, softcap, num_items):
    hidden, weight, labels = _inputs()
    want = _reference(hidden, weight, labels, num_items, softcap)
    got = causal_lm_loss(hidden, weight, labels, num_items, "chunked", softcap, chunk_tokens=chunk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(_grads(got * 1.7, hidden, weight), _grads(want * 1.7, hidden, weight)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_frozen_head_gets_no_gradient_and_no_grad_mode_computes_none():
    hidden, weight, labels = _inputs()
    weight.requires_grad_(False)
    loss = causal_lm_loss(hidden, weight, labels, chunk_tokens=5)
    assert loss.grad_fn is not None
    (gh,) = _grads(loss, hidden)
    torch.testing.assert_close(gh, _grads(_reference(hidden, weight, labels), hidden)[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert causal_lm_loss(hidden, weight, labels, chunk_tokens=5).grad_fn is None


def test_bf16_inputs_accumulate_in_fp32():
    """bf16 hidden/weight as under bf16-true: same rounding of logits as transformers (bf16 matmul, fp32 upcast),
    so the loss equals the bf16 reference; the head gradient is summed over chunks in fp32."""
    hidden, weight, labels = _inputs(b=4, t=64, h=32, v=300, dtype=torch.bfloat16)
    want, got = _reference(hidden, weight, labels), causal_lm_loss(hidden, weight, labels, chunk_tokens=16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gh, gw = _grads(got, hidden, weight)
    rh, rw = _grads(want, hidden, weight)
    assert gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(gh, rh, rtol=2e-2, atol=1e-4)
    exact = _grads(_reference(hidden.float(), weight.float(), labels), weight)[0]  # fp32 truth
    assert (gw.float() - exact).abs().max() <= (rw.float() - exact).abs().max() * 1.5 + 1e-6


def test_all_labels_ignored_gives_nan_like_transformers():
    hidden, weight, labels = _inputs()
    labels[:] = -100
    assert torch.isnan(causal_lm_loss(hidden, weight, labels)) and torch.isnan(_reference(hidden, weight, labels))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_more_than_one_chunk_of_logits():
    hidden, weight, labels = _inputs(b=2, t=64, h=8, v=500)
    with _LargestTensor() as full:
        _grads(_reference(hidden, weight, labels), hidden, weight)
    with _LargestTensor() as chunked:
        _grads(causal_lm_loss(hidden, weight, labels, chunk_tokens=8), hidden, weight)
    assert full.largest >= 128 * 500  # the check can fail: the full loss holds all logits
    assert chunked.largest <= 8 * 500


@pytest.mark.parametrize("family", ["llama", "qwen2-tied", "gemma3", "mistral"])
def test_model_loss_equals_hf_loss_for_every_head_kind(family):
    """Tied heads (qwen2-tied: the head's weight is the embedding) and Gemma's embedding scaling included."""
    model = tiny_model(family).train()
    x = RandomTokens(n=3, seq_len=12, masked=True)
    batch = {"input_ids": x.x[:3], "labels": x.labels[:3]}
    params = [p for p in model.parameters() if p.requires_grad]
    want = model(**batch).loss
    rw = torch.autograd.grad(want, params)
    enable_linear_ce(model)
    got = model_loss(model, batch, "chunked", chunk_tokens=5)
    gw = torch.autograd.grad(got, params)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(gw, rw):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert model.lm_head(torch.zeros(1, 64)).shape == (1, 512), "the head's plain call must still give logits"
    torch.testing.assert_close(model(**batch).loss, want, rtol=1e-6, atol=1e-7)  # and the model's plain call
    assert type(model).__name__ == type(tiny_model(family)).__name__  # config.json's "architectures" unchanged
    if family == "qwen2-tied":
        assert model.lm_head.weight is model.get_input_embeddings().weight


def test_model_loss_normalises_by_num_items_in_batch():
    model = tiny_model("llama").train()
    x = RandomTokens(n=2, seq_len=10, masked=True)
    batch = {"input_ids": x.x[:2], "labels": x.labels[:2], "num_items_in_batch": torch.tensor(7.0)}
    torch.testing.assert_close(model_loss(model, batch, "chunked"), model(**batch).loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_trains", [False, True])
def test_flop_count_is_unchanged(head_trains):
    """measure_train_flops (meta copy, plain loss) counts exactly the FLOPs of the chunked loss: the head's matmuls
    are the same, chunk by chunk (with a frozen head: no weight-gradient matmul in either)."""
    from lightning.fabric.utilities.throughput import measure_flops

    from elo_lightning.flops import measure_train_flops
    from elo_lightning.surgery import detach

    def build():
        small, _ = detach(tiny_model("llama"), "1,-1", copy_weights=False)
        small.requires_grad_(False)
        small.model.layers.requires_grad_(True)
        small.lm_head.requires_grad_(head_trains)
        return small.train()

    plain = measure_train_flops(build, 2, 16)
    with torch.device("meta"):
        model = build()
    ids = torch.randint(0, 512, (2, 16), device="meta")
    chunked = measure_flops(model, lambda: model_loss(model, {"input_ids": ids, "labels": ids, "use_cache": True},
                                                      "chunked", chunk_tokens=5), loss_fn=lambda loss: loss)
    head = 2 * 2 * 16 * 512 * 64
    assert chunked == plain and plain > (3 if head_trains else 2) * head


def test_switch_choices_and_resolution():
    assert resolve_linear_ce("auto", "cpu") == "chunked"
    assert resolve_linear_ce("off", "cpu") == "off"
    with pytest.raises(ELOError, match="unknown linear_ce"):
        resolve_linear_ce("fused", "cpu")
    for impl in ("liger", "cce"):
        with pytest.raises(ELOError, match=impl):  # not installed here, or CUDA-only
            resolve_linear_ce(impl, "cpu")
    with pytest.raises(ELOError, match="unknown"):
        linear_cross_entropy_sum(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), "x")
    assert default_chunk_tokens(128256) == 512 and default_chunk_tokens(8192) == 8192
    assert default_chunk_tokens(10**9) == 1




@pytest.fixture(scope="module")
def tied_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("tied") / "source"
    tiny_model("qwen2-tied").save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("stage", ["elo", "fft", "lora"])
def test_stage_default_is_the_chunked_loss_and_trains_like_the_plain_one(tied_source, stage):
    from elo_lightning.modules import AlignmentModule, DetachedLayerModule, LoRAModule
    from elo_lightning.optim import OptimizerConfig

    cls = {"elo": DetachedLayerModule, "fft": AlignmentModule, "lora": LoRAModule}[stage]
    extra = {"r": 4} if stage == "lora" else {}
    opt = OptimizerConfig(name="adamw", lr=1e-2)
    m1 = cls(model=tied_source, optimizer=opt, measure_flops=False, **extra)
    default = fit_losses(m1, dataset=RandomTokens(masked=True))
    plain = fit_losses(cls(model=tied_source, optimizer=opt, measure_flops=False, linear_ce="off", **extra),
                       dataset=RandomTokens(masked=True))
    assert m1._linear_ce == "chunked" and is_linear_ce_enabled(m1.model)
    assert default == pytest.approx(plain, rel=1e-5, abs=1e-6)
    assert default[0] != default[-1]


def test_stage_refuses_unknown_switch_values_before_building():
    from elo_lightning.modules import DetachedLayerModule

    with pytest.raises(ELOError, match="linear_ce"):
        DetachedLayerModule(model="configs/models/tiny-llama.json", linear_ce="fast")
