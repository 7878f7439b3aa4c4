"""Each stage trains exactly what it claims to, and exports something the next stage can use."""

import copy
import json

import lightning as L
import pytest
import torch
from tiny_models import RandomTokens, tiny_model
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from elo_lightning.errors import ELOError
from elo_lightning.modules import AlignmentModule, DetachedLayerModule, FreezeTuningModule, LoRAModule
from elo_lightning.optim import OptimizerConfig
from elo_lightning.surgery import attach, load_detached, read_manifest

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


# -- the stage registry ---------------------------------------------------------------------------------------

def test_registry_names_every_stage_once_with_its_module_and_flop_kind(source):
    from elo_lightning.flops import FLOP_KINDS
    from elo_lightning.modules import BENCH_METHODS, STAGES, FullFineTuningModule, SFTModule

    assert set(STAGES) == {"elo", "freeze", "lora", "fft", "align", "sft"}
    assert set(BENCH_METHODS) == {"elo", "freeze", "lora", "fft"}
    assert all(s.flop_kind in FLOP_KINDS for s in STAGES.values())
    for name, entry in STAGES.items():  # each module reports the registry name it is listed under
        extra = {"detached": "somewhere"} if name == "align" else {}
        assert entry.module(model=str(source), **extra).stage == name
    assert STAGES["fft"].module is STAGES["align"].module is FullFineTuningModule is AlignmentModule
    assert issubclass(SFTModule, FullFineTuningModule) and FullFineTuningModule(model=str(source)).stage == "fft"


def test_detached_manifest_is_derived_and_survives_a_meta_build(source):
    module = DetachedLayerModule(model=str(source), layers="2,-1", train_norm=True)
    module.configure_model()
    before = module.manifest
    assert before.layers == [1, 5] and before.fingerprint and before.trained["norm"] is True
    module.build_model(device="meta")  # FLOP counting builds a weightless copy: it must not change the manifest
    assert module.manifest == before
    from elo_lightning.surgery import fingerprint

    assert before.fingerprint == fingerprint(AutoModelForCausalLM.from_pretrained(source))


# -- validation by language -----------------------------------------------------------------------------------

class _Validate(L.LightningDataModule):
    def __init__(self, batches):
        super().__init__()
        self.batches, self.val_languages = batches, ["ko", "en"]

    def val_dataloader(self):  # each item is a ready batch
        return DataLoader(self.batches, batch_size=None)


def _val_loss_keys(source, batches):
    module = AlignmentModule(model=str(source), optimizer=OPTIM)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, datamodule=_Validate(batches))
    return {k for k in metrics if k.endswith("/loss")}


def test_validation_is_logged_under_the_language_the_batch_carries(source):
    rows = RandomTokens(n=4)
    batch = {"input_ids": rows.x, "labels": rows.labels}
    assert _val_loss_keys(source, [{**batch, "language": "en"}]) == {"val/en/loss"}
    # a merged loader (no language) is never logged under the first language's name
    assert _val_loss_keys(source, [batch]) == {"val/all/loss"}


def test_setup_refuses_another_models_tokenizer(tmp_path):
    """The demo tokenizer (8192 tokens) or any tokenizer other than the model's own is refused before training;
    allow_tokenizer_mismatch accepts a smaller foreign one."""
    from tiny_models import real_like_tokenizer, save_real_like

    model = save_real_like(tmp_path / "m", "llama")
    other = tmp_path / "other"
    real_like_tokenizer("template", extra_tokens=5).save_pretrained(other)
    trainer = L.Trainer(logger=False, enable_checkpointing=False)
    cases = (("configs/tokenizer", True, "vocabulary has 512"), (str(other), False, "not the model"))
    for tok, allow, message in cases:
        module = DetachedLayerModule(model=str(model), tokenizer=tok, allow_tokenizer_mismatch=allow)
        module.trainer = trainer
        with pytest.raises(ELOError, match=message):
            module.setup("fit")
    module = DetachedLayerModule(model=str(model), tokenizer=str(other), allow_tokenizer_mismatch=True)
    module.trainer = trainer
    module.setup("fit")
