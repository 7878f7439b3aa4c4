"""The `elo` command: every shipped config parses; surgery subcommands work and refuse bad input with exit 2."""

import json
import re
import shutil
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
    # a data tokenizer is named, or left to the model's own where the model is a directory (sft.yaml: the
    # chat-vector output); an architecture .json carries none
    model = str(printed["model"]["init_args"]["model"])
    assert printed["data"]["init_args"]["tokenizer"] or not model.endswith(".json")


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
        (["attach", "--model", "configs/models/tiny-llama.json", "--detached", "{tmp}/notes", "--output", "{tmp}/x"],
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
    """`elo fit` with configs/cpu/elo.yaml, then configs/cpu/align.yaml on its export: the CLI path, a few steps."""
    # 7 steps: the CPU trainer config's ThroughputLogger excludes 5 warm-up steps
    short = ["--trainer.max_steps", "7", "--trainer.val_check_interval", "7", "--trainer.limit_val_batches", "1",
             "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--data.init_args.batch_size", "2"]
    main(["fit", "--config", "configs/cpu/elo.yaml", *short, "--trainer.logger.init_args.name", "elo",
          "--model.init_args.export_dir", str(tmp_path / "elo")])
    manifest = json.loads((tmp_path / "elo" / "elo_manifest.json").read_text())
    assert manifest["layers"] == [0, 7]  # stored 0-based: λ = {1, 8} of 8
    stream = json.loads((tmp_path / "elo" / "stream_state.json").read_text())  # where alignment continues
    assert stream["streams"] and stream["mix_by"] == "bytes"
    data = json.loads((tmp_path / "elo" / "elo_export.json").read_text())["data"]  # the run's data settings
    assert data["class_path"] == "elo_lightning.data.bilingual.BilingualDataModule" and data["batch_size"] == 2
    assert [(lang["name"], lang["weight"]) for lang in data["languages"]] == [("en", 1.0), ("ko", 9.0)]
    main(["fit", "--config", "configs/cpu/align.yaml", *short, "--trainer.logger.init_args.name", "align",
          "--model.init_args.detached", str(tmp_path / "elo"), "--model.init_args.export_dir", str(tmp_path / "align"),
          "--data.init_args.start_after", str(tmp_path / "elo")])
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


# -- outputs: no command deletes or replaces what it did not create ---------------------------------------------------

@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    main(["init", "--arch", TINY, "--output", str(out), "--tokenizer", "configs/tokenizer"])
    return out


def _snapshot(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _refused(capsys, argv, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    return last


OUTPUT_CASES = {  # case id -> (argv with {tmp}/{base}, message); what each must keep is checked below
    "detach_into_nonempty_folder": (["detach", "--model", "{base}", "--layers", "1,-1", "--output", "{tmp}/folder"],
                                    "not empty and not a previous detached output"),
    "detach_output_is_the_model": (["detach", "--model", "{base}", "--layers", "1,-1", "--output", "{base}"],
                                   "is the --model"),
    "detach_output_contains_the_model": (["detach", "--model", "{base}", "--layers", "1,-1", "--output",
                                          "{base}/.."], "contains the --model"),
    "attach_output_is_the_detached": (["attach", "--model", "{base}", "--detached", "{tmp}/elo", "--output",
                                       "{tmp}/elo"], "is the --detached"),
    "init_into_nonempty_folder": (["init", "--arch", TINY, "--output", "{tmp}/folder"], "not empty"),
    "init_from_a_model_dir": (["init", "--arch", "{base}", "--output", "{tmp}/new"], "architecture .json"),
    "output_is_a_file": (["detach", "--model", "{base}", "--layers", "1,-1", "--output", "{tmp}/notes.txt"],
                         "is a file"),
    "output_is_a_symlink": (["detach", "--model", "{base}", "--layers", "1,-1", "--output", "{tmp}/link"],
                            "symbolic link"),
    "eval_output_is_a_device": (["eval", "--model", "{base}", "--output", "/dev/null"], "not a regular file"),
    "eval_output_is_someone_elses_file": (["eval", "--model", "{base}", "--output", "{tmp}/notes.txt"],
                                          "not a previous eval output"),
    "chat_vector_output_is_the_target": (["chat-vector", "--base", "{base}", "--instruct", "{base}", "--target",
                                          "{tmp}/elo", "--output", "{tmp}/elo"], "is the target model"),
    "chat_vector_bad_shard_size": (["chat-vector", "--base", "{base}", "--instruct", "{base}", "--target", "{base}",
                                    "--output", "{tmp}/cv", "--max_shard_size", "lots"], "max_shard_size"),
}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_outputs_that_would_destroy_something_are_refused(case, tmp_path, capsys, base_model):
    (tmp_path / "folder" / "other-model").mkdir(parents=True)
    (tmp_path / "folder" / "notes.md").write_text("mine")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    main(["detach", "--model", str(base_model), "--layers", "1,-1", "--output", str(tmp_path / "elo")])
    before = {p: _snapshot(p) for p in (tmp_path, base_model)}
    argv, message = OUTPUT_CASES[case]
    _refused(capsys, [a.replace("{tmp}", str(tmp_path)).replace("{base}", str(base_model)) for a in argv], message)
    assert {p: _snapshot(p) for p in (tmp_path, base_model)} == before  # nothing changed, nothing left behind
    assert (tmp_path / "link").is_symlink()


def test_overwrite_replaces_a_foreign_folder_and_reruns_replace_their_own_output(tmp_path, base_model):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.md").write_text("mine")
    detach = ["detach", "--model", str(base_model), "--layers", "1,-1", "--output", str(tmp_path / "folder")]
    main([*detach, "--overwrite", "true"])
    assert not (tmp_path / "folder" / "notes.md").exists() and (tmp_path / "folder" / "elo_manifest.json").is_file()
    main(detach)  # an earlier detached output: replaced without --overwrite
    out = tmp_path / "e.json"
    main(["eval", "--model", str(base_model), "--max_sequences", "1", "--seq_len", "32", "--output", str(out)])
    main(["eval", "--model", str(base_model), "--max_sequences", "1", "--seq_len", "32", "--output", str(out)])
    assert json.loads(out.read_text())["model"] == str(base_model)


# -- every shipped stage config runs through `elo fit` ---------------------------------------------------------------

CPU_STAGE_CONFIGS = [p for p in STAGE_CONFIGS if "cpu" in p.parts]  # paper, 8xh100: GPUs (they parse above)


@pytest.fixture(scope="module")
def detached_tiny(tmp_path_factory):
    """λ = {1, 8} detached from the seeded random init of configs/models/tiny-llama.json (what align.yaml attaches)."""
    out = tmp_path_factory.mktemp("detached") / "elo"
    main(["detach", "--model", TINY, "--layers", "1,-1", "--output", str(out)])
    return out


@pytest.mark.parametrize("config", CPU_STAGE_CONFIGS, ids=lambda p: p.name)
def test_every_stage_config_trains_two_steps_through_elo_fit(config, tmp_path, detached_tiny):
    args = ["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
            "--trainer.limit_val_batches", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--data.init_args.batch_size", "2", "--model.init_args.export_dir", str(tmp_path / "export")]
    model_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    if not str(model_args["model"]).endswith(".json"):  # sft.yaml trains the chat-vector output: a tiny model here
        args += ["--model.init_args.model", TINY, "--data.init_args.tokenizer", "configs/tokenizer"]  # it has none
    if "detached" in model_args:
        args += ["--model.init_args.detached", str(detached_tiny)]
    if "start_after:" in config.read_text():
        args += ["--data.init_args.start_after", "null"]  # `elo detach` writes no stream state (ELO's export does)
    main(args)
    assert json.loads((tmp_path / "export" / "elo_export.json").read_text())["global_step"] == 2


# -- resume from the command line ------------------------------------------------------------------------------------

def _elo_fit(tmp_path, *extra, steps=4):
    trainer = tmp_path / "trainer.yaml"
    if not trainer.exists():  # the shipped CPU trainer, a checkpoint every 2 steps
        cfg = yaml.safe_load(Path("configs/cpu/trainer.yaml").read_text())
        for cb in cfg["callbacks"]:
            if cb["class_path"].endswith("ModelCheckpoint"):
                cb["init_args"]["every_n_train_steps"] = 2
        cfg["logger"]["init_args"].update(save_dir=str(tmp_path / "runs"), name="elo")
        trainer.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", "configs/cpu/elo.yaml", "--trainer", str(trainer), "--trainer.max_steps", str(steps),
          "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--data.init_args.batch_size", "2",
          *extra])


def test_resume_last_takes_new_paths_and_refuses_changes_of_the_trained_function(tmp_path, capsys):
    _elo_fit(tmp_path, "--model.init_args.export_dir", str(tmp_path / "e1"))
    first = _snapshot(tmp_path / "e1")
    # "last" is in version_0, this launch logs to version_1: resolved across versions; the new export_dir is taken
    _elo_fit(tmp_path, "--ckpt_path", "last", "--model.init_args.export_dir", str(tmp_path / "e2"))
    assert json.loads((tmp_path / "e2" / "elo_export.json").read_text())["global_step"] == 4  # resumed, not restarted
    assert _snapshot(tmp_path / "e1") == first  # the earlier export is untouched
    for extra, named in ((["--model.init_args.optimizer.lr", "0.5"], "model.init_args.optimizer.lr"),
                         (["--model.init_args.layers", "1,2"], "model.init_args.layers"),
                         (["--data.init_args.seq_len", "64"], "data.init_args.seq_len")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            _elo_fit(tmp_path, "--ckpt_path", "last", "--model.init_args.export_dir", str(tmp_path / "e3"), *extra)
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: cannot resume") and named in last, last
    assert not (tmp_path / "e3").exists()


def test_resume_with_another_stage_config_is_refused(tmp_path, capsys):
    _elo_fit(tmp_path, "--model.init_args.export_dir", "null", steps=2)
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    last = _refused(capsys, ["fit", "--config", "configs/cpu/align.yaml", "--ckpt_path", str(ckpt),
                             "--trainer.logger.init_args.save_dir", str(tmp_path / "runs2"),
                             "--model.init_args.export_dir", str(tmp_path / "align")], "model.class_path")
    assert "DetachedLayerModule" in last and not (tmp_path / "align").exists()


def test_resume_last_without_a_checkpoint_is_refused(tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _elo_fit(tmp_path, "--ckpt_path", "last", "--model.init_args.export_dir", "null")
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no last.ckpt" in last and "nothing to resume" in last
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_resume_after_the_model_folder_moved(tmp_path, base_model):
    shutil.copytree(base_model, tmp_path / "base")
    _elo_fit(tmp_path, "--model.init_args.model", str(tmp_path / "base"), "--model.init_args.export_dir", "null",
             steps=2)
    (tmp_path / "base").rename(tmp_path / "moved")
    _elo_fit(tmp_path, "--ckpt_path", "last", "--model.init_args.model", str(tmp_path / "moved"),
             "--model.init_args.export_dir", str(tmp_path / "e"), steps=2)
    assert json.loads((tmp_path / "e" / "elo_export.json").read_text())["global_step"] == 2


def test_data_tokenizer_defaults_to_the_models_own(tmp_path):
    """No tokenizer in the data config: the model's own (its directory's), for the data and the module alike;
    a model without one is refused instead of falling back to some tokenizer."""
    import lightning as L
    from tiny_models import save_real_like

    from elo_lightning.errors import ELOError
    from elo_lightning.lightning_cli import ELOLightningCLI

    model = save_real_like(tmp_path / "m", "llama")
    langs = '[{name: en, train: [data/sample/pretrain/en/train-*.jsonl]}]'

    def cli(source):
        return ELOLightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                               subclass_mode_data=True, run=False, auto_configure_optimizers=False,
                               args=["--model", "elo_lightning.modules.DetachedLayerModule",
                                     "--model.init_args.model", source,
                                     "--data", "elo_lightning.data.BilingualDataModule",
                                     "--data.init_args.languages", langs, "--trainer.logger", "false"])

    made = cli(str(model))
    assert made.datamodule.tokenizer_name == str(model) and made.model.hparams.tokenizer == str(model)
    with pytest.raises(ELOError, match="carries none"):
        cli("configs/models/tiny-llama.json")


def test_sft_data_tokenizer_defaults_to_the_models_own(tmp_path):
    """SFT as pretraining: no tokenizer given (the shipped sft.yaml data configs) -> the trained model's own."""
    import lightning as L
    from tiny_models import save_real_like

    from elo_lightning.errors import ELOError
    from elo_lightning.lightning_cli import ELOLightningCLI

    model = save_real_like(tmp_path / "m", "llama")

    def cli(source):
        return ELOLightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                               subclass_mode_data=True, run=False, auto_configure_optimizers=False,
                               args=["--model", "elo_lightning.modules.SFTModule", "--model.init_args.model", source,
                                     "--data", "configs/cpu/data/sft.yaml", "--trainer.logger", "false"])

    made = cli(str(model))
    assert made.datamodule.tokenizer_path == str(model) and made.model.hparams.tokenizer == str(model)
    with pytest.raises(ELOError, match="carries none"):
        cli("configs/models/tiny-llama.json")
