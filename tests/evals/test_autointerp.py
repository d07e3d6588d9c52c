"""autointerp and judges: window selection, parsing, detection scoring with a scripted judge, the
lexical judge on latents with known triggers, the HTTP judge against a fake local server, and
the eval end to end on a tiny model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from featsep.evals.autointerp import (
    TokenStrings,
    background_counts,
    gather_windows,
    importance_windows,
    interpret_latent,
    k_largest_windows,
)
from featsep.evals.autointerp.judges import (
    Example,
    JudgeError,
    LexicalJudge,
    OpenAIJudge,
    parse_explanation,
    parse_predictions,
    score_detection,
)


def test_k_largest_windows_no_overlap():
    acts = torch.zeros(2, 12)
    acts[0, 5], acts[0, 6], acts[1, 4], acts[0, 1] = 9.0, 8.0, 7.0, 10.0  # (0, 1) is inside the buffer
    top = k_largest_windows(acts, 3, buffer=2, no_overlap=True)
    assert top.tolist()[:2] == [[0, 5], [1, 4]]  # (0, 6) overlaps (0, 5)'s window
    assert k_largest_windows(acts, 2, buffer=2, no_overlap=False).tolist() == [[0, 5], [0, 6]]
    windows = gather_windows(torch.arange(24).view(2, 12), top[:2], 2)
    assert windows.tolist() == [[3, 4, 5, 6, 7], [14, 15, 16, 17, 18]]


def test_importance_windows_only_sample_nonzero():
    acts = torch.zeros(3, 10)
    acts[1, 4], acts[2, 6] = 1.0, 3.0
    gen = torch.Generator().manual_seed(0)
    picks = importance_windows(acts, 5, buffer=2, gen=gen)
    assert sorted(map(tuple, picks.tolist())) == [(1, 4), (2, 6)]  # only 2 non-zero candidates


def test_parsing():
    assert parse_explanation("This neuron activates on the word 'cat'.") == "the word 'cat'"
    assert parse_predictions("1, 3 and 4", 5) == [True, False, True, True, False]
    assert parse_predictions("None", 3) == [False, False, False]
    assert parse_predictions("maybe 2", 3) is None


def _ex(tokens, acts, thr=0.5):
    return Example(list(tokens), list(acts), thr)


class ScriptedJudge:
    def __init__(self, predictions):
        self.predictions = predictions
        self.seen = []

    def explain(self, examples):
        self.seen.append(len(examples))
        return "scripted"

    def detect(self, explanation, examples):
        return self.predictions


def test_detection_score_with_scripted_judge():
    scoring = [_ex("ab", [0, 1]), _ex("cd", [0, 0]), _ex("ef", [2, 0]), _ex("gh", [0.4, 0])]  # active: T F T F
    judge = ScriptedJudge([True, True, False, False])
    out = interpret_latent(judge, [_ex("xy", [1, 0])], scoring)
    assert judge.seen == [1]  # the explanation comes from the generation examples only
    assert out["score"] == pytest.approx(2 / 4)  # right on examples 1 and 4
    assert out["predictions"] == [1, 2] and out["correct seqs"] == [1, 3]
    with pytest.raises(ValueError, match="predictions"):
        score_detection([True], scoring)


def test_background_counts_add_up_ids_that_decode_alike():
    class Tokenizer:
        def batch_decode(self, ids):
            return [{1: " a", 2: " b", 3: " a"}[i[0]] for i in ids]

    rows = torch.tensor([[1, 2, 3, 1], [3, 0, 2, 1]])
    assert background_counts(rows, rows != 0, TokenStrings(Tokenizer())) == {" a": 5, " b": 2}


def test_lexical_judge_on_known_trigger():
    judge = LexicalJudge()
    judge.set_background({" the": 50, " paris": 1, " london": 1, " and": 40})
    generation = [_ex([" the", " paris", " and"], [0, 3.0, 0]), _ex([" paris", " the"], [2.0, 0.1]), _ex([" the", " london"], [0.2, 0.6])]
    explanation = judge.explain(generation)
    assert json.dumps("paris") in explanation and json.dumps("the") not in explanation
    scoring = [_ex([" in", " paris"], [0, 1]), _ex([" in", " rome"], [0, 0])]
    assert judge.detect(explanation, scoring) == [True, False]
    assert judge.detect("words about 'paris' and rome", scoring) == [True, True]  # free-text fallback


# ---- the HTTP judge against a fake OpenAI-compatible server --------------------------------------


class _FakeServer(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeServer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        system = body["messages"][0]["content"]
        content = "This neuron activates on the city Paris." if "<< ... >>" in system else "2, 3"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    server = HTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeServer.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_judge_against_fake_server(fake_server, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    judge = OpenAIJudge(base_url=fake_server, model="tiny-judge", api_key_env="FAKE_JUDGE_KEY")
    gen = [_ex([" in", " Paris"], [0, 2.0])]
    explanation = judge.explain(gen)
    assert explanation == "the city Paris"
    predictions = judge.detect(explanation, [_ex("ab", [0, 0]), _ex("cd", [0, 1]), _ex("ef", [0, 0])])
    assert predictions == [False, True, True]
    first, second = _FakeServer.requests
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "tiny-judge" and "<< Paris>>" in first["body"]["messages"][1]["content"]
    assert "this neuron fires on the city Paris" in second["body"]["messages"][1]["content"]
    bad = OpenAIJudge(base_url="http://127.0.0.1:9/v1", retries=0, timeout=2)
    with pytest.raises(JudgeError, match="failed"):
        bad.explain(gen)


def test_autointerp_end_to_end(tmp_path, letters_lm):
    import featsep.evals.autointerp  # noqa: F401  (registers the eval)
    from featsep.evals import evaluate
    from featsep.sae import make_sae
    from tests.evals.helpers import HOOK, TOPIC_WORDS, WORDS
    import random

    lm = letters_lm
    torch.manual_seed(0)  # the SAE below starts from the same weights whatever ran before
    rng = random.Random(0)
    (tmp_path / "c.txt").write_text(" ".join(rng.choices(TOPIC_WORDS["x"] + WORDS[:30], k=6000)))
    sae = make_sae("topk", d_in=lm.d_model, d_sae=32, k=4, hook_name=HOOK)
    out = evaluate(
        sae, evals=["autointerp"], model=lm, out_dir=tmp_path / "out", cache_dir=None, verbose=False,
        settings={"autointerp": {"dataset": str(tmp_path / "c.txt"), "total_tokens": 2048, "context_size": 32,
                                 "n_latents": 5, "buffer": 3, "dead_latent_threshold": 0}},
    )["autointerp"]
    m = out["eval_result_metrics"]["autointerp"]
    summary = out["eval_result_unstructured"]["summary"]
    assert summary["n_latents_scored"] >= 1
    assert 0.0 <= m["autointerp_score"] <= 1.0
    per_latent = [v for v in out["eval_result_unstructured"].values() if isinstance(v, dict) and "latent" in v]
    assert all(len(v["correct seqs"]) >= 4 for v in per_latent)  # the 2 top + 2 weighted scoring windows fire
