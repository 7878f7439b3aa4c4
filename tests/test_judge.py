"""LLM-as-judge: MT-Bench and LogicKor question files, two turns generated and judged against a local fake
OpenAI-compatible judge, prompts as the benchmarks build them, ratings and aggregates as they compute them."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from elo_lightning.errors import ELOError
from elo_lightning.evaluation import judge
from elo_lightning.evaluation.judge import generate_answers, judge_answers
from elo_lightning.evaluation.judge_protocols import (
    default_config,
    load_benchmark_config,
    load_questions,
    parse_rating,
)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- fake judge


class FakeJudge(BaseHTTPRequestHandler):
    """Grades the *last* answer in the prompt with the number after ``SCORE=`` in it (so a turn-2 prompt that
    lost its second answer, or a turn-1 prompt that leaked it, gets the wrong score); answers in the format of the
    benchmark the prompt belongs to (LogicKor prompts end with its ``[[대화 종료. 평가 시작.]]`` line)."""

    requests: ClassVar[list[dict]] = []
    calls: ClassVar[dict[str, int]] = {}

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, text: str | None = None) -> None:
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][-1]["content"]
        FakeJudge.calls[user] = FakeJudge.calls.get(user, 0) + 1
        last = (re.findall(r"SCORE=(\w+)", user) or ["none"])[-1]
        if last == "FLAKY" and FakeJudge.calls[user] == 1:
            return self._reply(503)
        if last == "ALWAYS500":
            return self._reply(500)
        logickor = user.rstrip().endswith("[[대화 종료. 평가 시작.]]")
        if not last.isdigit():
            text = "평가: 애매하다." if logickor else "I would rather not give a number."
        elif logickor:
            text = f"**평가:** 좋은 답변이다.\n**점수:** {last}"
        else:
            text = f"The answer is fine. Rating: [[{last}]]"
        self._reply(200, text)


@pytest.fixture
def server():
    FakeJudge.requests, FakeJudge.calls = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _sent(turn_marker: str) -> list[dict]:
    return [r["body"] for r in FakeJudge.requests if turn_marker in r["body"]["messages"][-1]["content"]]


# ----------------------------------------------------------------------------------------------- MT-Bench

MT_QUESTIONS = [  # hand-made, MT-Bench question.jsonl layout
    {"question_id": 81, "category": "writing", "turns": ["Write a poem about rain.", "Now make it shorter."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And doubled?"],
     "reference": ["REF-ONE is 4", "REF-TWO is 8"]},
    {"question_id": 82, "category": "writing", "turns": ["Describe snow.", "In one word."]},
    {"question_id": 83, "category": "writing", "turns": ["Describe fog.", "Shorter."]},
]
MT_ANSWERS = {81: ["A rainy poem SCORE=6", "Short rain SCORE=8"], 111: ["It is 4 SCORE=FLAKY", "8 SCORE=7"],
              82: ["Snow is white SCORE=6", "Cold SCORE=GARBLED"], 83: ["x SCORE=ALWAYS500", "y SCORE=ALWAYS500"]}


def _mt_answers_file(tmp_path: Path) -> Path:
    _, questions = load_questions(_jsonl(tmp_path / "question.jsonl", MT_QUESTIONS))
    rows = [judge.answer_record("mt_bench", q, MT_ANSWERS[q.id], "tiny", {"reference": q.references}
                                if any(q.references) else {}) for q in questions]
    return _jsonl(tmp_path / "answers.jsonl", rows)


def test_mt_bench_two_turns_judged_and_aggregated_as_fastchat(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    answers = _mt_answers_file(tmp_path)
    out = tmp_path / "judged.jsonl"
    summary = judge_answers(str(answers), server, str(out), timeout=5, max_retries=2, backoff=0.01)

    rows = {(r["question_id"], r["turn"]): r for r in _rows(out)}
    assert len(rows) == 8  # one judgment per turn
    assert rows[(81, 1)]["score"] == 6 and rows[(81, 2)]["score"] == 8 and rows[(111, 2)]["score"] == 7
    assert rows[(111, 1)]["attempts"] == 2 and rows[(111, 1)]["error"] is None  # 503 once, then retried
    assert rows[(111, 1)]["score"] is None and rows[(82, 2)]["score"] is None  # unparsable: a failure, not a 0
    assert rows[(83, 1)]["error"].startswith("HTTP 500") and rows[(83, 1)]["attempts"] == 3
    assert rows[(81, 1)]["prompt_name"] == "single-v1" and rows[(81, 2)]["prompt_name"] == "single-v1-multi-turn"
    assert rows[(111, 1)]["prompt_name"] == "single-math-v1"
    assert rows[(111, 2)]["prompt_name"] == "single-math-v1-multi-turn"

    # the turn-2 prompt holds the whole dialogue (turn-1 answer included) and, for math, both references
    t2_math = rows[(111, 2)]["user_prompt"]
    for text in ("What is 2+2?", "It is 4", "And doubled?", "8 SCORE=7", "REF-ONE is 4", "REF-TWO is 8"):
        assert text in t2_math
    t1_math = rows[(111, 1)]["user_prompt"]
    assert "REF-ONE is 4" in t1_math and "REF-TWO" not in t1_math and "And doubled?" not in t1_math
    t2_writing = rows[(81, 2)]["user_prompt"]
    assert "A rainy poem" in t2_writing and "Short rain" in t2_writing and "REF" not in t2_writing

    # FastChat show_result.py: failures dropped; turn means; "average" = mean of all valid scores
    t1, t2 = [6, 6], [8, 7]
    assert summary["overall"]["turn_1"] == pytest.approx(sum(t1) / len(t1))
    assert summary["overall"]["turn_2"] == pytest.approx(sum(t2) / len(t2))
    assert summary["overall"]["average"] == pytest.approx(sum(t1 + t2) / len(t1 + t2))
    assert summary["by_category"]["writing"]["turn_1"] == 6 and summary["by_category"]["writing"]["turn_2"] == 8
    assert summary["by_category"]["math"] == {"turn_1": None, "turn_2": 7.0, "average": 7.0, "n_judgments": 2,
                                              "n_scored": 1, "n_failed": 1}
    assert (summary["n_questions"], summary["n_unparsed"], summary["n_errors"]) == (4, 2, 2)
    assert summary["overall"]["n_failed"] == 4 and summary["by_category"]["writing"]["n_failed"] == 3
    req = FakeJudge.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-env"
    assert req["body"]["model"] == "gpt-4" and req["body"]["temperature"] == 0.0
    assert [m["role"] for m in req["body"]["messages"]] == ["system", "user"]
    saved = json.loads((tmp_path / "judged.jsonl.summary.json").read_text())
    assert saved["overall"] == summary["overall"] and "| **Overall** |" in saved["table"]
    assert Path(saved["figure"]).read_bytes()[:4] == b"\x89PNG"


def test_mt_bench_reads_fastchat_prompt_file_and_resumes(tmp_path, server):
    answers = _mt_answers_file(tmp_path)
    prompts = [{"name": n, "type": "single", "system_prompt": f"SYS-{n}", "output_format": "[[rating]]",
                "prompt_template": ("Q1={question_1} A1={answer_1} Q2={question_2} A2={answer_2}" if "multi" in n
                                    else "Q={question} A={answer}") + (" R1={ref_answer_1}" if "math" in n else "")
                + (" R2={ref_answer_2}" if "math" in n and "multi" in n else "")}
               for n in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")]
    prompt_file = _jsonl(tmp_path / "judge_prompts.jsonl", prompts)
    config = tmp_path / "mt.yaml"
    config.write_text(f"benchmark: mt_bench\njudge:\n  prompt_file: {prompt_file.name}\n  model: my-judge\n")
    out = tmp_path / "judged.jsonl"
    summary = judge_answers(str(answers), server, str(out), benchmark=str(config), api_key="sk-arg", backoff=0.01)
    assert summary["judge_prompts"] == str(prompt_file)
    bodies = {b["messages"][0]["content"]: b["messages"][1]["content"] for b in (r["body"] for r in FakeJudge.requests)}
    assert bodies["SYS-single-math-v1-multi-turn"] == ("Q1=What is 2+2? A1=It is 4 SCORE=FLAKY Q2=And doubled? "
                                                       "A2=8 SCORE=7 R1=REF-ONE is 4 R2=REF-TWO is 8")
    assert FakeJudge.requests[0]["auth"] == "Bearer sk-arg" and FakeJudge.requests[0]["body"]["model"] == "my-judge"

    # a rerun asks again only for the failed judgments
    failed = {r["user_prompt"] for r in _rows(out) if r["score"] is None}
    n_before = len(FakeJudge.requests)
    again = judge_answers(str(answers), server, str(out), benchmark=str(config), backoff=0.01)
    asked = [r["body"]["messages"][1]["content"] for r in FakeJudge.requests[n_before:]]
    assert len(failed) == 4 and set(asked) == failed
    assert again["overall"] == summary["overall"]
    assert len(_rows(out)) == 8


def test_mt_bench_reference_category_without_reference_fails_before_any_request(tmp_path, server):
    rows = [{"question_id": 1, "model_id": "m", "choices": [{"turns": ["a SCORE=3", "b SCORE=4"]}],
             "category": "coding", "turns": ["q1", "q2"]}]
    answers = _jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(ELOError, match="reference"):
        judge_answers(str(answers), server, str(tmp_path / "j.jsonl"))
    assert FakeJudge.requests == []
    fastchat_refs = _jsonl(tmp_path / "gpt-4.jsonl", [{"question_id": 1, "choices": [{"turns": ["R1x", "R2x"]}]}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"benchmark: mt_bench\njudge:\n  reference_file: {fastchat_refs}\n")
    summary = judge_answers(str(answers), server, str(tmp_path / "j.jsonl"), benchmark=str(cfg))
    assert "R2x" in FakeJudge.requests[-1]["body"]["messages"][1]["content"]
    assert (summary["overall"]["turn_1"], summary["overall"]["turn_2"]) == (3.0, 4.0)


# ----------------------------------------------------------------------------------------------- LogicKor

LK_QUESTIONS = [  # hand-made, LogicKor questions.jsonl layout
    {"id": 1, "category": "추론(Reasoning)", "questions": ["논리 문제 하나", "영어로 요약해라"],
     "references": [None, None]},
    {"id": 2, "category": "수학(Math)", "questions": ["2+2는?", "그 두 배는?"],
     "references": ["REF-A 4", "REF-B 8"]},
    {"id": 3, "category": "수학(Math)", "questions": ["3+3은?", "그 세 배는?"], "references": ["REF-C 6", None]},
]
LK_OUTPUTS = {1: ["추론 답 SCORE=7", "요약 SCORE=5"], 2: ["4입니다 SCORE=10", "8입니다 SCORE=4"],
              3: ["English answer SCORE=0", "모름 SCORE=GARBLED"]}


def _lk_answers_file(tmp_path: Path) -> Path:
    _, questions = load_questions(_jsonl(tmp_path / "questions.jsonl", LK_QUESTIONS))
    rows = [judge.answer_record("logickor", q, LK_OUTPUTS[q.id], "tiny", {}) for q in questions]
    return _jsonl(tmp_path / "answers.jsonl", rows)


def test_logickor_two_turns_judged_and_aggregated_as_logickor(tmp_path, server):
    answers = _lk_answers_file(tmp_path)
    out = tmp_path / "judged.jsonl"
    summary = judge_answers(str(answers), server, str(out), backoff=0.01)
    rows = {(r["question_id"], r["turn"]): r for r in _rows(out)}
    assert rows[(2, 1)]["score"] == 10 and rows[(2, 2)]["score"] == 4 and rows[(3, 1)]["score"] == 0
    assert rows[(3, 2)]["score"] is None and rows[(3, 2)]["attempts"] == 5  # asked again 4 times, then a failure

    multi = rows[(2, 2)]["user_prompt"]
    for text in ("**Question**\n2+2는?", "**Additional Reference**\nREF-A 4", "**Model's Response**\n4입니다",
                 "**Follow-up Question.**\n그 두 배는?", "**Additional Reference**\nREF-B 8", "8입니다 SCORE=4"):
        assert text in multi
    single = rows[(2, 1)]["user_prompt"]
    assert "REF-A 4" in single and "REF-B" not in single and "Follow-up" not in single
    assert "Additional Reference" not in rows[(1, 2)]["user_prompt"]
    assert multi.index("REF-A") < multi.index("4입니다") < multi.index("그 두 배는?") < multi.index("REF-B")
    multi_sys = {b["messages"][0]["content"] for b in _sent("Follow-up Question.")}
    single_sys = {r["body"]["messages"][0]["content"] for r in FakeJudge.requests} - multi_sys
    assert len(multi_sys) == 1 and len(single_sys) == 1  # LogicKor's single_turn / multi_turn system prompts

    # score.py: per category and overall mean Single and Multi; Total = (Single + Multi) / 2
    single_all, multi_all = [7, 10, 0], [5, 4]
    s, m = sum(single_all) / 3, sum(multi_all) / 2
    assert summary["overall"]["single"] == pytest.approx(s) and summary["overall"]["multi"] == pytest.approx(m)
    assert summary["overall"]["total"] == pytest.approx((s + m) / 2)
    assert summary["by_category"]["수학(Math)"]["single"] == pytest.approx(5.0)
    assert summary["by_category"]["수학(Math)"]["multi"] == pytest.approx(4.0)
    assert summary["by_category"]["수학(Math)"]["total"] == pytest.approx(4.5)
    assert summary["by_category"]["추론(Reasoning)"]["total"] == pytest.approx(6.0)
    assert summary["overall"]["n_failed"] == 1 and summary["n_unparsed"] == 1
    assert FakeJudge.requests[0]["body"]["model"] == "gpt-4-1106-preview"
    assert "max_tokens" not in FakeJudge.requests[0]["body"]


def test_logickor_reads_its_own_templates_without_executing_them(tmp_path, server):
    answers = _lk_answers_file(tmp_path)
    (tmp_path / "templates.py").write_text(
        'raise SystemExit("templates.py must not be executed")\n'
        'PROMPT_STRATEGY = {"default": []}\n'
        'JUDGE_TEMPLATE = {"single_turn": "SYS-SINGLE 점수: 숫자", "multi_turn": "SYS-MULTI 점수: 숫자"}\n',
        encoding="utf-8")
    (tmp_path / "evaluator.py").write_text(
        'def create_answers(model_questions):\n'
        '    prompt = (\n        f"PREAMBLE-LINE.\\n\\n"\n        f"**Question**\\n{model_questions[0]}"\n    )\n'
        '    return prompt\n', encoding="utf-8")
    cfg = tmp_path / "lk.yaml"
    cfg.write_text("benchmark: logickor\njudge:\n  prompt_file: templates.py\n  evaluator_file: evaluator.py\n")
    summary = judge_answers(str(answers), server, str(tmp_path / "j.jsonl"), benchmark=str(cfg), backoff=0.01)
    systems = {(r["body"]["messages"][0]["content"], "Follow-up" in r["body"]["messages"][1]["content"])
               for r in FakeJudge.requests}
    assert systems == {("SYS-SINGLE 점수: 숫자", False), ("SYS-MULTI 점수: 숫자", True)}
    assert all(r["body"]["messages"][1]["content"].startswith("PREAMBLE-LINE.\n\n**Question**\n")
               for r in FakeJudge.requests)
    assert "templates.py" in summary["judge_prompts"]


def test_parse_rating_as_the_benchmarks_do():
    assert parse_rating("mt_bench", "x [[7]] then [[3]]") == 7.0  # first match (re.search)
    assert parse_rating("mt_bench", "Rating: [[8.5]]") == 8.5
    assert parse_rating("mt_bench", "Rating: [6]") == 6.0  # FastChat's backup pattern
    assert parse_rating("mt_bench", "Rating: 7") is None
    assert parse_rating("mt_bench", "[[42]]") is None
    assert parse_rating("logickor", "**평가:** 좋음\n**점수:** 8") == 8.0
    assert parse_rating("logickor", "점수: 0") == 0.0
    assert parse_rating("logickor", "Rating: [[8]]") is None
    assert parse_rating("logickor", None) is None


def test_question_files_and_configs(tmp_path):
    assert load_benchmark_config(str(ROOT / "configs/judge/mt_bench.yaml")) == default_config("mt_bench")
    assert load_benchmark_config(str(ROOT / "configs/judge/logickor.yaml")) == default_config("logickor")
    lk = _jsonl(tmp_path / "lk.jsonl", LK_QUESTIONS)
    fmt, qs = load_questions(lk)
    assert fmt == "logickor" and qs[1].references == ["REF-A 4", "REF-B 8"] and qs[0].turns[1] == "영어로 요약해라"
    with pytest.raises(ELOError, match="looks like a logickor"):
        load_questions(lk, "mt_bench")
    extra = _jsonl(tmp_path / "lk3.jsonl", [{"id": 3, "category": "추론(Reasoning)", "questions": ["a", "b", "b'"],
                                            "references": ["r", None]}])
    assert load_questions(extra)[1][0].turns == ["a", "b"]  # LogicKor uses the first two questions only
    with pytest.raises(ELOError, match="one or two turns"):
        load_questions(_jsonl(tmp_path / "three.jsonl", [{"question_id": 1, "category": "c", "turns": ["a"] * 3}]))
    with pytest.raises(ELOError, match="unrecognised"):
        load_questions(_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: mt_bench\ngeneration:\n  temprature: 0.1\n")
    with pytest.raises(ELOError, match="unknown key 'temprature'"):
        load_benchmark_config(str(bad))


# ----------------------------------------------------------------------------------------------- generation


def _tiny_model(path: Path, eos_extra: int | None = None, zero_head: bool = False) -> Path:
    tok = AutoTokenizer.from_pretrained(ROOT / "configs" / "tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    if zero_head:
        torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: greedy decoding picks token id 0
    model.save_pretrained(path)
    if eos_extra is not None:
        GenerationConfig(eos_token_id=[tok.eos_token_id, eos_extra], bos_token_id=tok.bos_token_id).save_pretrained(
            path)
    tok.save_pretrained(path)
    return path


def test_generate_turn_by_turn_per_category_temperature_and_resume(tmp_path, monkeypatch):
    model_dir = _tiny_model(tmp_path / "m")
    seen = []

    def fake_turn(model, tokenizer, messages, temperature, max_new_tokens, stop_ids, pad_id):
        seen.append((messages, temperature, max_new_tokens))
        return f"answer to {messages[-1]['content']}", 3, "stop"

    monkeypatch.setattr(judge, "_generate_turn", fake_turn)
    questions = _jsonl(tmp_path / "question.jsonl", MT_QUESTIONS[:2])
    out = tmp_path / "answers.jsonl"
    res = generate_answers(str(model_dir), str(questions), str(out))
    assert (res["benchmark"], res["n_answered"], res["n_resumed"]) == ("mt_bench", 2, 0)
    # turn 2 sees turn 1's question and answer
    assert seen[1][0] == [{"role": "user", "content": "Write a poem about rain."},
                          {"role": "assistant", "content": "answer to Write a poem about rain."},
                          {"role": "user", "content": "Now make it shorter."}]
    assert [t for _, t, _ in seen] == [0.7, 0.7, 0.0, 0.0]  # writing 0.7, math greedy (FastChat)
    assert {n for _, _, n in seen} == {1024}
    rows = _rows(out)
    assert rows[0]["choices"][0]["turns"] == ["answer to Write a poem about rain.", "answer to Now make it shorter."]
    assert rows[1]["reference"] == ["REF-ONE is 4", "REF-TWO is 8"] and rows[0]["model_id"] == str(model_dir)

    # resume: only the new question is generated; another model's file is refused
    _jsonl(questions, MT_QUESTIONS)
    seen.clear()
    res = generate_answers(str(model_dir), str(questions), str(out), max_new_tokens=7)
    assert (res["n_answered"], res["n_resumed"]) == (2, 2) and len(seen) == 4 and seen[0][2] == 7
    assert [r["question_id"] for r in _rows(out)] == [81, 111, 82, 83]
    with pytest.raises(ELOError, match="another output_file"):
        generate_answers(str(model_dir), str(questions), str(out), model_id="other")

    # LogicKor: its own answer format and settings (greedy, 4096 new tokens)
    seen.clear()
    lk_out = tmp_path / "lk_answers.jsonl"
    generate_answers(str(model_dir), str(_jsonl(tmp_path / "lk.jsonl", LK_QUESTIONS)), str(lk_out))
    row = _rows(lk_out)[1]
    assert row["outputs"] == ["answer to 2+2는?", "answer to 그 두 배는?"]
    assert row["references"] == ["REF-A 4", "REF-B 8"]
    assert {(t, n) for _, t, n in seen} == {(0.0, 4096)}
    assert seen[1][0][1] == {"role": "assistant", "content": "answer to 논리 문제 하나"}
    with pytest.raises(ELOError, match="logickor format"):
        generate_answers(str(model_dir), str(tmp_path / "lk.jsonl"), str(tmp_path / "x.jsonl"), benchmark="mt_bench")


def test_generation_stops_at_any_generation_config_eos_id(tmp_path):
    model_dir = _tiny_model(tmp_path / "m", eos_extra=0, zero_head=True)
    q = _jsonl(tmp_path / "q.jsonl", [{"question_id": "ko-1", "category": "writing", "turns": ["안녕?", "다시"]}])
    cfg = tmp_path / "g.yaml"
    cfg.write_text("benchmark: mt_bench\ngeneration:\n  temperature_by_category: {writing: 0.0}\n")
    generate_answers(str(model_dir), str(q), str(tmp_path / "a.jsonl"), benchmark=str(cfg), max_new_tokens=6)
    row = _rows(tmp_path / "a.jsonl")[0]
    assert row["generation"]["finish"] == ["stop", "stop"] and row["generation"]["new_tokens"] == [1, 1]
    assert row["choices"][0]["turns"] == ["", ""]

    no_eos = _tiny_model(tmp_path / "m2", zero_head=True)  # token 0 is no stop token here: runs to the limit
    generate_answers(str(no_eos), str(q), str(tmp_path / "b.jsonl"), benchmark=str(cfg), max_new_tokens=6)
    assert _rows(tmp_path / "b.jsonl")[0]["generation"]["finish"] == ["length", "length"]


def test_generation_loads_the_checkpoint_dtype_by_default(tmp_path, monkeypatch):
    """A bf16 export is answered in bf16 (not upcast to fp32) unless the user asks; a bad dtype is one line."""
    model_dir = tmp_path / "m"
    _tiny_model(model_dir)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).save_pretrained(model_dir)
    dtypes = []

    def fake_turn(model, tokenizer, messages, temperature, max_new_tokens, stop_ids, pad_id):
        dtypes.append(next(model.parameters()).dtype)
        return "ok", 1, "stop"

    monkeypatch.setattr(judge, "_generate_turn", fake_turn)
    q = _jsonl(tmp_path / "q.jsonl", MT_QUESTIONS[:1])
    generate_answers(str(model_dir), str(q), str(tmp_path / "a.jsonl"))
    generate_answers(str(model_dir), str(q), str(tmp_path / "b.jsonl"), dtype="float32")
    assert dtypes == [torch.bfloat16] * 2 + [torch.float32] * 2
    with pytest.raises(ELOError, match="unknown dtype"):
        generate_answers(str(model_dir), str(q), str(tmp_path / "c.jsonl"), dtype="fp8")
