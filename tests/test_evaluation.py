"""Evaluation: perplexity/bpb against a hand computation, lm-eval on tiny local tasks, analysis notebook."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from elo_lightning.evaluation.perplexity import build_windows, evaluate_perplexity

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "configs" / "tokenizer"
TASKS = ROOT / "data" / "eval_tasks"

DOCS = {
    "ko": ["한국어 문장을 평가합니다.", "두 번째 문서: 서울은 대한민국의 수도이다."],
    "en": ["The quick brown fox jumps over the lazy dog.", "Second document, with some more words in it."],
}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    path = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _files(tmp_path):
    out = {}
    for lang, docs in DOCS.items():
        p = tmp_path / f"{lang}.jsonl"
        p.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
        out[lang] = [str(p)]
    return out


def _hand_nll(model, ids: list[int]) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    nll = -sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
    return nll, len(ids) - 1


def test_perplexity_matches_hand_computation(tmp_path, tok, tiny_dir):
    files = _files(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tiny_dir).eval()
    res = evaluate_perplexity(model, tok, files, seq_len=512, max_sequences=None, batch_size=2)
    for lang, docs in DOCS.items():
        stream = [tok.eos_token_id]  # the demo tokenizer adds no BOS: the stream starts with a separator
        for d in docs:
            stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        nll, n = _hand_nll(model, stream)
        r = res[lang]
        assert r["tokens"] == n
        assert r["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
        assert r["loss"] == pytest.approx(nll / n, rel=1e-5)
        assert r["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
        assert r["bits_per_byte"] == pytest.approx(nll / math.log(2) / r["bytes"], rel=1e-5)


def test_windows_batches_paths_and_determinism(tmp_path, tok, tiny_dir):
    files = _files(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tiny_dir).eval()
    # short windows (overlap 1): every token after the first predicted once, bytes still partition the text
    windows, wbytes = build_windows(tok, DOCS["ko"], seq_len=8, max_sequences=None)
    assert all(a[-1] == b[0] for a, b in zip(windows, windows[1:]))
    assert sum(map(sum, wbytes)) == sum(len(d.encode()) for d in DOCS["ko"])
    res = evaluate_perplexity(model, tok, files, seq_len=8, max_sequences=None, batch_size=3)
    nll = sum(_hand_nll(model, w)[0] for w in windows)
    n = sum(len(w) - 1 for w in windows)
    assert res["ko"]["tokens"] == n and res["ko"]["loss"] == pytest.approx(nll / n, rel=1e-5)
    # max_sequences caps the windows; a model directory works; results are deterministic
    capped = evaluate_perplexity(str(tiny_dir), None, files, seq_len=8, max_sequences=2, batch_size=1)
    assert capped["en"]["sequences"] == 2 and capped["en"]["tokens"] == 14
    again = evaluate_perplexity(str(tiny_dir), None, files, seq_len=8, max_sequences=2, batch_size=2)
    assert again == capped


def test_lm_eval_tiny_local_tasks(tmp_path, tiny_dir, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # relative data_files must resolve against the task YAMLs, not the cwd
    from elo_lightning.evaluation.lm_eval_runner import run_lm_eval

    out = tmp_path / "lm_eval.json"
    res = run_lm_eval(str(tiny_dir), ["elo_tiny_kobest_copa", "elo_tiny_en_mc"], include_path=str(TASKS),
                      batch_size=16, output=str(out))
    for task in ("elo_tiny_kobest_copa", "elo_tiny_en_mc"):
        assert 0.0 <= res["tasks"][task]["acc"] <= 1.0
        assert res["n_samples"][task]["effective"] == 8
    assert res["lm_eval_version"]
    assert json.loads(out.read_text())["tasks"].keys() == res["tasks"].keys()


def _fake_runs(root: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for stage, scale in (("elo_pretrain", 1.0), ("sft", 0.5)):
        w = SummaryWriter(str(root / stage / "version_0"))
        for step in range(0, 50, 10):
            w.add_scalar("train/loss", scale * (5 - step / 20), step)
            for lang in ("ko", "en"):
                w.add_scalar(f"val/{lang}/loss", scale * (5.5 - step / 25), step)
                w.add_scalar(f"val/{lang}/ppl", math.exp(scale * (5.5 - step / 25)), step)
        w.close()


def test_analysis_helpers_and_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from elo_lightning.evaluation import analysis

    runs = tmp_path / "runs"
    _fake_runs(runs)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"models": {
        name: {"ko": {"perplexity": p}, "en": {"perplexity": p / 2}}
        for name, p in (("sft", 20.0), ("base", 80.0), ("elo_aligned", 30.0), ("fft", 28.0), ("lora", 45.0))
    }}))
    rows = analysis.load_scalars(str(runs))
    assert {r["run"] for r in rows} == {"elo_pretrain/version_0", "sft/version_0"}
    c = analysis.curves(rows, "loss")
    assert set(c["sft/version_0"]) == {"train", "val/ko", "val/en"}
    assert c["sft/version_0"]["train"][0] == [0, 10, 20, 30, 40]
    table = analysis.perplexity_table(analysis.load_results(results))
    assert list(table) == ["base", "elo_aligned", "fft", "lora", "sft"]

    nb_path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("ELO_RUNS", "ELO_RESULTS", "MPLBACKEND")}
    os.environ.update(ELO_RUNS=str(runs), ELO_RESULTS=str(results), MPLBACKEND="Agg")
    try:
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "2 runs" in text and "elo_aligned" in text
    images = [o for o in outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 3  # loss curves, ppl curves, perplexity bars
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_loss_curves_follow_the_given_stage_order(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from elo_lightning.evaluation import analysis

    _fake_runs(tmp_path)
    rows = analysis.load_scalars(str(tmp_path))
    fig = analysis.plot_loss_curves(rows, order=["sft/version_0", "elo_pretrain/version_0"], ncols=1)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["sft/version_0", "elo_pretrain/version_0"]
    assert {line.get_label() for line in fig.axes[0].lines} == {"train", "val/ko", "val/en"}


@pytest.mark.parametrize("family,bos", [("llama", True), ("gemma3", True), ("qwen2-tied", False)])
def test_eval_windows_are_laid_out_like_training(tmp_path, family, bos):
    """Per family: every document starts with BOS exactly when the tokenizer adds one (as the training stream),
    and the scored loss is that of this layout."""
    from tiny_models import save_real_like

    path = save_real_like(tmp_path / family, family)
    tok = AutoTokenizer.from_pretrained(path)
    windows, wbytes = build_windows(tok, DOCS["en"], seq_len=512, max_sequences=None)
    expected = [] if bos else [tok.eos_token_id]
    for d in DOCS["en"]:
        expected += ([tok.bos_token_id] if bos else []) + tok(d, add_special_tokens=False)["input_ids"]
        expected += [tok.eos_token_id]
    assert windows == [expected]
    assert sum(map(sum, wbytes)) == sum(len(d.encode()) for d in DOCS["en"])
    res = evaluate_perplexity(str(path), None, _files(tmp_path), seq_len=512, max_sequences=None)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).float()  # bf16 checkpoint: the hand computation in fp32
    assert res["en"]["tokens"] == len(expected) - 1
    assert res["en"]["loss"] == pytest.approx(_hand_nll(model, expected)[0] / (len(expected) - 1), rel=0.05)


def test_eval_loads_in_the_checkpoints_dtype(tmp_path):
    from tiny_models import save_real_like

    from elo_lightning.evaluation.perplexity import _load

    path = save_real_like(tmp_path / "m", "llama")
    assert _load(str(path), None, None)[0].dtype == torch.bfloat16  # default: the checkpoint's own
    assert _load(str(path), None, "float32")[0].dtype == torch.float32
