"""``elo eval``: per-language held-out perplexity / bits-per-byte and lm-evaluation-harness tasks of a model."""

from __future__ import annotations

import json
from pathlib import Path

from elo_lightning.io import check_output, write_output_json


def evaluate_model(
    model: str,
    files: dict[str, list[str]],
    seq_len: int,
    max_sequences: int | None,
    tasks: list[str] | None = None,
    include_path: str | None = None,
    limit: int | None = None,
    device: str | None = None,
    lm_eval_batch_size: int = 1,
    num_fewshot: int | None = None,
) -> dict:
    """``{"perplexity": {lang: metrics}, "lm_eval": {task: metrics}, "paper_metrics": {...}}`` (the last two only
    when tasks are given). Task names are checked against lm-eval before the model is loaded."""
    from elo_lightning.evaluation.lm_eval_runner import resolve_tasks, run_lm_eval
    from elo_lightning.evaluation.perplexity import evaluate_perplexity

    task_names = resolve_tasks(tasks, include_path) if tasks else None
    result: dict = {"perplexity": evaluate_perplexity(model, None, files, seq_len=seq_len, max_sequences=max_sequences,
                                                      device=device)}
    if task_names:
        kwargs = {"device": device} if device is not None else {}
        lm = run_lm_eval(model, task_names, include_path=include_path, limit=limit, batch_size=lm_eval_batch_size,
                         num_fewshot=num_fewshot, **kwargs)
        result["lm_eval"], result["paper_metrics"] = lm["tasks"], lm["paper_metrics"]
    return result


def eval_cmd(
    model: str,
    data: str = "data/sample/pretrain",
    languages: str = "en,ko",
    seq_len: int = 512,
    max_sequences: int = 64,
    tasks: list[str] | None = None,
    include_path: str | None = None,
    limit: int | None = None,
    device: str = "cpu",
    output: str | None = None,
    num_fewshot: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Per-language held-out perplexity / bits-per-byte, and lm-evaluation-harness tasks, of an exported model.

    Args:
        model: HF directory (any stage's export).
        data: folder with <lang>/valid.jsonl.
        languages: comma-separated languages to score.
        seq_len: tokens per scored window.
        max_sequences: windows per language.
        tasks: lm-eval task or group names as the installed lm-eval knows them (the paper's: kobest (its five
            tasks), mmlu, ja_leaderboard_marc_ja; they need the datasets), or the offline local tasks
            elo_tiny_kobest_copa, elo_tiny_en_mc with --include_path data/eval_tasks. Unknown names stop before the
            model is loaded, with close matches. See docs/evaluation.md.
        include_path: folder of local lm-eval task YAMLs.
        limit: items per lm-eval task.
        device: cpu or cuda.
        output: JSON file to write (an existing file only if it holds an earlier `elo eval` result, or with
            --overwrite; never a device, link or input).
        num_fewshot: override the tasks' few-shot count (default: each task's own).
        overwrite: replace an existing output file that is not an earlier `elo eval` result.
    """
    guard = {"inputs": {"--model": model, "--data": data}, "overwrite": overwrite}
    if output:
        check_output(output, "eval", is_dir=False, **guard)  # before the (slow) evaluation
    files = {lang: [str(Path(data) / lang / "valid.jsonl")] for lang in languages.split(",") if lang}
    result = {"model": model, **evaluate_model(model, files, seq_len, max_sequences, tasks=tasks,
                                               include_path=include_path, limit=limit, device=device,
                                               num_fewshot=num_fewshot)}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if output:
        write_output_json(output, result, "eval", **guard)
    return result
