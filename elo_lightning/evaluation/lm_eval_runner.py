"""Benchmarks through EleutherAI lm-evaluation-harness (``pip install 'elo-lightning[eval]'``, tested: lm-eval 0.4.13).

Real task names used for the ELO comparison (they download their datasets from the HF hub on first use, so run
them where the hub is reachable or the datasets are cached):

* Korean: ``kobest`` (group) or ``kobest_copa``, ``kobest_boolq``, ``kobest_hellaswag``, ``kobest_sentineg``,
  ``kobest_wic``;
* English knowledge: ``mmlu`` (group; 57 subjects);
* Japanese: ``marc_ja`` (JGLUE MARC-ja, from the ``japanese_leaderboard`` task family in recent lm-eval).

Local tasks: pass ``include_path`` = a directory of task YAMLs. Relative paths in ``dataset_kwargs.data_files`` are
resolved against the YAML's directory (lm-eval itself would resolve them against the working directory), so a
task folder can ship its own jsonl data, as ``data/eval_tasks`` (the tiny offline tasks the embedded pipeline runs) does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError

REAL_TASKS = {"ko": ["kobest_copa", "kobest_boolq", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"],
              "en": ["mmlu"], "ja": ["marc_ja"]}


def _yaml_load(text: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")
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
        tasks: lm-eval task or group names, e.g. ``["kobest_copa", "mmlu"]`` or local ones from ``include_path``.
        include_path: extra task YAML directory (local tasks; see module docstring).
        limit: evaluate only the first ``limit`` documents of each task.
        batch_size: lm-eval batch size.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"``...
        output: optional JSON file for the results (metrics per task, config, versions).
        dtype: model dtype passed to the HF loader ("auto": the checkpoint's own, e.g. bf16).
        num_fewshot: few-shot examples (``None``: task default).
        seed: lm-eval's random/numpy/torch/fewshot seeds.

    Returns:
        ``{"tasks": {task: {metric: value, metric + "_stderr": value}}, "lm_eval_version", "model_dir", ...}``
        with metric names stripped of lm-eval's ``",none"`` filter suffix.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ELOError("lm-eval is not installed: pip install 'elo-lightning[eval]' (lm-eval>=0.4.5)") from err
    if not Path(model_dir).is_dir():
        raise ELOError(f"model directory not found: {model_dir}")
    if not tasks:
        raise ELOError("no lm-eval tasks given")
    with tempfile.TemporaryDirectory(prefix="elo_lm_eval_") as tmp:
        task_dir = str(resolve_local_tasks(include_path, tmp)) if include_path else None
        manager = None
        if task_dir:  # local-only runs skip indexing lm-eval's ~14k built-in task YAMLs (tens of seconds)
            local = TaskManager(include_path=task_dir, include_defaults=False)
            if all(t in local.all_tasks for t in tasks):
                manager = local
        if manager is None:
            manager = TaskManager(include_path=task_dir) if task_dir else TaskManager()
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ELOError(f"unknown lm-eval tasks {unknown}; check names or include_path")
        model_args = f"pretrained={Path(model_dir).resolve()},dtype={dtype}"
        raw = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=list(tasks),
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
    per_task: dict[str, dict[str, float]] = {}
    for task, metrics in raw.get("results", {}).items():
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            name, _, filt = key.partition(",")
            clean[name if filt in ("", "none") else f"{name}[{filt}]"] = float(value)
        per_task[task] = clean
    summary = {
        "model_dir": str(model_dir),
        "tasks": per_task,
        "n_samples": raw.get("n-samples", {}),
        "lm_eval_version": getattr(lm_eval, "__version__", None) or _dist_version("lm_eval"),
        "model_args": model_args,
        "limit": limit,
        "num_fewshot": num_fewshot,
    }
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return summary


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return None
