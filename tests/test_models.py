"""Loading models: random init only from an architecture .json; a model directory without loadable weights is refused."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model

from elo_lightning.cli import main
from elo_lightning.errors import ELOError
from elo_lightning.models import load_causal_lm

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
