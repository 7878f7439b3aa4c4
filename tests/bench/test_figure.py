import json
from pathlib import Path

import pytest

from elo_lightning.bench import figure
from elo_lightning.cli import main

ROOT = Path(__file__).resolve().parents[2]


def fake_results(path, with_lora=True):
    def m(tps, fpt):
        return {
            "tokens_per_s": tps,
            "step_time_s": 8192 / tps,
            "flops_per_token": fpt,
            "mfu": 0.3,
            "peak_mem_gb": 20.0,
            "trainable_params": 400_000_000,
            "computed_params": 1_500_000_000,
            "batch_size": 1,
            "best_batch": None,
        }

    res = {
        "arch": "llama-3.1-8b",
        "device": "1x FakeGPU",
        "seq_len": 8192,
        "versions": {"torch": "x"},
        "methods": {"elo": m(40_000.0, 5e9), "fft": m(4_000.0, 5e10), "freeze": m(6_000.0, 3.6e10)},
        "analytic_flops_per_token": {"elo": 5e9, "fft": 5e10, "freeze": 3.6e10, "lora": 3.5e10},
    }
    if with_lora:
        res["methods"]["lora"] = m(5_000.0, 3.5e10)
        res["methods"]["lora"]["best_batch"] = {"batch_size": 4, "tokens_per_s": 10_000.0}
    path.write_text(json.dumps(res))
    return path


def test_time_model_exact(tmp_path):
    res = figure.load_results(fake_results(tmp_path / "results.json"))
    rows = figure.time_table(res)
    assert [r["data_gb"] for r in rows] == [10, 50, 200]
    r = rows[0]
    tpg = figure.TOKENS_PER_GB
    assert r["fft_h"] == pytest.approx(10 * tpg / 4000 / 3600)
    assert r["elo_phase_h"] == pytest.approx(9 * tpg / 40000 / 3600)
    assert r["align_h"] == pytest.approx(1 * tpg / 4000 / 3600)  # alignment at FFT speed by default
    assert r["elo_vs_fft"] == pytest.approx(10 / (0.9 + 1.0))
    assert r["elo_vs_lora"] == pytest.approx(8 / (0.9 + 1.0))
    assert r["paper_elo_vs_fft"] == pytest.approx(19.8 / 3.5, abs=0.005)  # Figure 3's 5.66x = Table 1's hours
    assert [row["paper_elo_vs_fft"] for row in rows] == [5.66, 6.04, 12.23]  # paper Figure 3, beside LoRA's
    assert rows[1]["paper_elo_vs_lora"] == 5.29 and rows[2]["paper_elo_vs_lora"] == 10.72
    # best batch: LoRA at 10k tokens/s
    rb = figure.time_table(res, best_batch=True)[0]
    assert rb["lora_h"] == pytest.approx(10 * tpg / 10_000 / 3600)


def test_make_figure_writes_png_and_table(tmp_path):
    out = figure.make_figure(fake_results(tmp_path / "results.json"), tmp_path / "fig")
    png = Path(out["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (tmp_path / "fig" / "speedup.md").read_text()
    for row in ("| 10 |", "| 50 |", "| 200 |", "| elo |", "| fft |", "| lora |", "| freeze |", "| paper |", "| ours |"):
        assert row in md, row
    assert "5.29x" in md and "10.72x" in md and "19.8" in md
    assert "5.26x" in md  # ours: ELO vs FFT at 10 GB = 10 / 1.9


def test_missing_method_reads_na(tmp_path):
    out = figure.make_figure(fake_results(tmp_path / "r.json", with_lora=False), tmp_path)
    assert all(r["lora_h"] is None for r in out["rows"])
    assert "n/a" in out["markdown"]


def test_elo_figure_command(tmp_path):
    p = fake_results(tmp_path / "results.json")
    main(["figure", "--results", str(p), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "speedup.png").exists() and (tmp_path / "cli" / "speedup.md").exists()


def test_bad_results_file_exits_2(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"methods": {}}')
    with pytest.raises(SystemExit) as exit_info:
        main(["figure", "--results", str(tmp_path / "results.json")])
    assert exit_info.value.code == 2 and "at least 'elo'" in capsys.readouterr().err


def test_figure_cmd_default_out_next_to_results(tmp_path):
    p = fake_results(tmp_path / "results.json")
    figure.figure_cmd(str(p))
    assert (tmp_path / "speedup.png").exists() and (tmp_path / "speedup.md").exists()


def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    p = fake_results(tmp_path / "results.json")
    monkeypatch.setenv("ELO_RESULTS", str(p))
    monkeypatch.setenv("ELO_FIGURE_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "speedup.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in code  # uses elo_lightning.bench.figure, no copied code
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    assert (tmp_path / "nb" / "speedup.png").exists()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("text/markdown" in o.get("data", {}) for o in outputs)
