"""Loading models from an HF directory or an architecture .json; `elo init`."""

import pytest
import torch

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
