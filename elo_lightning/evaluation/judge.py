"""LLM-as-judge (MT-Bench / LogicKor style): generate answers, then score them with a judge model.

Questions file (JSON lines): ``{"question_id": 1, "category": "reasoning", "turns": ["first", "follow-up"]}``
(LogicKor and MT-Bench question files have this layout; optional ``"reference": [...]`` answers are shown to
the judge).

1. :func:`generate_answers` runs the model with its chat template, turn by turn (each follow-up sees the earlier
   answers), greedy decoding, and writes ``{"question_id", "category", "turns", "answers": [...], "model"}`` lines.
2. :func:`judge_answers` sends each answer (the whole multi-turn dialogue, the last turn graded) to an
   OpenAI-compatible ``POST {judge_url}/v1/chat/completions`` with urllib (no extra dependency), parses the score
   (``[[7]]``, ``[[7.5]]``, ``Rating: 7``, ``Score: 7/10``), retries HTTP 5xx / 429 / connection errors a bounded
   number of times with backoff, and records per answer ``{"score": float | None, "judgment": raw text,
   "error": str | None}``. Malformed judgments get ``score: null`` with the raw text kept; failed requests get
   ``score: null`` and ``error``. Returns (and writes next to the output as ``*.summary.json``) the mean score per
   category and overall, over scored items only, with counts of errors and unparsable judgments.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError

JUDGE_SYSTEM_PROMPT = (
    "You are a helpful and strict assistant who evaluates the quality of AI answers. "
    "Consider helpfulness, correctness, depth, and, for non-English questions, whether the answer is in the "
    "same language as the question. Explain briefly, then give a rating from 1 to 10 strictly in the format "
    '"[[rating]]", for example "Rating: [[5]]".'
)

_SCORE_PATTERNS = (
    re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"(?:rating|score|점수|평점)\s*\**\s*[:：]?\s*\**\s*(\d+(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE),
)


def parse_score(text: str, low: float = 0.0, high: float = 10.0) -> float | None:
    """The judge's score: ``[[7]]`` first, else ``Rating: 7`` / ``Score: 7/10``; ``None`` if absent or out of range."""
    if not isinstance(text, str):
        return None
    for pattern in _SCORE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])
            return value if low <= value <= high else None
    return None


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ELOError(f"file not found: {p}")
    rows = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ELOError(f"{p}:{n}: invalid JSON ({err})") from None
    return rows


def _write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_questions(questions_file: str | Path) -> list[dict[str, Any]]:
    questions = _read_jsonl(questions_file)
    for q in questions:
        if "question_id" not in q or not isinstance(q.get("turns"), list) or not q["turns"]:
            raise ELOError(f"{questions_file}: each question needs question_id and a non-empty turns list: {q}")
        q.setdefault("category", "general")
    return questions


# --------------------------------------------------------------------------------------------------- generation


def generate_answers(
    model_dir: str,
    questions_file: str,
    output_file: str,
    max_new_tokens: int = 512,
    system_prompt: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Greedy multi-turn answers of ``model_dir`` to every question; written to ``output_file`` (JSON lines)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    questions = load_questions(questions_file)[:limit]
    if not Path(model_dir).is_dir():
        raise ELOError(f"model directory not found: {model_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if getattr(tokenizer, "chat_template", None) is None:
        from elo_lightning.data.sft import FALLBACK_CHAT_TEMPLATE

        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    stop_ids = [i for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")} if isinstance(i, int) and i >= 0]
    unk = tokenizer.unk_token_id
    stop_ids = [i for i in stop_ids if i != unk] or None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for q in questions:
        messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        answers = []
        for turn in q["turns"]:
            messages.append({"role": "user", "content": turn})
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(device)
            with torch.no_grad():
                out = model.generate(
                    **ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id
                )
            answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            answers.append(answer)
            messages.append({"role": "assistant", "content": answer})
        rows.append({"question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
                     "answers": answers, "model": str(model_dir), **({"reference": q["reference"]} if "reference" in q else {})})
    _write_jsonl(output_file, rows)
    return rows


# --------------------------------------------------------------------------------------------------- judging


def build_judge_messages(item: dict[str, Any]) -> list[dict[str, str]]:
    turns, answers = item["turns"], item["answers"]
    dialogue = []
    for k, (question, answer) in enumerate(zip(turns, answers), 1):
        dialogue.append(f"### User (turn {k}):\n{question}\n\n### Assistant (turn {k}):\n{answer}")
    ref = item.get("reference")
    ref_text = ""
    if ref:
        ref_text = "\n\n[Reference answer]\n" + "\n---\n".join(str(r) for r in (ref if isinstance(ref, list) else [ref]))
    user = (
        f"[Category] {item.get('category', 'general')}\n\n[Dialogue]\n" + "\n\n".join(dialogue) + ref_text
        + f"\n\nRate the assistant's answer to turn {len(answers)} (taking earlier turns into account)."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


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


def judge_answers(
    answers_file: str,
    judge_url: str,
    judge_model: str,
    api_key: str | None,
    output_file: str,
    timeout: float = 60.0,
    max_retries: int = 3,
    backoff: float = 1.0,
    temperature: float = 0.0,
    max_tokens: int = 1024,
) -> dict[str, Any]:
    """Score every answer with an OpenAI-compatible judge; write per-item judgments and return the summary.

    Args:
        answers_file: output of :func:`generate_answers`.
        judge_url: server base URL (``http://host:8000``, ``.../v1`` or the full ``.../v1/chat/completions``).
        judge_model: the ``model`` field of the request (e.g. ``gpt-4o``, a vLLM-served judge).
        api_key: bearer token (``None``: no Authorization header).
        output_file: JSON lines with ``score`` (float or null), ``judgment`` (raw text) and ``error``.
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt for HTTP 5xx/429 and connection errors (4xx fail at once).
        backoff: seconds before the first retry, doubled each time.

    Returns:
        ``{"overall": mean | None, "by_category": {cat: {"mean", "n_scored", "n"}}, "n", "n_scored",
        "n_errors", "n_unparsed"}``.
    """
    items = _read_jsonl(answers_file)
    url = _endpoint(judge_url)
    judged = []
    for item in items:
        payload = {"model": judge_model, "messages": build_judge_messages(item), "temperature": temperature,
                   "max_tokens": max_tokens}
        record = {"question_id": item.get("question_id"), "category": item.get("category", "general"),
                  "score": None, "judgment": None, "error": None, "attempts": 0}
        for attempt in range(max_retries + 1):
            record["attempts"] = attempt + 1
            try:
                response = _post_chat(url, payload, api_key, timeout)
                text = response["choices"][0]["message"]["content"]
                record["judgment"] = text
                record["score"] = parse_score(text)
                record["error"] = None
                break
            except urllib.error.HTTPError as err:
                record["error"] = f"HTTP {err.code}: {err.reason}"
                if not (err.code >= 500 or err.code == 429):
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                record["error"] = f"connection error: {getattr(err, 'reason', err)}"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
                record["error"] = f"malformed response: {err!r}"
                break
            if attempt < max_retries:
                time.sleep(backoff * (2**attempt))
        judged.append(record)
    _write_jsonl(output_file, judged)
    summary = summarize_judgments(judged)
    summary.update({"judge_model": judge_model, "judge_url": url, "answers_file": str(answers_file)})
    Path(str(output_file) + ".summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def summarize_judgments(judged: list[dict[str, Any]]) -> dict[str, Any]:
    by_cat: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, int] = defaultdict(int)
    for r in judged:
        totals[r["category"]] += 1
        if r["score"] is not None:
            by_cat[r["category"]].append(float(r["score"]))
    scores = [s for v in by_cat.values() for s in v]
    return {
        "overall": sum(scores) / len(scores) if scores else None,
        "by_category": {
            cat: {"mean": (sum(by_cat[cat]) / len(by_cat[cat])) if by_cat[cat] else None,
                  "n_scored": len(by_cat[cat]), "n": totals[cat]}
            for cat in sorted(totals)
        },
        "n": len(judged),
        "n_scored": len(scores),
        "n_errors": sum(1 for r in judged if r["error"]),
        "n_unparsed": sum(1 for r in judged if r["error"] is None and r["score"] is None),
    }
