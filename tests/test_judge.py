"""LLM-as-judge against a local fake OpenAI-compatible server: good scores, 5xx retries, malformed judgments."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from elo_lightning.evaluation.judge import generate_answers, judge_answers, parse_score

ROOT = Path(__file__).resolve().parents[1]


class FakeJudge(BaseHTTPRequestHandler):
    calls: dict[str, int] = {}
    requests: list[dict] = []

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][-1]["content"]
        key = prompt.split("[Dialogue]")[1][:60]
        FakeJudge.calls[key] = FakeJudge.calls.get(key, 0) + 1
        if "ALWAYS500" in prompt:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        if "FLAKY" in prompt and FakeJudge.calls[key] == 1:
            self.send_response(503)
            self.end_headers()
            return
        if "GARBLED" in prompt:
            text = "The answer is fine but I will not give a number."
        elif "math" in prompt:
            text = "Correct and concise. Rating: [[9]]"
        else:
            text = "Helpful enough.\nRating: 6"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    FakeJudge.calls, FakeJudge.requests = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_parse_score():
    assert parse_score("blah [[7]]") == 7.0
    assert parse_score("Rating: [[8.5]]") == 8.5
    assert parse_score("Rating: 7") == 7.0
    assert parse_score("**Score**: 6/10") == 6.0
    assert parse_score("Score: 6/10") == 6.0
    assert parse_score("no number here") is None
    assert parse_score("[[42]]") is None  # out of range
    assert parse_score(None) is None


def test_judge_scores_retries_and_errors(tmp_path, server):
    answers = [
        {"question_id": 1, "category": "math", "turns": ["2+2?"], "answers": ["4"]},
        {"question_id": 2, "category": "math", "turns": ["3+3? FLAKY"], "answers": ["6"]},
        {"question_id": 3, "category": "writing", "turns": ["Write a haiku"], "answers": ["..."]},
        {"question_id": 4, "category": "writing", "turns": ["GARBLED please"], "answers": ["x"]},
        {"question_id": 5, "category": "writing", "turns": ["ALWAYS500"], "answers": ["y"]},
    ]
    answers_file = tmp_path / "answers.jsonl"
    answers_file.write_text("".join(json.dumps(a) + "\n" for a in answers))
    out = tmp_path / "judged.jsonl"
    summary = judge_answers(str(answers_file), server, "fake-judge", "sk-test", str(out), timeout=5,
                            max_retries=2, backoff=0.01)
    rows = {r["question_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows[1]["score"] == 9.0 and rows[1]["error"] is None and rows[1]["attempts"] == 1
    assert rows[2]["score"] == 9.0 and rows[2]["attempts"] == 2  # 503 once, then retried
    assert rows[3]["score"] == 6.0
    assert rows[4]["score"] is None and rows[4]["error"] is None and "will not give" in rows[4]["judgment"]
    assert rows[5]["score"] is None and rows[5]["error"].startswith("HTTP 500") and rows[5]["attempts"] == 3
    assert summary["by_category"]["math"] == {"mean": 9.0, "n_scored": 2, "n": 2}
    assert summary["by_category"]["writing"] == {"mean": 6.0, "n_scored": 1, "n": 3}
    assert summary["overall"] == pytest.approx(8.0)
    assert (summary["n"], summary["n_scored"], summary["n_errors"], summary["n_unparsed"]) == (5, 3, 1, 1)
    req = FakeJudge.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "fake-judge" and req["body"]["messages"][0]["role"] == "system"
    assert json.loads(Path(str(out) + ".summary.json").read_text())["overall"] == pytest.approx(8.0)


def test_generate_answers_multi_turn(tmp_path):
    tok = AutoTokenizer.from_pretrained(ROOT / "configs" / "tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    model_dir = tmp_path / "m"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": "ko-1", "category": "writing", "turns": ["안녕?", "다시 말해줘"]},
                            ensure_ascii=False) + "\n")
    rows = generate_answers(str(model_dir), str(q), str(tmp_path / "a.jsonl"), max_new_tokens=5)
    assert len(rows) == 1 and len(rows[0]["answers"]) == 2
    saved = json.loads((tmp_path / "a.jsonl").read_text())
    assert saved["question_id"] == "ko-1" and saved["turns"] == ["안녕?", "다시 말해줘"]
