"""Benchmarks through EleutherAI lm-evaluation-harness (``pip install 'elo-lightning[eval]'``, tested: lm-eval 0.4.13).

The paper's benchmarks, by their names in the installed lm-eval (they download their datasets from the HF hub on
first use, so run them where the hub is reachable or the datasets are cached), and the metric reported for each
(:data:`PAPER_BENCHMARKS`, :func:`paper_metrics`; docs/evaluation.md):

* Korean, KoBEST: the group ``kobest`` or its tasks ``kobest_boolq``, ``kobest_copa``, ``kobest_hellaswag``,
  ``kobest_sentineg``, ``kobest_wic``; reported: macro-F1 (lm-eval's ``f1`` of these tasks is sklearn
  ``f1_score(average="macro")``), the unweighted mean over the five tasks (lm-eval's own ``kobest`` group ``f1``
  is weighted by task size; it is kept next to ours);
* English, MMLU: the group ``mmlu`` (57 subjects); reported: accuracy (``acc`` of the group, weighted by size);
* Japanese, MARC-ja (JGLUE): ``ja_leaderboard_marc_ja`` (the ``japanese_leaderboard`` family; 3-shot by its
  YAML); reported: accuracy.

:func:`resolve_tasks` checks names against the installed lm-eval (and ``include_path``) before any model is
loaded; an unknown name is one line with the close matches. Indexing lm-eval's ~14k task YAMLs takes tens of
seconds; it is done once per process and reused by :func:`run_lm_eval`.

Local tasks: pass ``include_path`` = a directory of task YAMLs. Relative paths in ``dataset_kwargs.data_files`` are
resolved against the YAML's directory (lm-eval itself would resolve them against the working directory), so a
task folder can ship its own jsonl data, as ``data/eval_tasks`` (the tiny offline tasks the embedded pipeline runs)
does.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError
from elo_lightning.io import write_json_atomic


@dataclass(frozen=True)
class PaperBenchmark:
    """A benchmark of the paper: the lm-eval tasks it averages and the metric reported."""

    name: str
    language: str
    tasks: tuple[str, ...]
    metric: str
    description: str


PAPER_BENCHMARKS: tuple[PaperBenchmark, ...] = (
    PaperBenchmark("kobest", "ko", ("kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"),
                   "f1", "macro-F1, unweighted mean over the five KoBEST tasks"),
    PaperBenchmark("mmlu", "en", ("mmlu",), "acc", "accuracy (lm-eval mmlu group, 57 subjects, weighted by size)"),
    PaperBenchmark("marc_ja", "ja", ("ja_leaderboard_marc_ja",), "acc", "accuracy (JGLUE MARC-ja, 3-shot)"),
)
REAL_TASKS = {b.language: list(b.tasks) for b in PAPER_BENCHMARKS}


def _task_manager(include_path: str | None = None, include_defaults: bool = True) -> Any:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ELOError("lm-eval is not installed: pip install 'elo-lightning[eval]' (lm-eval>=0.4.5)") from err
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


@functools.lru_cache(maxsize=1)
def default_task_manager() -> Any:
    """lm-eval's TaskManager over its built-in tasks, built once per process (indexing takes tens of seconds)."""
    return _task_manager()


def close_matches(name: str, known: list[str] | set[str], n: int = 5) -> list[str]:
    """Known names that contain ``name`` (shortest first), then difflib's close matches."""
    pool = sorted(known)
    containing = sorted((k for k in pool if name.lower() in k.lower()), key=lambda k: (len(k), k))
    similar = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    return list(dict.fromkeys(containing[:n] + similar))[:n]


def check_task_names(names: list[str], known: list[str] | set[str], version: str | None = None) -> None:
    """Raise one line naming every unknown task with its close matches."""
    known = set(known)
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    parts = []
    for name in unknown:
        matches = close_matches(name, known)
        parts.append(f"{name!r} (close matches: {', '.join(matches)})" if matches else f"{name!r} (no close match)")
    where = f"lm-eval {version}" if version else "lm-eval"
    raise ELOError(f"unknown {where} task{'s' if len(unknown) > 1 else ''}: {'; '.join(parts)}")


def split_task_names(tasks: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """``["kobest", "mmlu"]``, ``"kobest,mmlu"`` or ``["kobest,mmlu"]`` -> ``["kobest", "mmlu"]``."""
    items = [tasks] if isinstance(tasks, str) else list(tasks or [])
    return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


def resolve_tasks(tasks: list[str] | str | None, include_path: str | None = None) -> list[str]:
    """The task names, checked against ``include_path`` and the installed lm-eval (cheap next to loading a model).

    Names only in ``include_path`` never index lm-eval's built-in tasks. Raises :class:`ELOError` (one line with
    the close matches) for a name neither knows.
    """
    names = split_task_names(tasks)
    if not names:
        raise ELOError("no lm-eval tasks given")
    local: set[str] = set()
    if include_path:
        if not Path(include_path).is_dir():
            raise ELOError(f"lm-eval include_path is not a directory: {include_path}")
        local = set(_task_manager(str(Path(include_path).resolve()), include_defaults=False).all_tasks)
    if all(name in local for name in names):
        return names
    check_task_names(names, local | set(default_task_manager().all_tasks), _dist_version("lm_eval"))
    return names


def clean_results(raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's ``results`` per task with metric names stripped of the ``",none"`` filter suffix."""
    per_task: dict[str, dict[str, float]] = {}
    for task, metrics in raw.get("results", {}).items():
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            name, _, filt = key.partition(",")
            clean[name if filt in ("", "none") else f"{name}[{filt}]"] = float(value)
        per_task[task] = clean
    return per_task


def paper_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The paper's metric for every benchmark whose tasks were all evaluated.

    ``{"kobest": {"metric": "f1", "value": mean, "tasks": {task: value}, "description", "lm_eval_group": value}}``
    (``lm_eval_group``: lm-eval's own group aggregate of that metric, when the group was run).
    """
    out: dict[str, dict[str, Any]] = {}
    for bench in PAPER_BENCHMARKS:
        values = {t: per_task[t][bench.metric] for t in bench.tasks if bench.metric in per_task.get(t, {})}
        if len(values) != len(bench.tasks):
            continue
        entry: dict[str, Any] = {"metric": bench.metric, "value": sum(values.values()) / len(values),
                                 "tasks": values, "description": bench.description, "language": bench.language}
        group = per_task.get(bench.name, {}).get(bench.metric)
        if group is not None and bench.name not in bench.tasks:
            entry["lm_eval_group"] = group
        out[bench.name] = entry
    return out


def _yaml_load(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {getattr(node, 'value', '')}")
    return yaml.load(text, Loader=Loader)


def _iter_paths(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [p for v in value for p in _iter_paths(v)]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _iter_paths(v)]
    return []


def resolve_local_tasks(include_path: str | Path, workdir: str | Path) -> Path:
    """Copy a task directory to ``workdir`` with relative ``data_files`` rewritten to absolute paths."""
    src = Path(include_path).resolve()
    if not src.is_dir():
        raise ELOError(f"lm-eval include_path is not a directory: {src}")
    dst = Path(workdir) / src.name
    shutil.copytree(src, dst)
    for yml in list(dst.rglob("*.yaml")) + list(dst.rglob("*.yml")):
        text = yml.read_text(encoding="utf-8")
        config = _yaml_load(text) or {}
        data_files = (config.get("dataset_kwargs") or {}).get("data_files") if isinstance(config, dict) else None
        orig_dir = src / yml.parent.relative_to(dst)
        for rel in sorted(set(_iter_paths(data_files)), key=len, reverse=True):
            if os.path.isabs(rel) or "://" in rel:
                continue
            absolute = (orig_dir / rel).resolve()
            if not absolute.exists():
                raise ELOError(f"{yml.name}: data file {rel} not found next to the task ({absolute})")
            text = re.sub(rf"(?<![\w/.-]){re.escape(rel)}(?![\w/.-])", absolute.as_posix(), text)
        yml.write_text(text, encoding="utf-8")
    return dst


def run_lm_eval(
    model_dir: str,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    output: str | None = None,
    dtype: str = "auto",
    num_fewshot: int | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """Evaluate a saved HF model directory with ``lm_eval.simple_evaluate(model="hf", ...)``.

    Args:
        model_dir: HF model directory (weights + tokenizer), e.g. an ELO/SFT output.
        tasks: lm-eval task or group names, e.g. ``["kobest", "mmlu", "ja_leaderboard_marc_ja"]`` or local ones
            from ``include_path``; checked by :func:`resolve_tasks` before the model is loaded.
        include_path: extra task YAML directory (local tasks; see module docstring).
        limit: evaluate only the first ``limit`` documents of each task.
        batch_size: lm-eval batch size.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"``...
        output: optional JSON file for the results (metrics per task, config, versions).
        dtype: model dtype passed to the HF loader ("auto": the checkpoint's own, e.g. bf16).
        num_fewshot: few-shot examples (``None``: task default).
        seed: lm-eval's random/numpy/torch/fewshot seeds.

    Returns:
        ``{"tasks": {task: {metric: value, metric + "_stderr": value}}, "paper_metrics": {...}, "lm_eval_version",
        "model_dir", ...}`` with metric names stripped of lm-eval's ``",none"`` filter suffix; ``paper_metrics``
        as :func:`paper_metrics`.
    """
    names = resolve_tasks(tasks, include_path)  # before the model is touched
    if not Path(model_dir).is_dir():
        raise ELOError(f"model directory not found: {model_dir}")
    import lm_eval

    with tempfile.TemporaryDirectory(prefix="elo_lm_eval_") as tmp:
        task_dir = str(resolve_local_tasks(include_path, tmp)) if include_path else None
        if task_dir is None:
            manager = default_task_manager()
        else:  # local-only runs skip indexing lm-eval's built-in task YAMLs
            manager = _task_manager(task_dir, include_defaults=False)
            if not all(t in manager.all_tasks for t in names):
                manager = _task_manager(task_dir)
        model_args = f"pretrained={Path(model_dir).resolve()},dtype={dtype}"
        raw = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=names,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if raw is None:  # non-zero ranks in distributed runs
        return {}
    per_task = clean_results(raw)
    summary = {
        "model_dir": str(model_dir),
        "tasks": per_task,
        "paper_metrics": paper_metrics(per_task),
        "n_samples": raw.get("n-samples", {}),
        "lm_eval_version": getattr(lm_eval, "__version__", None) or _dist_version("lm_eval"),
        "model_args": model_args,
        "limit": limit,
        "num_fewshot": num_fewshot,
    }
    if output:
        write_json_atomic(output, summary)
    return summary


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return None
