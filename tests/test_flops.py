import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from elo_lightning.flops import (
    analytic_train_flops_per_token,
    arch_shape,
    count_parameters,
    equivalent_seq_len,
    measure_train_flops,
)
from elo_lightning.models import PROJECTIONS

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"
REAL = {
    "llama-3.1-8b": 8_030_261_248,
    "mistral-7b-v0.3": 7_248_023_552,
    "qwen2-7b": 7_615_616_512,
    "llama-3.1-70b": 70_553_706_496,
}
SCALED = {"llama-3.1-8b-scaled": "llama-3.1-8b", "qwen2-7b-scaled": "qwen2-7b"}


def load_config(name):
    d = json.loads((MODELS / f"{name}.json").read_text())
    return AutoConfig.for_model(**d)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_config_loads_with_exact_parameter_count(name):
    cfg = load_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert count_parameters(model) == {"trainable": REAL[name], "total": REAL[name]}
    assert cfg.dtype == torch.bfloat16 and not cfg.tie_word_embeddings


def test_llama31_rope_scaling_preserved():
    cfg = load_config("llama-3.1-8b")
    rp = cfg.rope_parameters
    assert rp["rope_type"] == "llama3" and rp["factor"] == 8.0 and rp["rope_theta"] == 500000.0
    assert rp["low_freq_factor"] == 1.0 and rp["high_freq_factor"] == 4.0
    assert rp["original_max_position_embeddings"] == 8192


@pytest.mark.parametrize("scaled,real", sorted(SCALED.items()))
@pytest.mark.parametrize("real_seq", [4096, 8192])
def test_scaled_config_keeps_speedup_ratios(scaled, real, real_seq):
    rc, sc = load_config(real), load_config(scaled)
    r, s = arch_shape(rc), arch_shape(sc)
    assert s.n_layers == r.n_layers
    assert s.n_heads // s.n_kv_heads == r.n_heads // r.n_kv_heads
    assert s.vocab >= 8192
    seq = equivalent_seq_len(rc, sc, real_seq)
    assert seq < real_seq
    for method in ("elo", "freeze"):
        ratio_r = analytic_train_flops_per_token(rc, method, None, real_seq) / analytic_train_flops_per_token(
            rc, "fft", None, real_seq
        )
        ratio_s = analytic_train_flops_per_token(sc, method, None, seq) / analytic_train_flops_per_token(
            sc, "fft", None, seq
        )
        assert abs(ratio_s / ratio_r - 1) < 0.10, (method, ratio_r, ratio_s)


def test_scaled_llama_is_cpu_sized():
    cfg = load_config("llama-3.1-8b-scaled")
    with torch.device("meta"):
        n = count_parameters(AutoModelForCausalLM.from_config(cfg))["total"]
    assert 10e6 < n < 60e6
    assert equivalent_seq_len(load_config("llama-3.1-8b"), cfg, 8192) == 512


def test_analytic_fft_is_6N_plus_attention():
    cfg = load_config("llama-3.1-8b")
    s = arch_shape(cfg)
    n_matmul = s.n_layers * s.layer_params + s.head_params
    f = analytic_train_flops_per_token(cfg, "fft", None, 1, causal=False)
    attn = 3 * 4 * s.n_heads * s.head_dim * s.n_layers
    assert f == pytest.approx(6 * n_matmul + attn)
    # ELO at 8192 tokens does roughly a tenth of FFT's work for Llama-3.1-8B
    r = analytic_train_flops_per_token(cfg, "elo", [0, 31], 8192) / analytic_train_flops_per_token(
        cfg, "fft", None, 8192
    )
    assert 0.08 < r < 0.12


def test_analytic_rejects_bad_input():
    cfg = load_config("llama-3.1-8b")
    with pytest.raises(ValueError):
        analytic_train_flops_per_token(cfg, "adam", None, 128)
    with pytest.raises(ValueError):
        analytic_train_flops_per_token(cfg, "elo", [0, 32], 128)
    with pytest.raises(ValueError):
        analytic_train_flops_per_token(cfg, "lora", None, 128, lora_targets=["nope"])


# --- measured (meta device, FlopCounterMode) vs analytic on a tiny Llama ---------------------------------
L, LAM, B, S, R = 8, (0, 7), 2, 64, 8


def tiny(n_layers=L):
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=224,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
    )


def build_fft():
    return LlamaForCausalLM(tiny())


def build_freeze():
    m = LlamaForCausalLM(tiny())
    m.requires_grad_(False)
    for i in LAM:
        m.model.layers[i].requires_grad_(True)
    return m


def build_elo():
    # the detached model: embedding + layers λ={0,7} + final norm + head; embedding and head frozen
    m = LlamaForCausalLM(tiny(len(LAM)))
    m.requires_grad_(False)
    for layer in m.model.layers:
        layer.requires_grad_(True)
    return m


def build_lora():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(LlamaForCausalLM(tiny()), LoraConfig(r=R, lora_alpha=16, target_modules=list(PROJECTIONS)))


@pytest.fixture(scope="module")
def measured():
    builders = {"fft": build_fft, "freeze": build_freeze, "elo": build_elo, "lora": build_lora}
    return {k: measure_train_flops(f, B, S) / (B * S) for k, f in builders.items()}


def test_measured_order(measured):
    assert measured["elo"] < measured["freeze"] < measured["fft"]
    assert measured["lora"] < measured["fft"]


@pytest.mark.parametrize("method", ["elo", "freeze", "lora"])
def test_measured_ratio_matches_analytic(measured, method):
    an = {m: analytic_train_flops_per_token(tiny(), m, LAM, S, lora_rank=R, causal=False) for m in measured}
    ratio_measured = measured[method] / measured["fft"]
    ratio_analytic = an[method] / an["fft"]
    assert ratio_measured == pytest.approx(ratio_analytic, rel=0.03)
    # FlopCounterMode ignores the causal mask, so with causal=False the absolute counts agree too
    assert measured[method] == pytest.approx(an[method], rel=0.03)


def test_measure_raises_without_trainable_params():
    def frozen():
        m = LlamaForCausalLM(tiny(2))
        m.requires_grad_(False)
        return m

    with pytest.raises(RuntimeError, match="no trainable"):
        measure_train_flops(frozen, 1, 8)


def test_count_parameters():
    m = build_freeze()
    c = count_parameters(m)
    layer = sum(p.numel() for p in m.model.layers[0].parameters())
    assert c["trainable"] == 2 * layer
    assert c["total"] == sum(p.numel() for p in m.parameters())
