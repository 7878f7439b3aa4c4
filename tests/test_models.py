"""Loading models from an HF directory or an architecture .json; `elo init`."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from elo_lightning.cli import main
from elo_lightning.errors import ELOError
from elo_lightning.models import (
    PROJECTIONS,
    decoder_layers,
    has_weights,
    init_cmd,
    load_causal_lm,
    load_config,
    resolve_dtype,
    saved_tokenizer,
)

TINY = "configs/models/tiny-llama.json"


def test_config_random_init_is_seeded_and_saved_dirs_load_back(tmp_path):
    a, b = load_causal_lm(TINY, seed=1), load_causal_lm(TINY, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(load_causal_lm(TINY, seed=2).lm_head.weight, a.lm_head.weight)
    init_cmd(TINY, str(tmp_path / "m"), tokenizer="configs/tokenizer", seed=1)
    assert has_weights(tmp_path / "m") and not has_weights(TINY)
    back = load_causal_lm(tmp_path / "m")
    assert torch.equal(back.lm_head.weight, a.lm_head.weight)
    assert saved_tokenizer(tmp_path / "m") is not None and saved_tokenizer(tmp_path) is None


def test_meta_build_has_the_same_tree_without_memory():
    meta = load_causal_lm(TINY, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert len(decoder_layers(meta)) == load_config(TINY).num_hidden_layers
    assert set(PROJECTIONS) <= {n.rsplit(".", 1)[-1] for n, _ in decoder_layers(meta)[0].named_modules()}


def test_bad_sources_and_dtypes_raise_eloerror(tmp_path):
    (tmp_path / "gpt2.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "nomodel.json").write_text('{"hidden_size": 8}')
    for source, message in [(tmp_path / "gpt2.json", "unknown architecture"), (tmp_path / "nomodel.json", "model_type"),
                            (tmp_path / "missing.json", "not found"), (tmp_path, "no config.json")]:
        with pytest.raises(ELOError, match=message):
            load_config(source)
    with pytest.raises(ELOError, match="unknown dtype"):
        resolve_dtype("float8")
    assert resolve_dtype("bfloat16") is torch.bfloat16


def test_init_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path):
    small = tmp_path / "small.json"
    small.write_text(open(TINY).read().replace('"vocab_size": 8192', '"vocab_size": 512'))
    with pytest.raises(ELOError, match="tokenizer has"):
        init_cmd(str(small), str(tmp_path / "out"), tokenizer="configs/tokenizer")
    assert not (tmp_path / "out").exists()


ARCH = "configs/models/tiny-llama.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny llama saved twice: one file (``single``) and sharded with an index (``sharded``)."""
    root = tmp_path_factory.mktemp("models")
    model = tiny_model("llama")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="100KB")
    assert len(list((root / "sharded").glob("model-*.safetensors"))) > 2
    return root


def _copy(src: Path, dst: Path, skip=()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_architecture_json_is_random_init_reproducible_by_seed():
    a, b = load_causal_lm(ARCH, seed=3), load_causal_lm(ARCH, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_complete_directories_load(saved):
    ref = tiny_model("llama").state_dict()
    for name in ("single", "sharded"):
        got = load_causal_lm(saved / name).state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_directory_with_only_config_is_refused(saved, tmp_path):
    d = _copy(saved / "single", tmp_path / "cfg", skip={"model.safetensors"})
    with pytest.raises(ELOError, match="has no weights"):
        load_causal_lm(d)


def test_shards_without_index_are_refused(saved, tmp_path):
    d = _copy(saved / "sharded", tmp_path / "noindex", skip={"model.safetensors.index.json"})
    with pytest.raises(ELOError, match="without their index"):
        load_causal_lm(d)


def test_index_naming_a_missing_shard_is_refused(saved, tmp_path):
    shard = sorted(p.name for p in (saved / "sharded").glob("model-*.safetensors"))[1]
    d = _copy(saved / "sharded", tmp_path / "noshard", skip={shard})
    with pytest.raises(ELOError, match=f"shard {shard} named in model.safetensors.index.json is missing"):
        load_causal_lm(d)


def test_weights_missing_a_tensor_are_refused(saved, tmp_path):
    d = _copy(saved / "single", tmp_path / "partial", skip={"model.safetensors"})
    tensors = load_file(saved / "single" / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ELOError, match="missing or of the wrong shape"):
        load_causal_lm(d)


def test_truncated_weight_file_is_one_line_error(saved, tmp_path):
    d = _copy(saved / "single", tmp_path / "trunc", skip={"model.safetensors"})
    (d / "model.safetensors").write_bytes((saved / "single" / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ELOError, match="cannot load the weights"):
        load_causal_lm(d)


def test_cli_refuses_a_weightless_model_dir_with_exit_2(saved, tmp_path, capsys):
    d = _copy(saved / "single", tmp_path / "cfg", skip={"model.safetensors"})
    with pytest.raises(SystemExit) as exit_info:
        main(["detach", "--model", str(d), "--layers", "1,-1", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "has no weights" in err[-1]
    assert not (tmp_path / "out").exists()
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
