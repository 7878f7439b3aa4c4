"""``elo eval``: per-language held-out perplexity / bits-per-byte and lm-evaluation-harness tasks of a model."""

from __future__ import annotations

import json
from pathlib import Path

from elo_lightning.io import write_json_atomic


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
) -> dict:
    """``{"perplexity": {lang: metrics}, "lm_eval": {task: metrics}}`` (``lm_eval`` only when tasks are given)."""
    from elo_lightning.evaluation.perplexity import evaluate_perplexity

    result: dict = {"perplexity": evaluate_perplexity(model, None, files, seq_len=seq_len, max_sequences=max_sequences,
                                                      device=device)}
    if tasks:
        from elo_lightning.evaluation.lm_eval_runner import run_lm_eval

        kwargs = {"device": device} if device is not None else {}
        result["lm_eval"] = run_lm_eval(model, tasks, include_path=include_path, limit=limit,
                                        batch_size=lm_eval_batch_size, **kwargs)["tasks"]
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
) -> dict:
    """Per-language held-out perplexity / bits-per-byte, and lm-evaluation-harness tasks, of an exported model.

    Args:
        model: HF directory (any stage's export).
        data: folder with <lang>/valid.jsonl.
        languages: comma-separated languages to score.
        seq_len: tokens per scored window.
        max_sequences: windows per language.
        tasks: lm-eval task names (kobest_copa, mmlu, marc_ja with a network; elo_tiny_kobest_copa, elo_tiny_en_mc
            offline with --include_path data/eval_tasks).
        include_path: folder of local lm-eval task YAMLs.
        limit: items per lm-eval task.
        device: cpu or cuda.
        output: JSON file to write.
    """
    files = {lang: [str(Path(data) / lang / "valid.jsonl")] for lang in languages.split(",") if lang}
    result = {"model": model, **evaluate_model(model, files, seq_len, max_sequences, tasks=tasks,
                                               include_path=include_path, limit=limit, device=device)}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if output:
        write_json_atomic(output, result)
    return result
