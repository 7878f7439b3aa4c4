"""Chat vector: exact arithmetic, skip, refusals, streaming memory bound, sharded inputs/outputs."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import elo_lightning.chat_vector as cv
from elo_lightning.chat_vector import apply_chat_vector, iter_output_tensors
from elo_lightning.errors import ELOError


def _config(**kw) -> LlamaConfig:
    fields = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, tie_word_embeddings=False,
    )
    fields.update(kw)
    return LlamaConfig(**fields)


def _save(path: Path, seed: int, dtype=torch.float32, shard: str | None = None, tokenizer_marker: bool = False, **kw):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(**kw))
    with torch.no_grad():  # norms init to exactly 1: perturb everything so every tensor differs per seed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model = model.to(dtype)
    if shard:
        model.save_pretrained(path, max_shard_size=shard)
    else:
        model.save_pretrained(path)
    if tokenizer_marker:
        (path / "tokenizer_config.json").write_text(json.dumps({"marker": str(path.name)}))
        (path / "chat_template.jinja").write_text("{{ messages }}")
    return model


def _state(path: Path) -> dict[str, torch.Tensor]:
    return dict(iter_output_tensors(path))


@pytest.fixture
def trio(tmp_path):
    _save(tmp_path / "base", 0)
    _save(tmp_path / "inst", 1, tokenizer_marker=True)
    _save(tmp_path / "tgt", 2)
    return tmp_path


def test_arithmetic_exact_and_skip(trio):
    out = trio / "out"
    summary = apply_chat_vector(str(trio / "base"), str(trio / "inst"), str(trio / "tgt"), str(out), ratio=0.5,
                                skip=("embed_tokens", "lm_head"))  # opt-in skip
    b, i, t, o = (_state(trio / n) for n in ("base", "inst", "tgt", "out"))
    assert set(o) == set(t)
    for name in t:
        if "embed_tokens" in name or "lm_head" in name:
            assert torch.equal(o[name], t[name]), name  # skip honoured: copied unchanged
        else:
            expected = t[name] + 0.5 * (i[name] - b[name])
            torch.testing.assert_close(o[name], expected, rtol=0, atol=1e-6)
            assert not torch.equal(o[name], t[name])
    assert summary["skipped"] == 2 and summary["added"] == len(t) - 2 and summary["sliced"] == 0
    # output loads as a model; tokenizer/template from instruct, manifest written
    AutoModelForCausalLM.from_pretrained(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["marker"] == "inst"
    assert (out / "chat_template.jinja").is_file()
    manifest = json.loads((out / "elo_manifest.json").read_text())
    assert manifest["stage"] == "chat_vector" and manifest["ratio"] == 0.5
    assert set(manifest["sources"]) == {"base", "instruct", "target"}
    assert manifest["counts"]["added"] == summary["added"]
    assert manifest["skipped"] == ["lm_head.weight", "model.embed_tokens.weight"]


def test_default_adds_to_every_parameter(trio):
    summary = apply_chat_vector(str(trio / "base"), str(trio / "inst"), str(trio / "tgt"), str(trio / "out"))
    b, i, t, o = (_state(trio / n) for n in ("base", "inst", "tgt", "out"))
    assert summary["added"] == len(t) and summary["skipped"] == 0
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        torch.testing.assert_close(o[name], t[name] + (i[name] - b[name]), rtol=0, atol=1e-6)
    assert json.loads((trio / "out" / "elo_manifest.json").read_text())["skipped"] == []


def test_no_skip_adds_everything_and_keeps_target_dtype(tmp_path):
    _save(tmp_path / "base", 0, dtype=torch.bfloat16)
    _save(tmp_path / "inst", 1, dtype=torch.bfloat16)
    _save(tmp_path / "tgt", 2, dtype=torch.bfloat16)
    apply_chat_vector(str(tmp_path / "base"), str(tmp_path / "inst"), str(tmp_path / "tgt"), str(tmp_path / "o"),
                      skip=())
    b, i, t, o = (_state(tmp_path / n) for n in ("base", "inst", "tgt", "o"))
    for name in t:
        assert o[name].dtype == torch.bfloat16
        exp = (t[name].float() + (i[name].float() - b[name].float())).to(torch.bfloat16)  # float32 math
        assert torch.equal(o[name], exp), name


def test_refuses_shape_mismatch(tmp_path):
    _save(tmp_path / "base", 0)
    _save(tmp_path / "inst", 1)
    _save(tmp_path / "tgt", 2, intermediate_size=96)
    with pytest.raises(ELOError, match="shape mismatch.*mlp"):
        apply_chat_vector(str(tmp_path / "base"), str(tmp_path / "inst"), str(tmp_path / "tgt"), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # validated before any work


def test_refuses_architecture_mismatch(tmp_path):
    _save(tmp_path / "base", 0)
    _save(tmp_path / "inst", 1, num_hidden_layers=3)
    _save(tmp_path / "tgt", 2)
    with pytest.raises(ELOError, match="num_hidden_layers"):
        apply_chat_vector(str(tmp_path / "base"), str(tmp_path / "inst"), str(tmp_path / "tgt"), str(tmp_path / "o"))


def test_refuses_missing_tensor(trio):
    sd = load_file(trio / "inst" / "model.safetensors")
    sd.pop("model.layers.1.mlp.up_proj.weight")
    save_file(sd, trio / "inst" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ELOError, match="model.layers.1.mlp.up_proj.weight missing in the instruct"):
        apply_chat_vector(str(trio / "base"), str(trio / "inst"), str(trio / "tgt"), str(trio / "o"))


def test_vocab_mismatch_modes(tmp_path):
    _save(tmp_path / "base", 0)
    _save(tmp_path / "inst", 1, vocab_size=260)  # instruct added 4 tokens
    _save(tmp_path / "tgt", 2)
    args = [str(tmp_path / n) for n in ("base", "inst", "tgt")]
    # an opt-in skip of embeddings/head makes the vocab difference irrelevant
    assert apply_chat_vector(*args, str(tmp_path / "o0"), skip=("embed_tokens", "lm_head"))["skipped"] == 2
    with pytest.raises(ELOError, match="vocabulary size differs"):
        apply_chat_vector(*args, str(tmp_path / "o1"), vocab_mismatch="error")
    s = apply_chat_vector(*args, str(tmp_path / "o2"), vocab_mismatch="keep_target")
    assert s["vocab_kept"] == 2
    manifest = json.loads((tmp_path / "o2" / "elo_manifest.json").read_text())
    assert manifest["vocab_kept"] == ["lm_head.weight", "model.embed_tokens.weight"]
    s = apply_chat_vector(*args, str(tmp_path / "o3"))  # default: add on the common rows
    assert s["sliced"] == 2
    manifest = json.loads((tmp_path / "o3" / "elo_manifest.json").read_text())
    assert manifest["sliced"]["lm_head.weight"] == {"rows_added": 256, "target_rows": 256}
    b, i, t, o = (_state(tmp_path / n) for n in ("base", "inst", "tgt", "o3"))
    name = "model.embed_tokens.weight"
    torch.testing.assert_close(o[name], t[name] + (i[name][:256] - b[name]), rtol=0, atol=1e-6)
    assert torch.equal(_state(tmp_path / "o2")[name], t[name])


def test_multi_shard_inputs_and_outputs(tmp_path):
    _save(tmp_path / "base", 0, shard="40KB")
    _save(tmp_path / "inst", 1, shard="25KB")
    _save(tmp_path / "tgt", 2)
    assert (tmp_path / "base" / "model.safetensors.index.json").is_file()
    out = tmp_path / "o"
    s = apply_chat_vector(*(str(tmp_path / n) for n in ("base", "inst", "tgt", "o")), max_shard_size="30KB")
    assert s["shards"] > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == s["shards"]
    b, i, t, o = (_state(tmp_path / n) for n in ("base", "inst", "tgt", "o"))
    for name in t:
        if "embed" not in name and "lm_head" not in name:
            torch.testing.assert_close(o[name], t[name] + i[name] - b[name], rtol=0, atol=1e-6)
    m = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(m.state_dict()["model.norm.weight"], o["model.norm.weight"])


def test_streaming_holds_constant_number_of_tensors(tmp_path, monkeypatch):
    """Instrument safe_open: every tensor read is tracked with a weakref; a load-everything implementation
    (e.g. ``load_file`` on each model, or keeping tensors in a dict) would hold ~3 x (number of tensors)."""
    kw = dict(num_hidden_layers=6)
    for n, seed in (("base", 0), ("inst", 1), ("tgt", 2)):
        _save(tmp_path / n, seed, **kw)
    live: dict[int, int] = {}
    stats = {"max_live": 0, "max_bytes": 0, "reads": 0}
    real_safe_open = cv.safe_open

    class Handle:
        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __getattr__(self, item):
            return getattr(self.inner, item)

        def get_tensor(self, name):
            tensor = self.inner.get_tensor(name)
            key = id(tensor)
            live[key] = tensor.numel() * tensor.element_size()
            weakref.finalize(tensor, live.pop, key, None)
            stats["reads"] += 1
            stats["max_live"] = max(stats["max_live"], len(live))
            stats["max_bytes"] = max(stats["max_bytes"], sum(live.values()))
            return tensor

    monkeypatch.setattr(cv, "safe_open", lambda *a, **k: Handle(real_safe_open(*a, **k)))
    apply_chat_vector(*(str(tmp_path / n) for n in ("base", "inst", "tgt", "o")), skip=())
    stats = dict(stats)
    monkeypatch.undo()
    sd = _state(tmp_path / "tgt")
    n_tensors = len(sd)
    largest = max(t.numel() * t.element_size() for t in sd.values())
    model_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    assert stats["reads"] == 3 * n_tensors
    assert stats["max_live"] <= 3, stats  # one tensor from each source at a time
    assert stats["max_bytes"] <= 3 * largest < model_bytes, (stats, largest, model_bytes)
    print(f"streaming: {n_tensors} tensors, model {model_bytes} B, largest {largest} B, peak live {stats}")


# -- output writing: atomic, never over an input, arguments checked before any write --------------------------------

def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture
def previous(trio):
    """A previous chat-vector output in trio/o, to be kept whole by every failed or refused rerun."""
    apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", "o")))
    return trio / "o"


@pytest.mark.parametrize("size", ["abc", "0", "-1GB", "GB", 0])
def test_bad_max_shard_size_is_refused_before_any_write(previous, size):
    before = _files(previous)
    trio = previous.parent
    with pytest.raises(ELOError, match="max_shard_size"):
        apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", "o")), max_shard_size=size)
    assert _files(previous) == before
    assert sorted(p.name for p in trio.iterdir()) == ["base", "inst", "o", "tgt"]


def test_failure_mid_write_keeps_the_old_output_whole(previous, monkeypatch):
    before = _files(previous)
    trio = previous.parent
    calls = []

    def full_disk(self, name, tensor):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, name, tensor)

    real = cv._StreamingShardWriter.write
    monkeypatch.setattr(cv._StreamingShardWriter, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", "o")), ratio=0.5)
    assert _files(previous) == before  # the old weights are still there, complete
    assert sorted(p.name for p in trio.iterdir()) == ["base", "inst", "o", "tgt"]  # no temp folder left


def test_rerun_replaces_a_previous_output_completely(previous):
    trio = previous.parent
    (previous / "stale-shard.safetensors").write_bytes(b"x")
    apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", "o")), max_shard_size="30KB")
    names = {p.name for p in previous.iterdir()}
    assert "stale-shard.safetensors" not in names and "model.safetensors" not in names  # nothing of the old one
    assert "model.safetensors.index.json" in names


def test_existing_model_folder_is_refused_unless_overwrite(trio):
    other = trio / "other"
    _save(other, 7)
    (other / "notes.md").write_text("mine")
    before = _files(other)
    with pytest.raises(ELOError, match="not empty and not a previous chat_vector output"):
        apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", "other")))
    assert _files(other) == before
    apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", "other")), overwrite=True)
    assert not (other / "notes.md").exists()  # replaced whole: never two models' files mixed
    assert json.loads((other / "elo_manifest.json").read_text())["stage"] == "chat_vector"


@pytest.mark.parametrize("output", ["tgt", "inst/cv", "."])
def test_output_over_or_inside_an_input_is_refused(trio, output):
    before = _files(trio / "tgt")
    with pytest.raises(ELOError, match="input"):
        apply_chat_vector(*(str(trio / n) for n in ("base", "inst", "tgt", output)), overwrite=True)
    assert _files(trio / "tgt") == before and not (trio / "inst" / "cv").exists()


def test_result_speaks_like_the_instruct_model(tmp_path):
    """Tokenizer files byte for byte, chat template, generation config (EOS ids [2, 5], sampling) and the config's
    token ids from the instruct model; the architecture config from the target."""
    from tiny_models import real_like_tokenizer, save_real_like

    save_real_like(tmp_path / "base", "llama", seed=0, tokenizer=False)
    inst = save_real_like(tmp_path / "inst", "llama", seed=1)
    tgt = save_real_like(tmp_path / "tgt", "llama", seed=2, tokenizer=False)
    real_like_tokenizer(None).save_pretrained(tgt)  # the target's own (other) tokenizer must not leak through
    gen = json.loads((tgt / "generation_config.json").read_text())
    gen["eos_token_id"] = 2  # a base-like generation config: stops at </s> only
    (tgt / "generation_config.json").write_text(json.dumps(gen))
    cfg = json.loads((tgt / "config.json").read_text())
    cfg["eos_token_id"], cfg["rms_norm_eps"] = 7, 1e-5  # the architecture value must stay the target's
    (tgt / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    apply_chat_vector(str(tmp_path / "base"), str(inst), str(tgt), str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (inst / name).read_bytes(), name
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    assert GenerationConfig.from_pretrained(out).eos_token_id == [2, 5]
    config = AutoConfig.from_pretrained(out)
    assert config.eos_token_id == 2 and config.rms_norm_eps == 1e-5
    assert AutoTokenizer.from_pretrained(out)("a")["input_ids"][0] == 1  # the instruct tokenizer (adds BOS)
