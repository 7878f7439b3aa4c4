"""The `elo` command: every shipped config parses; surgery subcommands work and refuse bad input with exit 2."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from elo_lightning.cli import main

TINY = "configs/models/tiny-llama.json"
STAGE_CONFIGS = sorted(p for p in Path("configs").rglob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {}))


def test_there_are_stage_configs():
    names = {p.name for p in STAGE_CONFIGS}
    assert {"elo.yaml", "align.yaml", "fft.yaml", "lora.yaml", "freeze.yaml", "sft.yaml"} <= names


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=str)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("elo_lightning.modules.")
    assert printed["data"]["init_args"]["tokenizer"]


def test_init_detach_attach_round_trip(tmp_path, capsys):
    main(["init", "--arch", "configs/models/tiny-llama.json", "--output", str(tmp_path / "base"),
          "--tokenizer", "configs/tokenizer"])
    main(["detach", "--model", str(tmp_path / "base"), "--layers", "1,-1", "--output", str(tmp_path / "elo")])
    main(["attach", "--model", str(tmp_path / "base"), "--detached", str(tmp_path / "elo"),
          "--output", str(tmp_path / "back")])
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").state_dict()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").state_dict()
    assert base.keys() == back.keys() and all(torch.equal(base[k], back[k]) for k in base)
    assert (tmp_path / "back" / "tokenizer.json").is_file()
    assert "detached layers [1, 8] of 8" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["detach", "--model", TINY, "--layers", "1,9", "--output", "{tmp}/x"], "out of range"),
        (["detach", "--model", TINY, "--layers", "2,2", "--output", "{tmp}/x"], "duplicate"),
        (["detach", "--model", "configs/models/tiny-llama.json", "--layers", " ", "--output", "{tmp}/x"], "empty"),
        (["detach", "--model", "{tmp}/nowhere", "--layers", "1", "--output", "{tmp}/x"], "not found"),
        (["detach", "--model", "{tmp}/gpt2.json", "--layers", "1", "--output", "{tmp}/x"], "unknown architecture"),
        (["attach", "--model", "configs/models/tiny-llama.json", "--detached", "{tmp}", "--output", "{tmp}/x"],
         "not an ELO detached checkpoint"),
        (["attach", "--model", "{tmp}/other.json", "--detached", "{tmp}/elo", "--output", "{tmp}/x"],
         "different model"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "gpt2.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    other = Path(TINY).read_text().replace('"num_hidden_layers": 8', '"num_hidden_layers": 4')
    (tmp_path / "other.json").write_text(other)
    main(["detach", "--model", "configs/models/tiny-llama.json", "--layers", "1,-1", "--output", str(tmp_path / "elo")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars may come before it
    assert last.startswith("error: ") and message in last


def test_fit_elo_then_align_through_the_shipped_configs(tmp_path):
    """`elo fit` with configs/elo.yaml, then configs/align.yaml on its export: the whole CLI path, a few steps."""
    # 7 steps: the CPU trainer config's ThroughputLogger excludes 5 warm-up steps
    short = ["--trainer.max_steps", "7", "--trainer.val_check_interval", "7", "--trainer.limit_val_batches", "1",
             "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--data.init_args.batch_size", "2"]
    main(["fit", "--config", "configs/elo.yaml", *short, "--trainer.logger.init_args.name", "elo",
          "--model.init_args.export_dir", str(tmp_path / "elo")])
    manifest = json.loads((tmp_path / "elo" / "elo_manifest.json").read_text())
    assert manifest["layers"] == [0, 7]  # stored 0-based: λ = {1, 8} of 8
    data = json.loads((tmp_path / "elo" / "elo_export.json").read_text())["data"]  # the run's data settings
    assert data["class_path"] == "elo_lightning.data.bilingual.BilingualDataModule" and data["batch_size"] == 2
    assert [(lang["name"], lang["weight"]) for lang in data["languages"]] == [("en", 1.0), ("ko", 9.0)]
    main(["fit", "--config", "configs/align.yaml", *short, "--trainer.logger.init_args.name", "align",
          "--model.init_args.detached", str(tmp_path / "elo"), "--model.init_args.export_dir", str(tmp_path / "align")])
    aligned = AutoModelForCausalLM.from_pretrained(tmp_path / "align")
    assert aligned.config.num_hidden_layers == 8
    for stage in ("elo", "align"):  # throughput summary next to the TensorBoard events of each run
        (summary,) = (tmp_path / "runs" / stage).rglob("summary.json")
        assert json.loads(summary.read_text())["tokens_per_s"] > 0
        assert list(summary.parent.glob("events.out.tfevents.*"))
        assert list(summary.parent.rglob("*.ckpt"))


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name in ("fit", "validate", "test", "check-data", "detach", "bench"):
        assert re.search(rf"^\s+{name}\s", out, re.M), name
    assert "Lightning's fit" in out
