"""LLM-as-judge benchmarks (MT-Bench, LogicKor): ``elo judge generate`` and ``elo judge score``.

The protocols (question formats, prompts, rating parsing, aggregates) are in
:mod:`elo_lightning.evaluation.judge_protocols`; the settings in ``configs/judge/{mt_bench,logickor}.yaml``
(``--benchmark`` takes ``mt_bench``, ``logickor`` or such a YAML; without it the format is detected and the
benchmark's own defaults are used).

1. :func:`generate_answers` answers every turn of every question with the exported model (transformers, the
   tokenizer's chat template; turn 2 sees turn 1's question and answer), temperature and max new tokens per
   category; generation stops at any of the generation config's EOS ids, the tokenizer's EOS, the chat template's
   end-of-turn token and the configured stop tokens. Answers are written in the benchmark's own answer format,
   atomically after every question; a rerun skips questions already answered (same model only).
2. :func:`judge_answers` asks an OpenAI-compatible ``POST {judge_url}/v1/chat/completions`` (urllib; retries HTTP
   5xx/429 and connection errors with backoff) for one judgment per turn, parses the rating as the benchmark does
   (re-asking ``judge.unparsed_retries`` times), and writes one row per (question, turn) plus a summary JSON with
   the benchmark's aggregates per category and overall. Failed judgments (HTTP errors, no parsable rating) are
   counted and left out of the means, never scored 0. A rerun keeps the successful judgments of the same judge.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError
from elo_lightning.evaluation.judge_protocols import (
    BenchmarkConfig,
    GenerationSettings,
    JudgeRequest,
    Question,
    aggregate,
    answer_record,
    apply_reference_file,
    build_requests,
    check_references,
    default_config,
    detect_format,
    load_benchmark_config,
    load_judge_prompts,
    load_questions,
    parse_rating,
    read_answer,
    read_jsonl,
    summary_table,
)
from elo_lightning.io import write_json_atomic, write_jsonl_atomic


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_config(benchmark: str | None, detected: str) -> BenchmarkConfig:
    """The benchmark config: the given name/YAML (checked against the file's format) or the detected default."""
    if benchmark is None:
        return default_config(detected)
    config = load_benchmark_config(benchmark)
    if config.benchmark != detected:
        raise ELOError(f"the file is in {detected} format but the benchmark config is {config.benchmark}")
    return config


# --------------------------------------------------------------------------------------------------- generation


def conversation(settings: GenerationSettings, turns: list[str], answers: list[str]) -> list[dict[str, str]]:
    """The chat messages for the next turn: prefix, every earlier question with its answer, the next question."""
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages += [dict(m) for m in settings.prefix_messages]
    for k, question in enumerate(turns[: len(answers) + 1]):
        messages.append({"role": "user", "content": question})
        if k < len(answers):
            messages.append({"role": "assistant", "content": answers[k]})
    return messages


def stop_token_ids(tokenizer: Any, generation_eos: int | list[int] | None, stop_tokens: list[str]) -> list[int]:
    """Every id that ends a turn: the generation config's EOS ids (one or several), the tokenizer's EOS, the chat
    template's end-of-turn token and the configured stop tokens the vocabulary has."""
    from elo_lightning.data.sft import ChatEncoder

    ids: list[int] = []
    for value in (generation_eos, tokenizer.eos_token_id):
        ids += value if isinstance(value, list) else ([] if value is None else [value])
    vocab = tokenizer.get_vocab()
    end_marker = ChatEncoder(tokenizer, seq_len=2).end_marker
    for token in [*([end_marker] if end_marker else []), *stop_tokens]:
        if token in vocab:
            ids.append(vocab[token])
    return sorted({int(i) for i in ids})


def _generate_turn(model: Any, tokenizer: Any, messages: list[dict[str, str]], temperature: float,
                   max_new_tokens: int, stop_ids: list[int], pad_id: int) -> tuple[str, int, str]:
    """One answer: ``(text, new tokens, "stop" | "length")``; greedy below temperature 1e-4 (FastChat)."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(model.device)
    sampling = {"do_sample": True, "temperature": temperature} if temperature >= 1e-4 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(**inputs, **sampling, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                             pad_token_id=pad_id)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] in stop_ids
    if stopped:
        new = new[:-1]
    return tokenizer.decode(new, skip_special_tokens=True).strip(), len(new) + int(stopped), (
        "stop" if stopped else "length")


def _resume_rows(output_file: str, benchmark: str, model_id: str, questions: list[Question]) -> dict[Any, dict]:
    """Complete answer rows of the same model already in ``output_file`` (refuses another model's file)."""
    if not Path(output_file).exists():
        return {}
    turns = {q.id: len(q.turns) for q in questions}
    kept = {}
    for n, row in enumerate(read_jsonl(output_file), 1):
        where = f"{output_file}:{n}"
        qid, answers = read_answer(benchmark, row, where)
        if row.get("model_id") != model_id:
            raise ELOError(f"{where}: answers of model {row.get('model_id')!r}, not {model_id!r}; "
                           "choose another output_file")
        if turns.get(qid) == len(answers):
            kept[qid] = row
    return kept


def generate_answers(
    model_dir: str,
    questions_file: str,
    output_file: str,
    benchmark: str | None = None,
    max_new_tokens: int | None = None,
    model_id: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    limit: int | None = None,
) -> dict[str, Any]:
    """Answer every turn of an MT-Bench or LogicKor question file with an exported model (resumable).

    Args:
        model_dir: HF model directory with tokenizer and chat template (any stage's export).
        questions_file: MT-Bench ``question.jsonl`` or LogicKor ``questions.jsonl`` (format detected).
        output_file: answers JSON lines in the benchmark's answer format; an existing file of the same model is
            resumed (questions already answered are skipped).
        benchmark: ``mt_bench``, ``logickor`` or a YAML like ``configs/judge/mt_bench.yaml`` (default: the
            detected benchmark's own settings).
        max_new_tokens: override every category's new-token limit.
        model_id: the name recorded in the answers (default: the model directory's absolute path).
        device: ``cpu``, ``cuda``, ``cuda:0``...
        dtype: ``auto`` (default: the checkpoint's own, e.g. bf16 for a bf16 export), float32, bfloat16 or float16.
        limit: answer only the first ``limit`` questions.

    Returns:
        ``{"output_file", "benchmark", "n_questions", "n_answered", "n_resumed"}``.
    """
    detected, questions = load_questions(questions_file)
    config = resolve_config(benchmark, detected)
    settings = config.generation
    if max_new_tokens is not None:
        settings.max_new_tokens, settings.max_new_tokens_by_category = max_new_tokens, {}
    questions = questions[:limit] if limit is not None else questions
    if not Path(model_dir).is_dir():
        raise ELOError(f"model directory not found: {model_dir}")
    from elo_lightning.models import resolve_dtype

    torch_dtype = resolve_dtype(dtype, model_dir)  # an unknown name is a one-line error before any loading
    model_id = model_id or str(Path(model_dir).resolve())
    done = _resume_rows(output_file, config.benchmark, model_id, questions)
    todo = [q for q in questions if q.id not in done]
    _log(f"{config.benchmark}: {len(questions)} questions, {len(done)} already answered in {output_file}")
    ignored = [q.id for q in questions if q.ignored_turns]
    if ignored:
        _log(f"{config.benchmark}: questions {ignored} have more than two turns; only the first two are used")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ELOError(f"{model_dir}: the tokenizer has no chat template (tokenizer_config.json/chat_template.jinja)")
    try:
        generation_eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        generation_eos = None
    stop_ids = stop_token_ids(tokenizer, generation_eos, settings.stop_tokens)
    if not stop_ids:
        raise ELOError(f"{model_dir}: no EOS/end-of-turn token id to stop generation at")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()

    rows = dict(done)
    order = {q.id: i for i, q in enumerate(questions)}
    for i, q in enumerate(todo, 1):
        torch.manual_seed(settings.seed)
        temperature, budget = settings.temperature_for(q.category), settings.max_new_tokens_for(q.category)
        answers, n_new, finish = [], [], []
        for _ in q.turns:
            text, n, why = _generate_turn(model, tokenizer, conversation(settings, q.turns, answers), temperature,
                                          budget, stop_ids, pad_id)
            answers.append(text)
            n_new.append(n)
            finish.append(why)
        extra = {"generation": {"temperature": temperature, "max_new_tokens": budget, "new_tokens": n_new,
                                "finish": finish, "tstamp": time.time()}}
        if config.benchmark == "mt_bench" and any(q.references):
            extra["reference"] = q.references
        rows[q.id] = answer_record(config.benchmark, q, answers, model_id, extra)
        write_jsonl_atomic(output_file, sorted(rows.values(), key=lambda r: order.get(_row_id(r), len(order))))
        _log(f"[{i}/{len(todo)}] {q.id} ({q.category}, T={temperature}): new tokens {n_new}, {finish}")
    print(f"{config.benchmark}: {len(rows)} of {len(questions)} questions answered -> {output_file}")
    return {"output_file": str(output_file), "benchmark": config.benchmark, "n_questions": len(questions),
            "n_answered": len(todo), "n_resumed": len(done)}


def _row_id(row: dict[str, Any]) -> Any:
    return row["question_id"] if "question_id" in row else row["id"]


# --------------------------------------------------------------------------------------------------- judge client


def _post_chat(url: str, payload: dict[str, Any], api_key: str | None, timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def _endpoint(judge_url: str) -> str:
    url = judge_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + "/chat/completions"


def chat_completion(url: str, payload: dict[str, Any], api_key: str | None, timeout: float, max_retries: int,
                    backoff: float) -> tuple[str | None, str | None, int]:
    """``(text, error, attempts)``: retries HTTP 5xx/429 and connection errors (other 4xx fail at once)."""
    error = None
    for attempt in range(max_retries + 1):
        try:
            response = _post_chat(url, payload, api_key, timeout)
            return response["choices"][0]["message"]["content"], None, attempt + 1
        except urllib.error.HTTPError as err:
            error = f"HTTP {err.code}: {err.reason}"
            if not (err.code >= 500 or err.code == 429):
                return None, error, attempt + 1
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            error = f"connection error: {getattr(err, 'reason', err)}"
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
            return None, f"malformed response: {err!r}", attempt + 1
        if attempt < max_retries:
            time.sleep(backoff * (2**attempt))
    return None, error, max_retries + 1


# --------------------------------------------------------------------------------------------------- judging


def _questions_from_answers(benchmark: str, rows: list[dict[str, Any]], answers_file: str) -> list[Question]:
    questions = []
    for n, row in enumerate(rows, 1):
        qid, _ = read_answer(benchmark, row, f"{answers_file}:{n}")
        turns = row.get("turns") if benchmark == "mt_bench" else row.get("questions")
        refs = row.get("reference") if benchmark == "mt_bench" else row.get("references")
        if not isinstance(turns, list) or not isinstance(row.get("category"), str):
            raise ELOError(f"{answers_file}:{n}: the row has no category/questions; pass questions_file")
        refs = list(refs or [])
        questions.append(Question(qid, row["category"], turns, [refs[k] if k < len(refs) else None
                                                                for k in range(len(turns))]))
    return questions


def _answer_format(row: dict[str, Any], answers_file: str) -> str:
    if "question_id" in row and "choices" in row:
        return "mt_bench"
    if "id" in row and "outputs" in row:
        return "logickor"
    raise ELOError(f"{answers_file}: rows are neither MT-Bench answers (question_id, choices) nor LogicKor "
                   "answers (id, outputs)")


def judge_answers(
    answers_file: str,
    judge_url: str,
    output_file: str,
    judge_model: str | None = None,
    api_key: str | None = None,
    benchmark: str | None = None,
    questions_file: str | None = None,
    summary_file: str | None = None,
    timeout: float = 120.0,
    max_retries: int = 3,
    backoff: float = 1.0,
    parallel: int = 1,
    limit: int | None = None,
) -> dict[str, Any]:
    """Judge every turn of every answer as the benchmark does; write judgments and the benchmark's aggregates.

    Args:
        answers_file: output of ``elo judge generate`` (or FastChat/LogicKor answer files with questions_file).
        judge_url: OpenAI-compatible server (``http://host:8000``, ``.../v1`` or ``.../v1/chat/completions``).
        output_file: judgments, one JSON line per (question, turn): ``score`` (float or null), ``judgment``,
            ``user_prompt``, ``prompt_name``, ``error``. A rerun keeps the scored rows of the same judge model.
        judge_model: the request's ``model`` (default: the benchmark config's ``judge.model``).
        api_key: bearer token (default: the ``judge.api_key_env`` environment variable; none: no header).
        benchmark: ``mt_bench``, ``logickor`` or a YAML like ``configs/judge/logickor.yaml`` (prompt files,
            reference settings); default: the detected benchmark's own settings with the project's prompts.
        questions_file: the question file (categories, turns, references); default: taken from the answer rows.
        summary_file: the aggregates JSON (default: ``output_file`` + ``.summary.json``).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt for HTTP 5xx/429 and connection errors.
        backoff: seconds before the first retry, doubled each time.
        parallel: judge requests in flight at once.
        limit: judge only the first ``limit`` answers.

    Returns:
        the summary: MT-Bench ``overall``/``by_category`` ``{"turn_1", "turn_2", "average"}``, LogicKor
        ``{"single", "multi", "total"}``, with ``n_judgments``, ``n_scored``, ``n_failed``, and ``n_errors``,
        ``n_unparsed`` overall.
    """
    rows = read_jsonl(answers_file)
    if not rows:
        raise ELOError(f"{answers_file}: no answers")
    detected = _answer_format(rows[0], answers_file)
    config = resolve_config(benchmark, detected)
    rows = rows[:limit] if limit is not None else rows
    if questions_file:
        _, all_questions = load_questions(questions_file, config.benchmark)
        by_id = {q.id: q for q in all_questions}
    else:
        by_id = {q.id: q for q in _questions_from_answers(config.benchmark, rows, answers_file)}
    if config.judge.reference_file:
        apply_reference_file(list(by_id.values()), config.judge.reference_file)
    prompts = load_judge_prompts(config)
    judge_model = judge_model or config.judge.model
    api_key = api_key or os.environ.get(config.judge.api_key_env) or None
    answered = []
    for n, row in enumerate(rows, 1):
        qid, answers = read_answer(config.benchmark, row, f"{answers_file}:{n}")
        if qid not in by_id:
            raise ELOError(f"{answers_file}:{n}: question {qid!r} is not in {questions_file}")
        answered.append((by_id[qid], answers, str(row.get("model_id", ""))))
    check_references(config, [q for q, _, _ in answered])
    requests = [(r, m) for q, answers, m in answered for r in build_requests(config, prompts, q, answers)]

    previous = _resume_judgments(output_file, config.benchmark, judge_model)
    kept, pending = {}, []
    for request, model_id in requests:  # a kept judgment must have seen exactly this prompt
        key = (_key(request.question_id), request.turn)
        old = previous.get(key)
        if old is not None and old.get("user_prompt") == request.user and old.get("model_id") == model_id:
            kept[key] = old
        else:
            pending.append((request, model_id))
    url = _endpoint(judge_url)
    _log(f"{config.benchmark}: {len(requests)} judgments ({len(requests) - len(pending)} kept from {output_file}), "
         f"judge {judge_model} at {url}; prompts: {prompts.source}")

    def ask(item: tuple[JudgeRequest, str]) -> dict[str, Any]:
        request, model_id = item
        payload: dict[str, Any] = {"model": judge_model, "temperature": config.judge.temperature,
                                   "messages": [{"role": "system", "content": request.system},
                                                {"role": "user", "content": request.user}]}
        if config.judge.max_tokens is not None:
            payload["max_tokens"] = config.judge.max_tokens
        score, text, error, attempts = None, None, None, 0
        for _ in range(config.judge.unparsed_retries + 1):
            text, error, n = chat_completion(url, payload, api_key, timeout, max_retries, backoff)
            attempts += n
            score = parse_rating(config.benchmark, text)
            if error or score is not None:
                break
        return {"benchmark": config.benchmark, "question_id": request.question_id, "category": request.category,
                "turn": request.turn, "model_id": model_id, "judge_model": judge_model,
                "prompt_name": request.prompt_name, "score": score, "judgment": text, "error": error,
                "attempts": attempts, "user_prompt": request.user, "tstamp": time.time()}

    results = dict(kept)
    order = {(_key(r.question_id), r.turn): i for i, (r, _) in enumerate(requests)}

    def save() -> None:
        write_jsonl_atomic(output_file, sorted((results[k] for k in order if k in results), key=lambda r: order[
            (_key(r["question_id"]), r["turn"])]))

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(ask, item) for item in pending]
        for i, future in enumerate(as_completed(futures), 1):
            row = future.result()
            results[(_key(row["question_id"]), row["turn"])] = row
            if i % 10 == 0:
                save()
            status = row["error"] or ("unparsed" if row["score"] is None else row["score"])
            _log(f"[{i}/{len(pending)}] {row['question_id']} turn {row['turn']}: {status}")
    save()
    judged = [results[k] for k in order if k in results]
    summary = aggregate(config.benchmark, judged)
    summary.update({"judge_model": judge_model, "judge_url": url, "answers_file": str(answers_file),
                    "judge_prompts": prompts.source, "judge_settings": asdict(config.judge),
                    "models": sorted({r["model_id"] for r in judged})})
    summary["table"] = summary_table(summary)
    summary_file = summary_file or str(output_file) + ".summary.json"
    summary["figure"] = plot_summary(summary, str(Path(summary_file).with_suffix(".png")))
    write_json_atomic(summary_file, summary)
    print(summary["table"])
    return summary


def _latin_label(name: str) -> str:
    """``추론(Reasoning)`` -> ``Reasoning``: the default matplotlib font has no Hangul."""
    match = re.search(r"\(([^()]*)\)\s*$", name)
    return match.group(1) if match and not name.isascii() else name


def plot_summary(summary: dict[str, Any], path: str) -> str:
    """Bars per category and overall: Turn 1 / Turn 2 (MT-Bench) or Single / Multi (LogicKor), the combined
    score as a marker; written atomically. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mt = summary["benchmark"] == "mt_bench"
    keys, labels = (("turn_1", "turn_2", "average"), ("Turn 1", "Turn 2", "Average")) if mt else (
        ("single", "multi", "total"), ("Single turn", "Multi turn", "Total"))
    blocks = [*summary["by_category"].items(), ("Overall", summary["overall"])]
    x = list(range(len(blocks)))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(blocks) + 2), 4))
    for offset, key, label in ((-0.2, keys[0], labels[0]), (0.2, keys[1], labels[1])):
        ax.bar([i + offset for i in x], [b[key] or 0.0 for _, b in blocks], 0.4, label=label)
    ax.scatter(x, [b[keys[2]] if b[keys[2]] is not None else float("nan") for _, b in blocks], color="black",
               marker="D", zorder=3, label=labels[2])
    ax.set_xticks(x, [_latin_label(name) for name, _ in blocks], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 10)
    ax.set_ylabel("judge score (0-10)")
    ax.set_title(f"{summary['benchmark']} judged by {summary.get('judge_model', '?')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, target)
    return str(target)


def _key(qid: Any) -> str:
    return json.dumps(qid)


def _resume_judgments(output_file: str, benchmark: str, judge_model: str) -> dict[tuple[str, int], dict]:
    """Scored rows of the same benchmark and judge already in ``output_file`` (failed ones are asked again)."""
    if not Path(output_file).exists():
        return {}
    kept = {}
    for n, row in enumerate(read_jsonl(output_file), 1):
        if row.get("benchmark") != benchmark or "turn" not in row or "question_id" not in row:
            raise ELOError(f"{output_file}:{n}: not a {benchmark} judgment row of elo judge score; "
                           "choose another output_file")
        if row.get("judge_model") == judge_model and row.get("score") is not None:
            kept[(_key(row["question_id"]), int(row["turn"]))] = row
    return kept


__all__ = ["chat_completion", "conversation", "detect_format", "generate_answers", "judge_answers",
           "parse_rating", "stop_token_ids"]
