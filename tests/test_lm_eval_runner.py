"""lm-eval task names and the paper's metrics: name checks with close matches (before any model is loaded), the
paper metric per benchmark from lm-eval results, and the installed lm-eval's names for the paper's benchmarks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from elo_lightning.errors import ELOError
from elo_lightning.evaluation import lm_eval_runner
from elo_lightning.evaluation.lm_eval_runner import (
    PAPER_BENCHMARKS,
    check_task_names,
    clean_results,
    paper_metrics,
    resolve_tasks,
    run_lm_eval,
    split_task_names,
)

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "data" / "eval_tasks"
KOBEST = ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"]
KNOWN = ["kobest", *KOBEST, "mmlu", "mmlu_anatomy", "ja_leaderboard_marc_ja", "ja_leaderboard_jnli", "copa"]


def test_unknown_names_give_one_line_with_close_matches():
    check_task_names(["kobest", "mmlu", "ja_leaderboard_marc_ja"], KNOWN)  # known: nothing raised
    with pytest.raises(ELOError) as err:
        check_task_names(["kobest_copa", "kobest_cop", "marc_ja", "zzz"], KNOWN, "0.4.13")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("unknown lm-eval 0.4.13 tasks:")
    assert "'kobest_cop' (close matches: kobest_copa" in msg
    assert "'marc_ja' (close matches: ja_leaderboard_marc_ja)" in msg
    assert "'zzz' (no close match)" in msg and "'kobest_copa'" not in msg
    assert split_task_names(["kobest,mmlu", " ja_leaderboard_marc_ja "]) == ["kobest", "mmlu", "ja_leaderboard_marc_ja"]
    assert split_task_names("kobest") == ["kobest"]


def _raw(kobest_f1: list[float], sizes_weighted_f1: float | None = None) -> dict:
    results = {t: {"alias": t, "acc,none": 0.5, "acc_stderr,none": 0.01, "f1,none": f1, "f1_stderr,none": "N/A"}
               for t, f1 in zip(KOBEST, kobest_f1, strict=False)}
    if sizes_weighted_f1 is not None:
        results["kobest"] = {"alias": "kobest", "acc,none": 0.5, "f1,none": sizes_weighted_f1}
    results["mmlu"] = {"alias": "mmlu", "acc,none": 0.62, "acc_stderr,none": 0.004}
    results["mmlu_anatomy"] = {"alias": " - anatomy", "acc,none": 0.4}
    results["ja_leaderboard_marc_ja"] = {"alias": "marc", "acc,none": 0.9, "acc,strict": 0.8}
    return {"results": results}


def test_paper_metric_per_benchmark_from_lm_eval_results():
    f1 = [0.5, 0.6, 0.7, 0.8, 1.0]
    metrics = paper_metrics(clean_results(_raw(f1, sizes_weighted_f1=0.55)))
    assert metrics["kobest"]["metric"] == "f1" and metrics["kobest"]["value"] == pytest.approx(sum(f1) / 5)
    assert metrics["kobest"]["tasks"] == dict(zip(KOBEST, f1, strict=True))
    assert metrics["kobest"]["lm_eval_group"] == 0.55  # lm-eval's size-weighted group value, kept beside ours
    assert metrics["mmlu"]["value"] == 0.62 and metrics["mmlu"]["metric"] == "acc"
    assert metrics["marc_ja"]["value"] == 0.9 and metrics["marc_ja"]["language"] == "ja"
    partial = paper_metrics(clean_results(_raw(f1[:4])))  # a KoBEST task missing: no KoBEST average
    assert "kobest" not in partial and "mmlu" in partial
    assert clean_results(_raw(f1))["ja_leaderboard_marc_ja"] == {"acc": 0.9, "acc[strict]": 0.8}


def test_local_tasks_resolve_without_indexing_lm_eval_and_unknown_fails_before_the_model(monkeypatch):
    pytest.importorskip("lm_eval")

    def no_index():
        raise AssertionError("lm-eval's built-in tasks were indexed")

    monkeypatch.setattr(lm_eval_runner, "default_task_manager", no_index)
    assert resolve_tasks(["elo_tiny_kobest_copa,elo_tiny_en_mc"], str(TASKS)) == ["elo_tiny_kobest_copa",
                                                                                   "elo_tiny_en_mc"]
    monkeypatch.setattr(lm_eval_runner, "default_task_manager", lambda: SimpleNamespace(all_tasks=KNOWN))
    with pytest.raises(ELOError, match=r"'elo_tiny_kobest_cop' \(close matches: elo_tiny_kobest_copa"):
        run_lm_eval("/nonexistent/model", ["elo_tiny_kobest_cop"], include_path=str(TASKS))
    with pytest.raises(ELOError, match="no lm-eval tasks"):
        resolve_tasks([])


@pytest.mark.slow
def test_installed_lm_eval_has_the_paper_benchmarks_and_their_metrics():
    """Indexes the installed lm-eval (~25 s): the names and metrics in PAPER_BENCHMARKS are real."""
    pytest.importorskip("lm_eval")
    names = [t for b in PAPER_BENCHMARKS for t in b.tasks] + ["kobest"]
    assert resolve_tasks(names) == names
    with pytest.raises(ELOError, match=r"'marc_ja' \(close matches: ja_leaderboard_marc_ja"):
        resolve_tasks(["marc_ja"])
    index = lm_eval_runner.default_task_manager().task_index

    def config(name: str) -> dict:
        return lm_eval_runner._yaml_load(Path(index[name].yaml_path).read_text(encoding="utf-8"))

    assert config("kobest")["task"] == KOBEST
    for bench in PAPER_BENCHMARKS:
        if bench.tasks == ("mmlu",):
            assert {m["metric"] for m in config("mmlu")["aggregate_metric_list"]} == {"acc"}
            continue
        for task in bench.tasks:
            metrics = {m["metric"]: m for m in config(task)["metric_list"]}
            assert bench.metric in metrics
            if bench.name == "kobest":  # lm-eval's kobest f1 is macro-F1
                assert metrics["f1"]["average"] == "macro" and "macro_f1" in metrics["f1"]["aggregation"]
