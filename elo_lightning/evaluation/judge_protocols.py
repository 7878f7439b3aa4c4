"""MT-Bench and LogicKor as the benchmarks define them: question files, judge prompts, rating parsing, aggregates.

Pure functions and data (no torch, no network); :mod:`elo_lightning.evaluation.judge` generates and calls the judge.

**MT-Bench** (lm-sys/FastChat ``fastchat/llm_judge``): ``question.jsonl`` rows ``{"question_id", "category",
"turns": [q1, q2], "reference": [r1, r2]?}``. Single-answer grading, one judgment per turn: turn 1 with the
``single-v1`` prompt, turn 2 with ``single-v1-multi-turn`` (the whole dialogue, grading the second answer); for the
reference categories (``math``, ``reasoning``, ``coding`` = FastChat's ``NEED_REF_CATS``) the reference-guided
``single-math-v1`` / ``single-math-v1-multi-turn`` with ``ref_answer_1`` (and ``ref_answer_2``). The prompts are
read from the user's copy of FastChat's ``data/judge_prompts.jsonl`` (``judge.prompt_file``); references from
the question's ``reference`` field or FastChat's ``reference_answer/gpt-4.jsonl`` (``judge.reference_file``).
Rating: the first ``[[x]]``, else the first ``[x]`` (FastChat's ``one_score_pattern`` and its backup).
Aggregates (FastChat ``show_result.py``): mean of turn-1 scores, of turn-2 scores, and the average of all scores,
overall and per category; failed judgments (FastChat's ``-1``) are left out and counted.

**LogicKor** (instructkr/LogicKor): ``questions.jsonl`` rows ``{"id", "category", "questions": [q1, q2],
"references": [r1 | null, r2 | null]}`` (only the first two questions are used, as LogicKor does);
categories 추론(Reasoning), 수학(Math), 글쓰기(Writing), 코딩(Coding),
이해(Understanding), 문법(Grammar). Two judgments per question (``evaluator.py``): *single* (question 1, its
reference, answer 1) with the ``single_turn`` system prompt and *multi* (that plus the follow-up question, its
reference and answer 2) with ``multi_turn``; the system prompts are read from the user's copy of LogicKor's
``templates.py`` (``JUDGE_TEMPLATE``; parsed, never executed), the user prompt's first sentence optionally from its
``evaluator.py``. Rating: ``점수: x`` after removing ``*`` (0-10). Aggregates (``score.py``): per category and
overall the mean Single turn and Multi turn score, and Total = (Single + Multi) / 2.

Deviation from both (documented in docs/evaluation.md): a judgment that cannot be parsed after the configured
re-asks is a *failure*, counted and left out of the means (FastChat also drops its ``-1``; LogicKor would score
it 0). Without prompt files the project's own short prompts are used (same placeholders and output format, not
the benchmarks' wording); the summary records which prompts were used.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError

BENCHMARKS = ("mt_bench", "logickor")

# ----------------------------------------------------------------------------------------------- settings


@dataclass
class GenerationSettings:
    """How the evaluated model answers (``elo judge generate``).

    Args:
        max_new_tokens: new tokens per turn (MT-Bench: FastChat ``--max-new-token`` 1024; LogicKor: vLLM
            ``max_tokens`` = ``--model_len`` 4096).
        max_new_tokens_by_category: per-category override.
        temperature: for categories not in ``temperature_by_category`` (FastChat: 0.7).
        temperature_by_category: sampling temperature per category; below 1e-4 means greedy (FastChat).
        system_prompt: optional system message before the conversation (both benchmarks: none).
        prefix_messages: chat messages before the questions (LogicKor's ``1-shot``/``cot-1-shot`` strategies;
            its ``default`` strategy, the leaderboard's, has none).
        stop_tokens: extra end-of-turn tokens that stop generation when the tokenizer has them (besides the
            generation config's and tokenizer's EOS ids).
        seed: torch seed set before every question (sampling is reproducible and independent of resuming).
    """

    max_new_tokens: int = 1024
    max_new_tokens_by_category: dict[str, int] = field(default_factory=dict)
    temperature: float = 0.7
    temperature_by_category: dict[str, float] = field(default_factory=dict)
    system_prompt: str | None = None
    prefix_messages: list[dict[str, str]] = field(default_factory=list)
    stop_tokens: list[str] = field(default_factory=list)
    seed: int = 0

    def temperature_for(self, category: str) -> float:
        return float(self.temperature_by_category.get(category, self.temperature))

    def max_new_tokens_for(self, category: str) -> int:
        return int(self.max_new_tokens_by_category.get(category, self.max_new_tokens))


@dataclass
class JudgeSettings:
    """How answers are judged (``elo judge score``).

    Args:
        model: the judge model name sent to the API (MT-Bench: ``gpt-4``; LogicKor: ``gpt-4-1106-preview``).
        temperature: judge sampling temperature (both: 0).
        max_tokens: judge completion limit (FastChat: 2048 for OpenAI judges; LogicKor: none = null).
        prompt_file: the benchmark's own prompt file (FastChat ``data/judge_prompts.jsonl``; LogicKor
            ``templates.py``, or a JSON/YAML with ``single_turn``/``multi_turn``); null = project default prompts.
        evaluator_file: LogicKor only: its ``evaluator.py``, read for the user prompt's first sentence.
        reference_file: MT-Bench only: FastChat ``data/mt_bench/reference_answer/gpt-4.jsonl`` (else the
            questions' ``reference`` field).
        reference_categories: MT-Bench: categories judged reference-guided (FastChat ``NEED_REF_CATS``);
            LogicKor ignores it (a question's non-null references are always shown).
        unparsed_retries: re-asks when the judgment has no rating (FastChat 0; LogicKor 4).
        api_key_env: environment variable with the API key when none is given.
    """

    model: str = "gpt-4"
    temperature: float = 0.0
    max_tokens: int | None = 2048
    prompt_file: str | None = None
    evaluator_file: str | None = None
    reference_file: str | None = None
    reference_categories: list[str] = field(default_factory=list)
    unparsed_retries: int = 0
    api_key_env: str = "OPENAI_API_KEY"


@dataclass
class BenchmarkConfig:
    """One benchmark's protocol: ``configs/judge/mt_bench.yaml`` and ``configs/judge/logickor.yaml``."""

    benchmark: str = "mt_bench"
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)


def default_config(benchmark: str) -> BenchmarkConfig:
    """The benchmark's own defaults (FastChat ``common.py``/``gen_model_answer.py``; LogicKor ``generator.py``)."""
    if benchmark == "mt_bench":
        return BenchmarkConfig(
            "mt_bench",
            GenerationSettings(
                max_new_tokens=1024,
                temperature=0.7,
                temperature_by_category={"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0,
                                         "coding": 0.0, "reasoning": 0.0, "stem": 0.1, "humanities": 0.1},
            ),
            JudgeSettings(model="gpt-4", temperature=0.0, max_tokens=2048,
                          reference_categories=["math", "reasoning", "coding"], unparsed_retries=0),
        )
    if benchmark == "logickor":
        return BenchmarkConfig(
            "logickor",
            GenerationSettings(
                max_new_tokens=4096,
                temperature=0.0,
                stop_tokens=["<|endoftext|>", "[INST]", "[/INST]", "<|im_end|>", "<|end|>", "<|eot_id|>",
                             "<end_of_turn>", "<eos>"],
            ),
            JudgeSettings(model="gpt-4-1106-preview", temperature=0.0, max_tokens=None, unparsed_retries=4),
        )
    raise ELOError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)} or a YAML file")


def _merge(obj: Any, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ELOError(f"{where}: unknown key {key!r} (known: {', '.join(known)})")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ELOError(f"{where}: {key} must be a mapping")
            _merge(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, value)
    return obj


def load_benchmark_config(benchmark: str) -> BenchmarkConfig:
    """``mt_bench``/``logickor`` (built-in defaults) or a YAML file whose keys override its benchmark's defaults.

    Relative file paths in the YAML (``prompt_file``, ...) are resolved against the YAML's directory.
    """
    if benchmark in BENCHMARKS:
        return default_config(benchmark)
    path = Path(benchmark)
    if not path.is_file():
        raise ELOError(f"benchmark {benchmark!r} is neither {' nor '.join(BENCHMARKS)} nor a YAML file")
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ELOError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict) or values.get("benchmark") not in BENCHMARKS:
        raise ELOError(f"{path}: needs 'benchmark: {' | '.join(BENCHMARKS)}'")
    config = _merge(default_config(values["benchmark"]), values, str(path))
    for key in ("prompt_file", "evaluator_file", "reference_file"):
        value = getattr(config.judge, key)
        if value and not Path(value).is_absolute():
            setattr(config.judge, key, str((path.parent / value).resolve()))
    return config


# ----------------------------------------------------------------------------------------------- questions


@dataclass
class Question:
    """A benchmark question in either format: ``references`` is aligned with ``turns`` (``None`` = no reference)."""

    id: Any
    category: str
    turns: list[str]
    references: list[str | None]
    ignored_turns: list[str] = field(default_factory=list)


def detect_format(row: dict[str, Any]) -> str:
    if "question_id" in row and "turns" in row:
        return "mt_bench"
    if "id" in row and "questions" in row:
        return "logickor"
    raise ELOError(
        "unrecognised question row (MT-Bench has question_id/category/turns, LogicKor id/category/questions/"
        f"references): keys {sorted(row)}"
    )


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ELOError(f"file not found: {p}")
    rows = []
    with open(p, encoding="utf-8-sig") as fh:  # LogicKor writes utf-8-sig
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ELOError(f"{p}:{n}: invalid JSON ({err})") from None
                if not isinstance(row, dict):
                    raise ELOError(f"{p}:{n}: expected a JSON object per line")
                rows.append(row)
    return rows


def _str_list(value: Any, where: str, allow_none: bool = False) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, str) or (allow_none and v is None) for v in value):
        raise ELOError(f"{where}: expected a list of strings{' or nulls' if allow_none else ''}, got {value!r}")
    return value


def load_questions(path: str | Path, benchmark: str | None = None) -> tuple[str, list[Question]]:
    """Read an MT-Bench or LogicKor question file; the format is detected from the first row unless given."""
    rows = read_jsonl(path)
    if not rows:
        raise ELOError(f"{path}: no questions")
    found = detect_format(rows[0])
    if benchmark and benchmark != found:
        raise ELOError(f"{path}: looks like a {found} question file, but the benchmark is {benchmark}")
    questions, seen = [], set()
    for n, row in enumerate(rows, 1):
        where = f"{path}:{n}"
        if detect_format(row) != found:
            raise ELOError(f"{where}: mixes question formats")
        if found == "mt_bench":
            qid, turns = row["question_id"], _str_list(row["turns"], where)
            refs = _str_list(row.get("reference") or [], where, allow_none=True)
        else:
            qid, turns = row["id"], _str_list(row["questions"], where)
            refs = _str_list(row.get("references") or [], where, allow_none=True)
        ignored: list[str] = []
        if found == "logickor":  # generator.py/evaluator.py use questions[0] and [1] only (the file has an id
            if len(turns) < 2:  # with a third, near-duplicate question)
                raise ELOError(f"{where}: LogicKor questions have two turns, got {len(turns)}")
            turns, ignored = turns[:2], turns[2:]
        elif not turns or len(turns) > 2:
            raise ELOError(f"{where}: MT-Bench questions have one or two turns, got {len(turns)}")
        if qid in seen:
            raise ELOError(f"{where}: duplicate question id {qid!r}")
        seen.add(qid)
        category = row.get("category")
        if not isinstance(category, str) or not category:
            raise ELOError(f"{where}: missing category")
        references = [refs[k] if k < len(refs) else None for k in range(len(turns))]
        questions.append(Question(qid, category, list(turns), references, list(ignored)))
    return found, questions


def apply_reference_file(questions: list[Question], reference_file: str | Path) -> None:
    """Fill references from a FastChat answer file (``{"question_id", "choices": [{"turns": [...]}]}``)."""
    by_id = {}
    for row in read_jsonl(reference_file):
        try:
            by_id[row["question_id"]] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            raise ELOError(f"{reference_file}: rows need question_id and choices[0].turns") from None
    for q in questions:
        if q.id in by_id:
            refs = by_id[q.id]
            q.references = [refs[k] if k < len(refs) else None for k in range(len(q.turns))]


# ----------------------------------------------------------------------------------------------- answers


def answer_record(benchmark: str, q: Question, answers: list[str], model_id: str, extra: dict[str, Any]) -> dict:
    """One answers-file row in the benchmark's own answer format (so its own judge scripts read it too).

    MT-Bench: FastChat ``model_answer`` rows (``question_id``, ``model_id``, ``choices[0].turns``) plus
    ``category``/``turns``; LogicKor: ``generated/*.jsonl`` rows (``id``, ``category``, ``questions``, ``outputs``,
    ``references``).
    """
    if benchmark == "mt_bench":
        row = {"question_id": q.id, "model_id": model_id, "choices": [{"index": 0, "turns": answers}],
               "category": q.category, "turns": q.turns}
    else:
        row = {"id": q.id, "category": q.category, "questions": q.turns, "outputs": answers,
               "references": q.references, "model_id": model_id}
    row.update(extra)
    return row


def read_answer(benchmark: str, row: dict[str, Any], where: str) -> tuple[Any, list[str]]:
    """``(question id, answers)`` of an answers-file row of either benchmark."""
    try:
        if benchmark == "mt_bench":
            return row["question_id"], _str_list(row["choices"][0]["turns"], where)
        return row["id"], _str_list(row["outputs"], where)
    except (KeyError, IndexError, TypeError):
        want = "question_id and choices[0].turns" if benchmark == "mt_bench" else "id and outputs"
        raise ELOError(f"{where}: not a {benchmark} answer row (needs {want})") from None


# ----------------------------------------------------------------------------------------------- prompts
# Project defaults: short prompts of our own with the benchmarks' placeholders and output formats. For numbers
# comparable with published ones, point judge.prompt_file at the benchmark's own file.

MT_BENCH_PROMPT_NAMES = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")

_MT_RULE = ('Explain briefly, then rate the response from 1 to 10 in exactly this format: "[[rating]]", '
            'e.g. "Rating: [[5]]".')
_MT_DIALOGUE = ("<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
                "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
                "<|The End of Assistant A's Conversation with User|>")
_MT_REF_DIALOGUE = ("<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
                    "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
                    "<|The End of Reference Answer|>\n\n\n")

DEFAULT_MT_BENCH_PROMPTS: dict[str, dict[str, str]] = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nYou are an impartial judge. Judge the AI assistant's response to the user "
                           "question below for helpfulness, relevance, accuracy, depth, creativity and detail. "
                           + _MT_RULE + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
                           "[The End of Assistant's Answer]",
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nYou are an impartial judge. Judge the AI assistant's response to the user "
                           "question below for correctness and helpfulness, comparing it with the reference answer "
                           "and pointing out mistakes. " + _MT_RULE + "\n\n[Question]\n{question}\n\n"
                           "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
                           "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    },
    "single-v1-multi-turn": {
        "system_prompt": "You are an impartial judge. Judge the AI assistant's answer to the second user question "
                         "in the conversation below for helpfulness, relevance, accuracy, depth, creativity and "
                         "detail. " + _MT_RULE + "\n\n",
        "prompt_template": _MT_DIALOGUE,
    },
    "single-math-v1-multi-turn": {
        "system_prompt": "You are an impartial judge. Judge the AI assistant's answer to the second user question "
                         "in the conversation below for correctness and helpfulness, comparing it with the "
                         "reference answers and pointing out mistakes. " + _MT_RULE + "\n\n",
        "prompt_template": _MT_REF_DIALOGUE + _MT_DIALOGUE,
    },
}

_LK_RULES = (
    "# 규칙\n1. 질문의 요구사항을 얼마나 충족했는지 분석한다.\n2. 빠졌거나 부족한 부분을 분석한다.\n"
    "3. 답변 길이는 점수에 영향을 주지 않는다.\n4. Additional Reference가 있으면 참고한다.\n"
    "# 언어\n답변은 한국어여야 한다(질문이 영어 답변을 요구할 때만 예외). 한국어가 아니면 0점이다.\n"
    "# 출력 형식\n평가: 4~5 문장의 평가\n점수: 1~10의 숫자"
)
DEFAULT_LOGICKOR_TEMPLATES: dict[str, str] = {
    "single_turn": "너는 질문에 대한 한국어 언어 모델의 답변을 꼼꼼히 평가한다.\n" + _LK_RULES,
    "multi_turn": "너는 이전 대화에 이어지는 후속 질문에 대한 한국어 언어 모델의 답변을 꼼꼼히 평가한다. "
                  "후속 답변이 이전 대화 맥락과 맞는지도 확인한다.\n" + _LK_RULES,
}
DEFAULT_LOGICKOR_PREAMBLE = (
    "아래 대화의 모델 답변을 평가 기준에 따라 평가하라. "
    "언어 요구사항 준수 여부를 반드시 확인하라.\n\n"
)


@dataclass
class JudgePrompts:
    """The prompts in use and where they came from (recorded in the summary)."""

    benchmark: str
    templates: dict[str, Any]
    source: str
    preamble: str = ""


def _literal_assignment(path: Path, name: str) -> Any:
    """The literal value assigned to ``name`` at the top level of a Python file (parsed, never executed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError as err:
        raise ELOError(f"{path}: not valid Python ({err.msg})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                raise ELOError(f"{path}: {name} is not a literal") from None
    raise ELOError(f"{path}: no top-level {name} = ...")


def _logickor_preamble(evaluator_file: Path) -> str:
    """The constant text before ``**Question**`` in LogicKor ``evaluator.py``'s ``prompt = (f"..." ...)``."""
    try:
        tree = ast.parse(evaluator_file.read_text(encoding="utf-8"))
    except SyntaxError as err:
        raise ELOError(f"{evaluator_file}: not valid Python ({err.msg})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "prompt" for t in node.targets):
            parts = node.value.values if isinstance(node.value, ast.JoinedStr) else [node.value]
            text = "".join(p.value for p in parts if isinstance(p, ast.Constant) and isinstance(p.value, str))
            if "**Question**" in text:
                return text[: text.index("**Question**")]
    raise ELOError(f"{evaluator_file}: no `prompt = f\"...**Question**...\"` assignment found")


def load_judge_prompts(config: BenchmarkConfig) -> JudgePrompts:
    """The judge prompts: the benchmark's own file when ``judge.prompt_file`` is set, else the project default."""
    judge = config.judge
    if config.benchmark == "mt_bench":
        if not judge.prompt_file:
            return JudgePrompts("mt_bench", DEFAULT_MT_BENCH_PROMPTS, "elo-lightning default (not FastChat's wording)")
        rows = {r.get("name"): r for r in read_jsonl(judge.prompt_file)}
        missing = [n for n in MT_BENCH_PROMPT_NAMES if n not in rows]
        if missing:
            raise ELOError(f"{judge.prompt_file}: missing judge prompts {missing} (FastChat data/judge_prompts.jsonl)")
        for name in MT_BENCH_PROMPT_NAMES:
            if rows[name].get("output_format") not in (None, "[[rating]]"):
                raise ELOError(f"{judge.prompt_file}: {name} has output_format {rows[name]['output_format']!r}")
        return JudgePrompts("mt_bench", {n: rows[n] for n in MT_BENCH_PROMPT_NAMES}, str(judge.prompt_file))
    preamble, source = DEFAULT_LOGICKOR_PREAMBLE, "elo-lightning default (not LogicKor's wording)"
    templates = DEFAULT_LOGICKOR_TEMPLATES
    if judge.prompt_file:
        path = Path(judge.prompt_file)
        if not path.is_file():
            raise ELOError(f"judge prompt file not found: {path}")
        if path.suffix == ".py":
            templates = _literal_assignment(path, "JUDGE_TEMPLATE")
        else:
            import yaml

            templates = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(templates, dict) or not all(isinstance(templates.get(k), str)
                                                      for k in ("single_turn", "multi_turn")):
            raise ELOError(f"{path}: needs single_turn and multi_turn templates (LogicKor templates.py JUDGE_TEMPLATE)")
        source = str(path)
    if judge.evaluator_file:
        path = Path(judge.evaluator_file)
        if not path.is_file():
            raise ELOError(f"LogicKor evaluator file not found: {path}")
        preamble = _logickor_preamble(path)
        source += f"; user prompt preamble from {path}"
    return JudgePrompts("logickor", dict(templates), source, preamble)


@dataclass
class JudgeRequest:
    """One judgment to ask for: turn ``turn`` (1-based) of question ``question_id``."""

    question_id: Any
    category: str
    turn: int
    prompt_name: str
    system: str
    user: str


def uses_reference(config: BenchmarkConfig, q: Question) -> bool:
    if config.benchmark == "mt_bench":
        return q.category in config.judge.reference_categories
    return any(r for r in q.references)


def check_references(config: BenchmarkConfig, questions: list[Question]) -> None:
    """MT-Bench reference categories need a reference for every turn (FastChat ``check_data``)."""
    if config.benchmark != "mt_bench":
        return
    missing = [q.id for q in questions if uses_reference(config, q) and not all(q.references)]
    if missing:
        raise ELOError(
            f"MT-Bench questions {missing[:10]} are in reference categories {config.judge.reference_categories} "
            "but have no reference answer for every turn: set judge.reference_file (FastChat "
            "data/mt_bench/reference_answer/gpt-4.jsonl) or judge.reference_categories: []"
        )


def _mt_bench_request(prompts: JudgePrompts, q: Question, answers: list[str], turn: int, ref: bool) -> JudgeRequest:
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    kwargs: dict[str, str] = {}
    if ref:
        kwargs["ref_answer_1"] = q.references[0] or ""
        if turn == 2:
            kwargs["ref_answer_2"] = q.references[1] or ""
    template = prompts.templates[name]
    if turn == 1:
        user = template["prompt_template"].format(question=q.turns[0], answer=answers[0], **kwargs)
    else:
        user = template["prompt_template"].format(question_1=q.turns[0], question_2=q.turns[1],
                                                  answer_1=answers[0], answer_2=answers[1], **kwargs)
    return JudgeRequest(q.id, q.category, turn, name, template["system_prompt"], user)


def _logickor_request(prompts: JudgePrompts, q: Question, answers: list[str], turn: int) -> JudgeRequest:
    """LogicKor ``evaluator.py`` ``create_answers``: the user prompt layout, references for both turns."""
    user = f"{prompts.preamble}**Question**\n{q.turns[0]}"
    if q.references[0]:
        user += f"\n\n**Additional Reference**\n{q.references[0]}"
    user += f"\n\n**Model's Response**\n{answers[0]}"
    if turn == 2:
        user += f"\n\n**Follow-up Question.**\n{q.turns[1]}"
        if q.references[1]:
            user += f"\n\n**Additional Reference**\n{q.references[1]}"
        user += f"\n\n**Model's Response**\n{answers[1]}"
    user += "\n\n[[대화 종료. 평가 시작.]]"
    name = "multi_turn" if turn == 2 else "single_turn"
    return JudgeRequest(q.id, q.category, turn, name, prompts.templates[name], user)


def build_requests(
    config: BenchmarkConfig, prompts: JudgePrompts, q: Question, answers: list[str]
) -> list[JudgeRequest]:
    """The judgments a question needs, turn by turn (turn 2 sees the turn-1 answer and the references)."""
    if len(answers) != len(q.turns):
        raise ELOError(f"question {q.id!r}: {len(q.turns)} turns but {len(answers)} answers")
    turns = range(1, len(q.turns) + 1)
    if config.benchmark == "mt_bench":
        ref = uses_reference(config, q)
        return [_mt_bench_request(prompts, q, answers, t, ref) for t in turns]
    return [_logickor_request(prompts, q, answers, t) for t in turns]


# ----------------------------------------------------------------------------------------------- ratings

_MT_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_MT_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_LK_SCORE = re.compile(r"점수:\s*(\d+(\.\d+)?)")


def parse_rating(benchmark: str, text: Any, low: float = 0.0, high: float = 10.0) -> float | None:
    """The rating as the benchmark parses it; ``None`` when absent or outside [low, high].

    MT-Bench: first ``[[x]]``, else first ``[x]``. LogicKor: ``점수: x`` after removing ``*``.
    """
    if not isinstance(text, str):
        return None
    if benchmark == "mt_bench":
        match = _MT_ONE_SCORE.search(text) or _MT_ONE_SCORE_BACKUP.search(text)
    else:
        match = _LK_SCORE.search(text.replace("*", ""))
    if not match:
        return None
    value = float(match.group(1))
    return value if low <= value <= high else None


# ----------------------------------------------------------------------------------------------- aggregates


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _turn_scores(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    t1 = [float(r["score"]) for r in rows if r["turn"] == 1 and r.get("score") is not None]
    t2 = [float(r["score"]) for r in rows if r["turn"] == 2 and r.get("score") is not None]
    return t1, t2


def _scores_block(benchmark: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    t1, t2 = _turn_scores(rows)
    failed = sum(1 for r in rows if r.get("score") is None)
    counts = {"n_judgments": len(rows), "n_scored": len(t1) + len(t2), "n_failed": failed}
    if benchmark == "mt_bench":  # FastChat show_result.py: mean per turn; "Average" = mean of all valid scores
        return {"turn_1": _mean(t1), "turn_2": _mean(t2), "average": _mean(t1 + t2), **counts}
    single, multi = _mean(t1), _mean(t2)  # LogicKor score.py: Total = (Single + Multi) / 2
    total = (single + multi) / 2 if single is not None and multi is not None else None
    return {"single": single, "multi": multi, "total": total, **counts}


def aggregate(benchmark: str, judged: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's own aggregates, overall and per category, from per-turn judgment rows
    (``{"category", "turn", "score": float | None, "error": str | None}``)."""
    categories = sorted({r["category"] for r in judged})
    return {
        "benchmark": benchmark,
        "overall": _scores_block(benchmark, judged),
        "by_category": {c: _scores_block(benchmark, [r for r in judged if r["category"] == c]) for c in categories},
        "n_questions": len({r["question_id"] for r in judged}),
        "n_errors": sum(1 for r in judged if r.get("error")),
        "n_unparsed": sum(1 for r in judged if r.get("score") is None and not r.get("error")),
    }


def summary_table(summary: dict[str, Any]) -> str:
    """A markdown table of the aggregates (rows: categories, then the overall row)."""
    cols = ("turn_1", "turn_2", "average") if summary["benchmark"] == "mt_bench" else ("single", "multi", "total")
    heads = ("Turn 1", "Turn 2", "Average") if summary["benchmark"] == "mt_bench" else ("Single turn", "Multi turn",
                                                                                       "Total")

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = ["| Category | " + " | ".join(heads) + " | failed |", "|---|" + "---|" * (len(cols) + 1)]
    for name, block in [*summary["by_category"].items(), ("**Overall**", summary["overall"])]:
        lines.append(f"| {name} | " + " | ".join(cell(block[c]) for c in cols) + f" | {block['n_failed']} |")
    return "\n".join(lines)
