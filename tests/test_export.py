"""The HF export of a stage: a loadable directory with the manifest of how it was made."""

import json
import stat

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny_models import RandomTokens, tiny_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from elo_lightning.checkpoint import AtomicCheckpointIO
from elo_lightning.errors import ELOError
from elo_lightning.export import EXPORT_MANIFEST, export_hf, stage_manifest
from elo_lightning.io import OUTPUT_MARKER
from elo_lightning.modules import DetachedLayerModule, FullFineTuningModule
from elo_lightning.optim import OptimizerConfig


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


@pytest.fixture
def source(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "source")
    return tmp_path / "source"


def fit(module, root, steps=1):
    """One run with a CSV logger (root/logs/run/version_N) and checkpoints in its checkpoints folder."""
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=CSVLogger(root / "logs", name="run"),
                        callbacks=[ModelCheckpoint(save_last=True)], plugins=[AtomicCheckpointIO()],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(RandomTokens(n=4), batch_size=4))
    return trainer


def module(source, export_dir, **kw):
    return DetachedLayerModule(model=str(source), export_dir=str(export_dir) if export_dir else None,
                               optimizer=OptimizerConfig(name="adamw", lr=1e-2), measure_flops=False, **kw)


def test_export_of_a_stage_replaces_its_previous_export(source, tmp_path):
    fit(module(source, tmp_path / "export"), tmp_path)
    assert json.loads((tmp_path / "export" / OUTPUT_MARKER).read_text())["kind"] == "elo export"
    (tmp_path / "export" / "config.json").write_text("{}")  # changed by hand: the rerun replaces it
    fit(module(source, tmp_path / "export"), tmp_path)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == "llama"


def _refused_before_training(mod, root, match):
    with pytest.raises(ELOError, match=match):
        fit(mod, root)
    assert mod.model is None  # refused in setup: the model was never built, nothing trained


def test_export_dir_equal_to_the_log_folder_is_refused(source, tmp_path):
    trainer = fit(module(source, None), tmp_path)  # an earlier run: version_0 with a checkpoint
    old_ckpt = next((tmp_path / "logs" / "run").rglob("*.ckpt"))
    for export in (tmp_path / "logs" / "run", tmp_path / "logs" / "run" / "version_1",
                   tmp_path / "logs" / "run" / "version_1" / "checkpoints"):
        _refused_before_training(module(source, export), tmp_path, "log folder|logger folder|checkpoint folder")
    assert old_ckpt.is_file() and trainer.global_step == 1


@pytest.mark.parametrize("where", ["model", "inside_model", "tokenizer_parent"])
def test_export_dir_over_an_input_is_refused(source, tmp_path, where):
    export = {"model": source, "inside_model": source / "export", "tokenizer_parent": tmp_path}[where]
    before = sorted(p.name for p in source.iterdir())
    _refused_before_training(module(source, export, overwrite_export=True), tmp_path / "r", "input")
    assert sorted(p.name for p in source.iterdir()) == before


def test_export_dir_with_other_files_is_refused_unless_overwrite(source, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    _refused_before_training(module(source, tmp_path / "mine"), tmp_path, "not empty and not a previous elo export")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    fit(module(source, tmp_path / "mine", overwrite_export=True), tmp_path)
    assert not (tmp_path / "mine" / "notes.txt").exists() and (tmp_path / "mine" / "elo_manifest.json").is_file()


def test_export_and_checkpoints_have_ordinary_permissions(source, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        fit(module(source, tmp_path / "export"), tmp_path)
    finally:
        os.umask(old)
    files = [*(tmp_path / "export").iterdir(), *(tmp_path / "logs").rglob("*.ckpt")]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
