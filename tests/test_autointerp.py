"""Autointerp (SAEBench's protocol): the OpenAI-compatible client against a fake server on 127.0.0.1
(request format, retries, timeout, cache, the key kept out of every file, the request budget, named
errors), the oracle on the synthetic source (exact on a perfect dictionary, chance for a random
scorer and for unrelated explanations), and the JSON against SAEBench's schema."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tests.conftest import ci_config
from tests.saebench_schema import saebench_schema, schema_errors
from tsae_core.config import ConfigError, load_config
from tsae_core.evals.autointerp import prompts
from tsae_core.evals.autointerp.client import (
    AuthenticationFailed,
    BadResponse,
    ChatClient,
    EndpointTimeout,
    EndpointUnreachable,
    MissingApiKey,
    ModelNotServed,
    RequestBudgetExceeded,
    ResponseCache,
)
from tsae_core.evals.autointerp.evaluation import autointerp_variant
from tsae_core.evals.autointerp.judges import OracleJudge
from tsae_core.evals.autointerp.pipeline import run_autointerp
from tsae_core.evals.autointerp.sampling import Scan, sample_latent, top_indices

KEY = "sk-test-0123456789abcdef"
ENV = "TSAE_TEST_JUDGE_KEY"
CHANCE_4_OF_14 = (4 * 4 / 14 + 10 * 10 / 14) / 14  # 116/196 = 0.592


# ------------------------------------------------------------------ a fake OpenAI-compatible server
class FakeServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 (an ephemeral port) whose behaviour a test sets."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_first: list[int] = []  # status codes of the first chat requests
        self.delay_s = 0.0
        self.key: str | None = KEY
        self.models: list[str] | None = ["judge-model"]  # None: no /models route
        self.score_answer = "1, 3"
        self.raw_body: bytes | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.key is not None and self.headers.get("Authorization") != f"Bearer {server.key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided"}})
                    return False
                return True

            def do_GET(self):
                server.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                if server.models is None:
                    return self._send(404, {"error": {"message": "not found"}})
                if self._authorised():
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body})
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.fail_first:
                    status = server.fail_first.pop(0)
                    return self._send(status, {"error": {"message": "slow down" if status == 429 else "server error"}},
                                      {"Retry-After": "0"} if status == 429 else None)
                if not self._authorised():
                    return
                if body["model"] != "judge-model":
                    return self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
                if server.raw_body is not None:
                    return self._send(200, server.raw_body)
                explain = "marked" in body["messages"][1]["content"]
                content = "This latent activates on the dots in the middle." if explain else server.score_answer
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                              "finish_reason": "stop"}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return KEY


def _client(server: FakeServer, tmp_path, **kw) -> ChatClient:
    opts = {"api_key_env": ENV, "timeout_s": 5.0, "retries": 3, "backoff_s": 0.01, "concurrency": 4, **kw}
    return ChatClient(server.url, "judge-model", cache=ResponseCache(tmp_path / "cache"), **opts)


MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


# ------------------------------------------------------------------ a tiny trained run
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config overrides base, store) of the CI experiment with `topk` trained (120 steps)."""
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    out = tmp_path_factory.mktemp("autointerp")
    cfg = ci_config(out)
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    return out, store


def _llm_cfg(out, server: FakeServer, **kw):
    return ci_config(out, **{"autointerp.backend": "openai", "autointerp.base_url": server.url, "autointerp.model": "judge-model",
                             "autointerp.api_key_env": ENV, "autointerp.n_latents": 4, "autointerp.backoff_s": 0.01,
                             "autointerp.timeout_s": 5.0, **kw})


# ------------------------------------------------------------------ the client and the endpoint
def test_llm_run_request_format_cache_and_key_never_written(trained, server, api_key, capsys):
    out, store = trained
    cfg = _llm_cfg(out, server)
    result = autointerp_variant(cfg, "topk", store, progress=False, force=True)
    chat = server.chat_requests()
    n = result["counts"]["n_explained"]
    assert n >= 2 and len(chat) == 4 * n  # explanation, score, shuffled explanation, temporal window
    for r in chat:
        assert r["path"] == "/v1/chat/completions"
        assert r["headers"]["Authorization"] == f"Bearer {KEY}"
        body = r["body"]
        assert set(body) == {"model", "messages", "max_tokens", "n", "stream"} and body["model"] == "judge-model"
        assert [m["role"] for m in body["messages"]] == ["system", "user"] and body["stream"] is False
    explain = [r["body"] for r in chat if r["body"]["max_tokens"] == 30]
    score = [r["body"] for r in chat if r["body"]["max_tokens"] == 2 * 14 + 5]
    assert len(explain) == n and len(score) == 3 * n
    for b in explain:  # 15 numbered examples (10 top, 5 importance-weighted), active tokens marked
        lines = [ln for ln in b["messages"][1]["content"].splitlines() if ln[:1].isdigit()]
        assert [ln.split(".")[0] for ln in lines] == [str(i) for i in range(1, 16)] and "<<" in lines[0]
    for b in score:
        lines = [ln for ln in b["messages"][1]["content"].splitlines() if ln[:1].isdigit()]
        assert [ln.split(".")[0] for ln in lines] == [str(i) for i in range(1, 15)] and "<<" not in b["messages"][1]["content"]
        assert "this latent activates on the dots in the middle." in b["messages"][1]["content"]
    printed = capsys.readouterr().out
    assert f"{4 * n} requests for {n} latents ({4 * n} not cached)" in printed
    # every latent answered "1, 3": its score is the fraction of sequences that answer classifies correctly
    for r in result["eval_result_unstructured"].values():
        labels = [i in r["correct seqs"] for i in range(1, 15)]
        assert r["score"] == pytest.approx(prompts.score_predictions([1, 3], labels))
        assert r["explanation"] == "the dots in the middle"
    # a rerun costs nothing (not even the /models check) and scores the same
    server.requests.clear()
    again = autointerp_variant(cfg, "topk", store, progress=False, force=True)
    assert server.requests == []
    assert again["counts"]["requests"] == {"sent": 0, "from_cache": 4 * n}
    assert again["eval_result_metrics"] == result["eval_result_metrics"]
    # the key is in no file written (results, cache)
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert "(0 not cached)" in capsys.readouterr().out


def test_retries_on_429_and_500_then_succeeds(server, api_key, tmp_path):
    server.fail_first = [429, 500, 503]
    client = _client(server, tmp_path)
    assert client.complete(client.body(MESSAGES, 5)) == "1, 3"
    assert len(server.chat_requests()) == 4 and client.sent == 4
    server.fail_first = [500] * 10
    with pytest.raises(Exception, match="HTTP 500 .* 4 times"):
        _client(server, tmp_path).complete(_client(server, tmp_path).body(MESSAGES, 6))


def test_timeout_is_named_after_its_retries(server, api_key, tmp_path):
    server.delay_s = 0.6
    client = _client(server, tmp_path, timeout_s=0.2, retries=1)
    t0 = time.perf_counter()
    with pytest.raises(EndpointTimeout, match="0.2 s"):
        client.complete(client.body(MESSAGES, 5))
    assert time.perf_counter() - t0 < 3 and client.sent == 2


def test_max_requests_stops_before_any_call(trained, server, api_key):
    out, store = trained
    cfg = _llm_cfg(out, server, **{"autointerp.max_requests": 3, "autointerp.cache_dir": str(out / "empty_cache")})
    with pytest.raises(RequestBudgetExceeded, match="max_requests = 3; nothing was sent"):
        autointerp_variant(cfg, "topk", store, progress=False, force=True)
    assert server.requests == []


def test_bad_endpoints_get_named_errors(server, api_key, tmp_path, monkeypatch):
    body = {"model": "judge-model", "messages": MESSAGES, "max_tokens": 5, "n": 1, "stream": False}
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = ChatClient(f"http://127.0.0.1:{port}/v1", "judge-model", ENV, cache=ResponseCache(tmp_path / "c0"), backoff_s=0.01)
    with pytest.raises(EndpointUnreachable, match="cannot reach"):
        dead.complete_many([body])
    monkeypatch.setenv(ENV, "sk-wrong")
    with pytest.raises(AuthenticationFailed, match=f"refused the key in \\${ENV} \\(HTTP 401"):
        _client(server, tmp_path).complete_many([body])
    monkeypatch.setenv(ENV, KEY)
    other = ChatClient(server.url, "no-such-model", ENV, cache=ResponseCache(tmp_path / "c1"))
    with pytest.raises(ModelNotServed, match="does not serve the model 'no-such-model' .*; it serves judge-model"):
        other.complete_many([other.body(MESSAGES, 5)])
    server.models = None  # an endpoint without /models: the chat request's 404 names the model
    other = ChatClient(server.url, "no-such-model", ENV, cache=ResponseCache(tmp_path / "c2"))
    with pytest.raises(ModelNotServed, match="does not exist"):
        other.complete_many([other.body(MESSAGES, 5)])
    server.models, server.raw_body = ["judge-model"], b"<html>proxy error</html>"
    with pytest.raises(BadResponse, match="not an OpenAI chat completion"):
        _client(server, tmp_path).complete(body)
    monkeypatch.delenv(ENV)
    with pytest.raises(MissingApiKey, match=ENV):
        _client(server, tmp_path).complete_many([{**body, "max_tokens": 7}])


def test_answers_that_do_not_parse_are_counted_never_scored_zero(trained, server, api_key):
    out, store = trained
    server.score_answer = "Probably the third and the fifth ones."
    cfg = _llm_cfg(out, server, **{"autointerp.cache_dir": str(out / "cache_unparsed")})
    result = autointerp_variant(cfg, "topk", store, progress=False, force=True)
    n = result["counts"]["n_explained"]
    assert result["counts"]["unparsed"] == {"explanation": 0, "score": n, "shuffled": n, "temporal": n}
    assert result["counts"]["n_scored"] == 0 and result["eval_result_metrics"]["autointerp"]["autointerp_score"] is None
    r = next(iter(result["eval_result_unstructured"].values()))
    assert r["score"] is None and r["unparsed_answer"] == server.score_answer


def test_answer_parsing_follows_saebench():
    assert prompts.parse_predictions("2, 5 and 7.") == [2, 5, 7]
    assert prompts.parse_predictions("None") == [] and prompts.parse_predictions("None.") == []
    assert prompts.parse_predictions("2, maybe 5") is None
    assert prompts.parse_explanation("This latent activates on dates in the 1990s.") == "dates in the 1990s"
    assert prompts.chance_score(4, 4, 14) == pytest.approx(CHANCE_4_OF_14) == pytest.approx(116 / 196)


def test_api_key_env_must_be_a_variable_name():
    with pytest.raises(ConfigError, match="autointerp.api_key_env"):
        load_config("params/ci.yaml", {"autointerp.api_key_env": KEY})
    with pytest.raises(ConfigError, match="autointerp.base_url"):
        load_config("params/ci.yaml", {"autointerp.backend": "openai", "autointerp.model": "m"})


# ------------------------------------------------------------------ sampling and the oracle
def _truth_scan(store, features: list[int]) -> Scan:
    """A scan whose latent i IS true feature features[i] (its activation: the true code)."""
    batch = next(store.split("eval").batches(10_000, shuffle=False))
    codes = batch.true_codes_BTG.float().masked_fill(batch.special_BT[..., None], 0.0)
    return Scan(latents=list(range(len(features))), acts_NTL=codes[..., features].to(torch.bfloat16),
                special_NT=batch.special_BT.bool(), tokens_NT=None, true_active_NTG=batch.true_codes_BTG > 0,
                fire_counts_F=(codes[..., features] > 0).sum((0, 1)), n_alive=len(features))


def test_sampling_follows_saebench(trained):
    _, store = trained
    cfg = load_config("params/ci.yaml").autointerp
    scan_ = _truth_scan(store, list(range(12)))
    x = scan_.acts_NTL[..., 0].float()
    top = top_indices(x, 12, cfg.buffer)
    values = [float(x[r, c]) for r, c in top]
    assert values == sorted(values, reverse=True) and all(cfg.buffer <= c < x.shape[1] - cfg.buffer for _, c in top)
    assert all(abs(c1 - c2) > cfg.buffer for i, (r1, c1) in enumerate(top) for r2, c2 in top[i + 1:] if r1 == r2)
    s = sample_latent(scan_, 0, cfg)
    assert not isinstance(s, str)
    assert sorted(e.kind for e in s.scoring) == ["iw"] * 2 + ["random"] * 10 + ["top"] * 2
    assert sorted(e.kind for e in s.generation) == ["iw"] * 5 + ["top"] * 10
    assert [e.max_act for e in s.generation] == sorted((e.max_act for e in s.generation), reverse=True)
    floor = min(float(x[r, c]) for r, c in top)
    assert all(float(x[e.sequence, e.position]) < floor for e in s.generation + s.scoring if e.kind == "iw")
    for e in s.generation:  # marks sit exactly on the tokens above 1% of the largest top activation
        text = prompts.window_text(e, None, mark=True)
        assert text.count("<<") == sum(a > e.threshold for a in e.acts) and len(e.acts) == 2 * cfg.buffer + 1
    assert s.scoring != sample_latent(scan_, 1, cfg).scoring and sample_latent(scan_, 0, cfg).scoring == s.scoring


def test_oracle_is_exact_on_a_perfect_dictionary_and_at_chance_otherwise(trained):
    """Latents that are the true features score 1; scored with unrelated explanations (shuffled, or
    another feature named) they land at the chance level of their answer sizes; a random scorer
    lands at its chance level for every latent."""
    _, store = trained
    cfg = load_config("params/ci.yaml").autointerp
    G = store.ground_truth().n_features
    features = list(range(0, G, 2))
    scan_ = _truth_scan(store, features)
    out = run_autointerp(scan_, cfg, OracleJudge(scan_, {i: f for i, f in enumerate(features)}), random_control=True)
    rs = [r for r in out["per_latent"].values() if r.get("score") is not None]
    assert len(rs) >= 8  # the others have too few activations below their top ones for the iw examples
    assert all(r["score"] == 1.0 and r["temporal"]["score"] == 1.0 for r in rs)
    m = out["metrics"]
    assert m["autointerp"]["autointerp_score"] == 1.0
    assert m["controls"]["random_scorer_max_deviation_from_chance"] < 0.06  # 200 draws per latent
    assert m["controls"]["random_scorer_score"] == pytest.approx(m["controls"]["chance_random_guess"], abs=0.01)
    chance_shuffled = sum(r["shuffled"]["chance"] for r in rs) / len(rs)
    assert m["controls"]["shuffled_explanation_score"] == pytest.approx(chance_shuffled, abs=0.08)
    assert m["controls"]["shuffled_explanation_score"] < 0.8
    # SAEBench's labels: random sequences never positive, so the truth loses where a random window holds the feature
    sb = load_config("params/ci.yaml", {"autointerp.random_example_labels": "saebench"}).autointerp
    out_sb = run_autointerp(scan_, sb, OracleJudge(scan_, {i: f for i, f in enumerate(features)}))
    for r in out_sb["per_latent"].values():
        kinds = r["scoring_kinds"]
        assert all(kinds[i - 1] != "random" for i in r["correct seqs"])
        assert r["score"] == pytest.approx(1 - sum(k == "random" and i in r["predictions"] for i, k in enumerate(kinds, 1)) / 14)


def test_oracle_on_a_trained_sae_writes_saebench_json(trained):
    out, store = trained
    cfg = ci_config(out, **{"autointerp.backend": "oracle"})
    result = autointerp_variant(cfg, "topk", store, progress=False)
    assert schema_errors(result, saebench_schema("autointerp")) == []
    m = result["eval_result_metrics"]
    assert 0 < m["autointerp"]["autointerp_score"] <= 1
    assert m["controls"]["random_scorer_max_deviation_from_chance"] < 0.06
    assert set(m["oracle"]) >= {"recovered", "partly_matched", "unmatched"}
    written = json.loads((out / "ci" / "eval" / "autointerp" / "topk.json").read_text())
    assert written["eval_key"] == result["eval_key"] and written["tsae"]["config_hash"]
    kept = autointerp_variant(cfg, "topk", store, progress=False)
    assert kept["eval_id"] == result["eval_id"]  # unchanged inputs: the file is kept
    assert autointerp_variant(ci_config(out), "topk", store) is None  # backend none: nothing runs
