"""Each stage trains exactly what it claims to, and exports something the next stage can use."""

import copy
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from elo_lightning.errors import ELOError
from elo_lightning.modules import AlignmentModule, DetachedLayerModule, FreezeTuningModule, LoRAModule
from elo_lightning.optim import OptimizerConfig
from elo_lightning.surgery import attach, load_detached, read_manifest

from tiny_models import RandomTokens, tiny_model

OPTIM = OptimizerConfig(name="adamw", lr=1e-2)


def fit(module, steps=3, callbacks=()):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, train_dataloaders=DataLoader(RandomTokens(), batch_size=4))
    return trainer


@pytest.fixture
def source(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "source")
    return tmp_path / "source"


def changed(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def test_elo_trains_only_lambda_and_exports_an_attachable_checkpoint(source, tmp_path):
    module = DetachedLayerModule(model=str(source), layers="1,-1", optimizer=OPTIM, export_dir=str(tmp_path / "elo"))
    fit(module)
    small, manifest = load_detached(tmp_path / "elo")
    assert manifest.layers == [0, 5] and read_manifest(tmp_path / "elo").source_num_layers == 6
    original = AutoModelForCausalLM.from_pretrained(source)
    diff = changed(small, _detached_reference(original))
    assert diff and all(k.startswith("model.layers.") for k in diff)
    full = copy.deepcopy(original)
    attach(full, small, manifest)
    touched = {k.split(".")[2] for k in changed(full, original)}
    assert touched == {"0", "5"}
    assert module.flops_per_batch and module.flops_per_batch > 0


def _detached_reference(model):
    from elo_lightning.surgery import detach

    return detach(model, "1,-1")[0]


def test_alignment_attaches_then_trains_everything(source, tmp_path):
    elo = DetachedLayerModule(model=str(source), optimizer=OPTIM, export_dir=str(tmp_path / "elo"))
    fit(elo, steps=2)
    align = AlignmentModule(model=str(source), detached=str(tmp_path / "elo"), optimizer=OPTIM)
    align.configure_model()
    expected = AutoModelForCausalLM.from_pretrained(source)
    attach(expected, *load_detached(tmp_path / "elo"))
    assert not changed(align.model, expected), "alignment must start from the attached model"
    assert all(p.requires_grad for p in align.model.parameters())
    fit(align, steps=2)
    assert any(k.startswith("model.layers.2.") for k in changed(align.model, expected))


def test_fft_is_alignment_with_nothing_attached(source):
    fft = AlignmentModule(model=str(source), optimizer=OPTIM)
    assert fft.stage == "fft"
    fit(fft, steps=2)
    original = AutoModelForCausalLM.from_pretrained(source)
    layers = {k.split(".")[2] for k in changed(fft.model, original) if k.startswith("model.layers.")}
    assert layers == {str(i) for i in range(6)}


def test_export_reloads_with_identical_logits(source, tmp_path):
    fft = AlignmentModule(model=str(source), optimizer=OPTIM, export_dir=str(tmp_path / "fft"))
    fit(fft, steps=2)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fft").eval()
    assert json.loads((tmp_path / "fft" / "elo_export.json").read_text())["stage"] == "fft"
    x = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, fft.model.eval()(x).logits, rtol=0, atol=0)


def test_freeze_tuning_changes_only_lambda(source):
    module = FreezeTuningModule(model=str(source), layers="2,5", optimizer=OPTIM)
    fit(module)
    diff = changed(module.model, AutoModelForCausalLM.from_pretrained(source))
    assert diff and {k.split(".")[2] for k in diff} == {"1", "4"}


def test_lora_adds_trainable_parameters_only_in_targets(source, tmp_path):
    module = LoRAModule(model=str(source), r=4, alpha=8, target_modules=["q_proj", "v_proj"], optimizer=OPTIM,
                        export_dir=str(tmp_path / "lora"))
    module.configure_model()
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable)
    fit(module, steps=2)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    diff = changed(merged, AutoModelForCausalLM.from_pretrained(source))
    assert diff and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in diff)


def test_tokenizer_larger_than_vocabulary_is_refused(source):
    module = DetachedLayerModule(model=str(source), tokenizer="configs/tokenizer", optimizer=OPTIM)  # 8192 > 512
    with pytest.raises(ELOError, match="tokenizer has 8192 tokens"):
        fit(module, steps=1)


def test_export_on_request_every_n_steps(source, tmp_path):
    from elo_lightning.callbacks import HFExport

    module = DetachedLayerModule(model=str(source), optimizer=OPTIM)
    fit(module, steps=4, callbacks=[HFExport(str(tmp_path / "exports"), every_n_train_steps=2)])
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["step-2", "step-4"]
    small, manifest = load_detached(tmp_path / "exports" / "step-4")
    assert manifest.layers == [0, 5]
    assert not changed(small, module.model)
