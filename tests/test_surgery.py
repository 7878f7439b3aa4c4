import copy

import pytest
import torch
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM

from elo_lightning.errors import ELOError
from elo_lightning.surgery import attach, detach, load_detached, parse_layers, save_detached


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "spec,expected", [("1,-1", [0, 5]), ("1,3,6", [0, 2, 5]), ([6, 1], [0, 5]), ("-6", [0]), (3, [2])]
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize(
    "spec,message",
    [("", "empty"), ("0", "1-based"), ("7", "out of range"), ("-7", "out of range"), ("1,1", "duplicate"),
     ("1,-6", "duplicate"), ("a", "not an integer")],
)
def test_parse_layers_rejects(spec, message):
    with pytest.raises(ELOError, match=message):
        parse_layers(spec, 6)


def test_round_trip_is_bit_exact(family):
    source = tiny_model(family)
    reference = copy.deepcopy(source)
    small, manifest = detach(source, "1,-1")
    assert same_state(source, reference), "detach must not touch the source"
    target = tiny_model(family)  # same seed: same weights
    attach(target, small, manifest)
    assert same_state(target, reference)


def test_trained_layers_land_at_their_positions_only(family):
    source = tiny_model(family)
    small, manifest = detach(source, "2,5")
    with torch.no_grad():
        for p in small.model.layers.parameters():
            p.add_(1.0)
    attach(source, small, manifest)
    fresh = tiny_model(family)
    for i, (a, b) in enumerate(zip(source.model.layers, fresh.model.layers)):
        assert same_state(a, b) == (i not in (1, 4)), f"layer {i}"
    for name in ("embed_tokens", "norm"):
        assert same_state(getattr(source.model, name), getattr(fresh.model, name))
    assert torch.equal(source.lm_head.weight, fresh.lm_head.weight)
    assert same_state(source.model.layers[1], small.model.layers[0])


def test_config_and_layer_idx_follow_their_layer(family):
    source = tiny_model(family)
    small, manifest = detach(source, "1,-1")
    assert small.config.num_hidden_layers == 2 and manifest.layers == [0, 5]
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == [0, 1]
    types = getattr(source.config, "layer_types", None)
    if types is not None:
        assert small.config.layer_types == [types[0], types[5]]
    assert small.config.tie_word_embeddings == source.config.tie_word_embeddings
    if source.config.tie_word_embeddings:
        assert small.lm_head.weight is small.model.embed_tokens.weight


def _capture(model):
    calls = {}
    hooks = [
        layer.register_forward_hook(
            lambda mod, args, kwargs, out, i=i: calls.__setitem__(i, (args, kwargs, out)), with_kwargs=True
        )
        for i, layer in enumerate(model.model.layers)
    ]
    return calls, hooks


@torch.no_grad()
def test_detached_layer_sees_what_it_saw_in_the_full_model(family):
    """Each kept layer gets the same mask kind (sliding/full) and rotary embedding as in the full model."""
    source = tiny_model(family)
    small, manifest = detach(source, "1,-1")
    x = torch.randint(0, 512, (2, 16))  # longer than the sliding windows (4)
    full_calls, h1 = _capture(source)
    small_calls, h2 = _capture(small)
    source(x, use_cache=False), small(x, use_cache=False)
    for h in h1 + h2:
        h.remove()
    for k, i in enumerate(manifest.layers):
        args, _, out = small_calls[k]
        _, full_kwargs, _ = full_calls[i]
        expected = source.model.layers[i](*args, **full_kwargs)
        expected = expected[0] if isinstance(expected, tuple) else expected
        got = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert small_calls[0][0][0].shape == full_calls[0][0][0].shape
    torch.testing.assert_close(small_calls[0][0][0], full_calls[0][0][0], rtol=0, atol=0)  # same embedding output


@torch.no_grad()
def test_detaching_every_layer_reproduces_the_model(family):
    source = tiny_model(family)
    small, _ = detach(source, ",".join(str(i) for i in range(1, 7)))
    x = torch.randint(0, 512, (2, 16))
    torch.testing.assert_close(small(x).logits, source(x).logits, rtol=0, atol=0)


@torch.no_grad()
def test_generation_with_kv_cache_matches_no_cache(family):
    small, _ = detach(tiny_model(family), "1,3,-1")
    x = torch.randint(0, 512, (1, 5))
    cached = small.generate(x, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = small.generate(x, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_save_load_round_trip(tmp_path, family):
    source = tiny_model(family)
    small, manifest = detach(source, "1,-1")
    save_detached(small, manifest, tmp_path / "elo")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "elo")  # a normal HF directory
    assert plain.config.num_hidden_layers == 2
    loaded, manifest2 = load_detached(tmp_path / "elo")
    assert manifest2 == manifest
    assert same_state(loaded, small)
    loaded.config._attn_implementation = "eager"  # the saved config does not pin the kernel
    x = torch.randint(0, 512, (1, 8))
    loaded.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, small(x).logits, rtol=0, atol=0)
    target = tiny_model(family)
    attach(target, loaded, manifest2)
    assert same_state(target, tiny_model(family))


def test_attach_refuses_another_model():
    small, manifest = detach(tiny_model("llama", seed=0), "1,-1")
    with pytest.raises(ELOError, match="different model"):
        attach(tiny_model("llama", seed=1), small, manifest)
    with pytest.raises(ELOError, match="different model"):
        attach(tiny_model("qwen2-tied"), small, manifest)


# --- real-like checkpoints: load only what the detached model keeps, in the dtype asked for ---------------


def test_detach_from_checkpoint_reads_only_what_it_keeps(tmp_path, family, monkeypatch):
    """Built from the config + embedding/λ/norm/head read by name: same tensors, manifest and logits as cutting
    the fully loaded model, and no middle layer is ever read."""
    from tiny_models import save_real_like

    import elo_lightning.models as models
    from elo_lightning.surgery import detach_from_checkpoint

    path = save_real_like(tmp_path / "src", family, perturb=0.02)
    requested = []
    real_read = models.read_tensors

    def recording_read(files, names, dtype=None):
        requested.extend(names.values())
        return real_read(files, names, dtype)

    monkeypatch.setattr("elo_lightning.surgery.read_tensors", recording_read)
    lazy, manifest = detach_from_checkpoint(path, "1,-1", dtype=torch.float32)
    full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cut, expected = detach(full, "1,-1")
    assert manifest == expected
    assert same_state(lazy, cut) and lazy.dtype == torch.float32
    assert not any(f"layers.{i}." in n for n in requested for i in range(1, 5)), "a middle layer was read"
    x = torch.randint(0, 262, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(lazy.eval()(x).logits, cut.eval()(x).logits, rtol=0, atol=0)
    assert lazy.generation_config.eos_token_id == [2, 5]
    # "auto" keeps the checkpoint's bf16; a bad layer spec fails before any weight is read
    assert detach_from_checkpoint(path, "1,-1", dtype="auto")[0].dtype == torch.bfloat16
    requested.clear()
    with pytest.raises(ELOError, match="out of range"):
        detach_from_checkpoint(path, "1,7")
    assert requested == []


def test_elo_module_builds_without_loading_the_full_model(tmp_path, monkeypatch):
    from tiny_models import save_real_like

    from elo_lightning.modules import DetachedLayerModule

    path = save_real_like(tmp_path / "src", "llama", perturb=0.02)

    def no_full_load(*a, **k):
        raise AssertionError("the full model was loaded")

    monkeypatch.setattr("elo_lightning.modules.detached.load_causal_lm", no_full_load)
    module = DetachedLayerModule(model=str(path), layers="1,-1")
    small = module.build_model()
    assert small.config.num_hidden_layers == 2 and small.dtype == torch.get_default_dtype()
    assert [n for n, p in small.named_parameters() if p.requires_grad] == [
        n for n, _ in small.named_parameters() if n.startswith("model.layers.")]


def test_attach_checks_the_source_before_loading_it(tmp_path):
    from tiny_models import save_real_like

    from elo_lightning.surgery import check_source, checkpoint_fingerprint, detach_from_checkpoint

    a = save_real_like(tmp_path / "a", "llama", seed=0, perturb=0.02)
    b = save_real_like(tmp_path / "b", "llama", seed=1, perturb=0.02)
    _, manifest = detach_from_checkpoint(a, "1,-1")
    loaded = detach(AutoModelForCausalLM.from_pretrained(a), "1,-1")[1]
    assert checkpoint_fingerprint(a) == manifest.fingerprint == loaded.fingerprint
    check_source(a, manifest)
    with pytest.raises(ELOError, match="fingerprint differs"):
        check_source(b, manifest)


def test_rounding_by_attach_is_counted(tmp_path):
    from tiny_models import save_real_like

    from elo_lightning.surgery import detach_from_checkpoint, rounded_by_attach

    path = save_real_like(tmp_path / "src", "llama", perturb=0.02)
    small, manifest = detach_from_checkpoint(path, "1,-1", dtype=torch.float32)
    full = AutoModelForCausalLM.from_pretrained(path)  # bf16
    assert rounded_by_attach(full, small, manifest) == []  # untrained: bf16 values, exact in fp32 and back
    with torch.no_grad():
        small.model.layers[0].mlp.up_proj.weight.add_(1e-6)  # an fp32 update below bf16 resolution
    assert rounded_by_attach(full, small, manifest) == ["layers.0.mlp.up_proj.weight"]
    assert rounded_by_attach(full.float(), small, manifest) == []


def test_detach_attach_commands_keep_the_source_dtype(tmp_path, capsys):
    """Default flags: a bf16 checkpoint detaches to bf16 and attaches back bit-exactly in bf16 (README's claim);
    an fp32 ELO output written into the bf16 model says how many tensors rounding changed; --dtype float32 keeps
    them."""
    from safetensors import safe_open
    from tiny_models import save_real_like

    from elo_lightning.cli import main
    from elo_lightning.surgery import load_detached, save_detached

    src = save_real_like(tmp_path / "src", "llama", perturb=0.02)
    main(["detach", "--model", str(src), "--layers", "1,-1", "--output", str(tmp_path / "elo")])
    main(["attach", "--model", str(src), "--detached", str(tmp_path / "elo"), "--output", str(tmp_path / "back")])
    for d in ("elo", "back"):
        with safe_open(tmp_path / d / "model.safetensors", framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}, d
    src_model = AutoModelForCausalLM.from_pretrained(src)
    assert same_state(AutoModelForCausalLM.from_pretrained(tmp_path / "back"), src_model)
    assert "note:" not in capsys.readouterr().out
    small, manifest = load_detached(tmp_path / "elo", dtype=torch.float32)  # "trained" in fp32
    with torch.no_grad():
        small.model.layers[1].mlp.down_proj.weight.add_(1e-6)
    save_detached(small, manifest, tmp_path / "elo32")
    main(["attach", "--model", str(src), "--detached", str(tmp_path / "elo32"), "--output", str(tmp_path / "b16")])
    note = "note: 1 of 18 attached tensors changed when rounded from torch.float32 to torch.bfloat16"
    assert note in capsys.readouterr().out
    main(["attach", "--model", str(src), "--detached", str(tmp_path / "elo32"), "--output", str(tmp_path / "b32"),
          "--dtype", "float32"])
    assert "note:" not in capsys.readouterr().out
    kept = AutoModelForCausalLM.from_pretrained(tmp_path / "b32", dtype=torch.float32)
    assert torch.equal(kept.model.layers[-1].mlp.down_proj.weight, small.model.layers[1].mlp.down_proj.weight)


def test_attach_command_refuses_another_model_before_loading_it(tmp_path, monkeypatch):
    from tiny_models import save_real_like

    from elo_lightning.cli import main

    a = save_real_like(tmp_path / "a", "llama", seed=0, perturb=0.02)
    b = save_real_like(tmp_path / "b", "llama", seed=1, perturb=0.02)
    main(["detach", "--model", str(a), "--layers", "1,-1", "--output", str(tmp_path / "elo")])

    def no_load(*args, **kwargs):
        raise AssertionError("the full model was loaded")

    monkeypatch.setattr("elo_lightning.surgery.load_causal_lm", no_load)
    with pytest.raises(SystemExit) as exit_info:
        main(["attach", "--model", str(b), "--detached", str(tmp_path / "elo"), "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
