"""The HF export of a stage: a loadable directory with the manifest of how it was made."""

import json

import torch
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM

from elo_lightning.export import EXPORT_MANIFEST, export_hf, stage_manifest
from elo_lightning.modules import FullFineTuningModule


def test_export_writes_a_loadable_model_and_the_manifest(tmp_path):
    model = tiny_model("llama")
    export_hf(model, tmp_path / "out", {"stage": "x"}, extra_json={"extra.json": {"a": 1}})
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert json.loads((tmp_path / "out" / EXPORT_MANIFEST).read_text()) == {"stage": "x"}
    assert json.loads((tmp_path / "out" / "extra.json").read_text()) == {"a": 1}


def test_stage_manifest_names_the_derived_stage_and_arguments():
    meta = stage_manifest(FullFineTuningModule(model="configs/models/tiny-llama.json", detached="elo"), note=1)
    assert meta["stage"] == "align" and meta["config"]["detached"] == "elo" and meta["note"] == 1
    assert meta["global_step"] == 0 and meta["data"] is None
