"""The datamodule is buildable from YAML by jsonargparse (as LightningCLI does), languages as dataclasses."""

from __future__ import annotations

from tests.data.conftest import TOKENIZER, train_glob, valid_file


def test_jsonargparse_builds_from_yaml(tmp_path):
    from jsonargparse import ArgumentParser

    from elo_lightning.data import BilingualDataModule, LanguageSource

    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"""data:
  tokenizer: {TOKENIZER}
  seq_len: 64
  batch_size: 2
  languages:
    - name: en
      train: ["{train_glob('en')}"]
      valid: ["{valid_file('en')}"]
      weight: 1
    - name: ko
      train: ["{train_glob('ko')}"]
      weight: 9
""")
    parser = ArgumentParser()
    parser.add_class_arguments(BilingualDataModule, "data")
    dm = parser.instantiate_classes(parser.parse_path(str(cfg))).data
    assert isinstance(dm.languages[1], LanguageSource)
    assert dm.weights == {"en": 0.1, "ko": 0.9} and dm.val_languages == ["en"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 64)
    dm.setup("validate")
    (val,) = dm.val_dataloader()
    assert next(iter(val))["language"] == "en"  # validation batches carry their language
