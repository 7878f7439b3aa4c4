"""Resuming from the command line: `last` across log versions; given arguments checked against the checkpoint's."""

import os
import re
import shutil

import pytest
import torch
from tiny_models import tiny_model

from elo_lightning.errors import ELOError
from elo_lightning.resume import RUN_CONFIG_KEY, check_resume, read_checkpoint_config, resolve_last

TRAINER = {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                      "init_args": {"save_dir": "{tmp}/runs", "name": "elo"}},
           "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"every_n_train_steps": 100, "save_last": True}}],
           "max_steps": 200, "precision": "32-true"}


def _trainer(tmp_path, **kw):
    cfg = {**TRAINER, **kw}
    cfg["logger"] = {**cfg["logger"], "init_args": {**cfg["logger"]["init_args"], "save_dir": str(tmp_path / "runs")}}
    return cfg


def _ckpt(path, step=1, config=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, **({RUN_CONFIG_KEY: config} if config else {})}, path)
    return path


def test_last_is_the_newest_last_ckpt_across_versions(tmp_path):
    old = _ckpt(tmp_path / "runs/elo/version_0/checkpoints/last.ckpt", 5)
    new = _ckpt(tmp_path / "runs/elo/version_2/checkpoints/last.ckpt", 9)
    (tmp_path / "runs/elo/version_3/checkpoints").mkdir(parents=True)  # this launch's empty folder
    os.utime(old, (1, 1))
    assert resolve_last(_trainer(tmp_path)) == new


def test_last_in_a_model_checkpoint_dirpath(tmp_path):
    ckpt = _ckpt(tmp_path / "ckpts" / "last.ckpt")
    cfg = _trainer(tmp_path, callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": str(tmp_path / "ckpts")}}])
    assert resolve_last(cfg) == ckpt


def test_last_without_any_checkpoint_is_refused(tmp_path):
    (tmp_path / "runs/elo/version_0/checkpoints").mkdir(parents=True)
    (tmp_path / "runs/elo/version_0/checkpoints/.last.ckpt.x.partial").write_text("killed save")
    with pytest.raises(ELOError, match="no last.ckpt in .*runs/elo/\\*/checkpoints; nothing to resume"):
        resolve_last(_trainer(tmp_path))


MODEL = {"class_path": "elo_lightning.modules.DetachedLayerModule",
         "init_args": {"model": "configs/models/tiny-llama.json", "layers": "1,-1", "export_dir": "runs/elo/export",
                       "tokenizer": "configs/tokenizer", "seed": 42,
                       "optimizer": {"name": "adamw8bit", "lr": 1e-3, "scheduler": "cosine", "warmup_steps": 10}}}
DATA = {"class_path": "elo_lightning.data.BilingualDataModule",
        "init_args": {"tokenizer": "configs/tokenizer", "seq_len": 128, "batch_size": 8,
                      "languages": [{"name": "en", "train": ["a/en-*.jsonl"], "weight": 1.0},
                                    {"name": "ko", "train": ["a/ko-*.jsonl"], "weight": 9.0}]}}


def _given(**changes):
    import copy

    cfg = {"model": copy.deepcopy(MODEL), "data": copy.deepcopy(DATA), "trainer": dict(TRAINER)}
    for where, value in changes.items():
        node = cfg
        *keys, last = where.split(".")
        for k in keys:
            node = node[int(k)] if k.isdigit() else node[k]
        node[last] = value
    return cfg


@pytest.mark.parametrize("where,value", [
    ("model.init_args.export_dir", "runs/elo/export-2"),
    ("model.init_args.tokenizer", "/elsewhere/tokenizer"),
    ("data.init_args.languages.1.train", ["b/ko-*.jsonl"]),
    ("data.init_args.tokenizer", "/elsewhere/tokenizer"),
    ("trainer.logger", None),
])
def test_paths_and_logging_take_the_new_value(where, value):
    taken = check_resume(_given(), _given(**{where: value}), "x.ckpt")
    named = where.replace(".init_args.languages.1", ".init_args.languages[1]")
    assert where == "trainer.logger" or any(t.startswith(named) for t in taken)


@pytest.mark.parametrize("where,value,named", [
    ("model.class_path", "elo_lightning.modules.AlignmentModule", "model.class_path"),
    ("model.init_args.layers", "1,8", "model.init_args.layers"),
    ("model.init_args.optimizer.lr", 5e-6, "model.init_args.optimizer.lr"),
    ("model.init_args.optimizer.scheduler", "linear", "model.init_args.optimizer.scheduler"),
    ("data.init_args.seq_len", 256, "data.init_args.seq_len"),
    ("data.init_args.languages.1.weight", 1.0, "data.init_args.languages[1].weight"),
    ("data.init_args.batch_size", 4, "data.init_args.batch_size"),
    ("trainer.max_steps", 400, "trainer.max_steps"),
    ("trainer.precision", "bf16-true", "trainer.precision"),
])
def test_what_changes_the_trained_function_is_refused(where, value, named):
    with pytest.raises(ELOError, match=f"cannot resume x.ckpt: {re.escape(named)} was .* now"):
        check_resume(_given(), _given(**{where: value}), "x.ckpt")


def test_a_moved_model_resumes_when_its_architecture_is_the_same(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    saved = _given(**{"model.init_args.model": str(tmp_path / "base")})
    from elo_lightning.resume import architecture_fingerprint

    saved["fingerprints"] = {"model": architecture_fingerprint(tmp_path / "base")}
    shutil.move(tmp_path / "base", tmp_path / "moved")
    assert check_resume(saved, _given(**{"model.init_args.model": str(tmp_path / "moved")}), "x") == [
        "model.init_args.model"]
    tiny_model("qwen2-tied").save_pretrained(tmp_path / "other")
    with pytest.raises(ELOError, match="another architecture"):
        check_resume(saved, _given(**{"model.init_args.model": str(tmp_path / "other")}), "x")
    with pytest.raises(ELOError, match="does not exist"):
        check_resume(saved, _given(**{"model.init_args.model": str(tmp_path / "nowhere")}), "x")


def test_checkpoint_config_is_read_from_the_record_or_the_hyperparameters(tmp_path):
    recorded = _ckpt(tmp_path / "a.ckpt", config=_given())
    assert read_checkpoint_config(recorded)["model"] == MODEL
    torch.save({"hyper_parameters": {"_class_path": MODEL["class_path"], "_instantiator": "x",
                                     **MODEL["init_args"]}}, tmp_path / "b.ckpt")
    assert read_checkpoint_config(tmp_path / "b.ckpt") == {"model": MODEL}
    (tmp_path / "c.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ELOError, match="cannot read checkpoint"):
        read_checkpoint_config(tmp_path / "c.ckpt")
