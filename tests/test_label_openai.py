"""The openai engine against a real HTTP server on 127.0.0.1 (stdlib http.server in a thread)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rgvlm_ray.config import load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers import build_labeler
from rgvlm_ray.labelers.engines import ChatRequest
from rgvlm_ray.labelers.engines.openai import OpenAIEngine
from rgvlm_ray.labelers.prompts import scores_schema
from tests.label_fixtures import episodes

COL = lambda suffix: fmt.label_column("rgvlm", suffix)  # noqa: E731
Reply = tuple[int, dict, dict]  # status, JSON body, headers


def ok(text: str, prompt_tokens: int = 11, cached: int | None = None) -> Reply:
    usage: dict = {"prompt_tokens": prompt_tokens, "completion_tokens": 3}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": usage}, {}


@dataclass
class Server:
    url: str
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    script: list[Reply | Callable[[dict], Reply]] = field(default_factory=list)  # consumed in order
    default: Callable[[dict], Reply] | None = None
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, body: dict) -> Reply:
        with self.lock:
            self.requests.append(body)
            step = self.script.pop(0) if self.script else self.default
        if step is None:
            return 500, {"error": "script exhausted"}, {}
        return step(body) if callable(step) else step


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.headers.append(dict(self.headers))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            # A request counts as in flight until its reply is decided, not until the bytes are written: the
            # client may read the reply and send its next request before this thread gets to a later decrement.
            try:
                time.sleep(state.delay_s)
                status, payload, headers = state.reply(body)
            finally:
                with state.lock:
                    state.in_flight -= 1
            try:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def engine_cfg(server: Server, **openai):
    cfg = load_config()
    e = cfg.engine
    e.kind, e.model, e.timeout_s = "openai", "served-judge", 5.0
    e.openai.base_url, e.openai.backoff_s, e.openai.max_retries = server.url, 0.01, 3
    for k, v in openai.items():
        setattr(e.openai, k, v)
    return cfg


def judge(body: dict, wrap: bool = False) -> Reply:
    """A stand-in model: analysis for stage 1, valid scores (count from the schema or the prompt) for stage 2."""
    last = body["messages"][-1]["content"]
    if not isinstance(last, str):
        return ok("The agent turns towards the ball, then walks to it.", prompt_tokens=50)
    if "response_format" in body:
        n = body["response_format"]["json_schema"]["schema"]["properties"]["scores"]["minItems"]
    else:
        n = int(re.search(r"exactly (\d+)", last).group(1))
    answer = json.dumps({"scores": [(i * 3) % 11 for i in range(n)]})
    return ok(f"Here you go:\n```json\n{answer}\n```" if wrap else answer, prompt_tokens=60, cached=50)


REQ = ChatRequest([{"role": "user", "content": "hello"}], None, 16)


def test_429_then_500_are_retried(server):
    server.script = [
        (429, {"error": "slow down"}, {"Retry-After": "0"}),
        (500, {"error": "boom"}, {}),
        ok("fine"),
    ]
    out = OpenAIEngine(engine_cfg(server).engine).generate([REQ])
    assert out[0].text == "fine" and out[0].error is None
    assert len(server.requests) == 3
    assert out[0].prompt_tokens == 11 and out[0].completion_tokens == 3


def test_persistent_500_gives_up_with_a_message(server):
    server.default = lambda body: (500, {"error": "down"}, {})
    out = OpenAIEngine(engine_cfg(server, max_retries=2).engine).generate([REQ])
    assert out[0].text is None
    assert "HTTP 500" in out[0].error and "3 attempt(s)" in out[0].error
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.script = [(400, {"error": "bad response_format"}, {})]
    req = ChatRequest(REQ.messages, scores_schema(2), 16)
    out = OpenAIEngine(engine_cfg(server).engine).generate([req])
    assert "HTTP 400" in out[0].error and "response_format_json_schema=false" in out[0].error
    assert len(server.requests) == 1


def test_timeouts_are_retried_then_reported(server):
    server.delay_s = 0.5
    cfg = engine_cfg(server, max_retries=1)
    cfg.engine.timeout_s = 0.1
    start = time.monotonic()
    out = OpenAIEngine(cfg.engine).generate([REQ])
    assert time.monotonic() - start < 3
    assert out[0].text is None and "timeout_s" in out[0].error
    time.sleep(0.6)  # let the server finish the abandoned requests
    assert len(server.requests) == 2


def test_request_carries_images_schema_and_key(server, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
    server.script = [ok('{"scores": [1, 2]}')]
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "image": Image.new("RGB", (8, 8))},
            ],
        }
    ]
    cfg = engine_cfg(server, api_key_env="JUDGE_KEY")
    cfg.engine.seed = 7
    OpenAIEngine(cfg.engine).generate([ChatRequest(msgs, scores_schema(2), 40)])
    body, headers = server.requests[0], server.headers[0]
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert body["model"] == "served-judge" and body["max_tokens"] == 40 and body["seed"] == 7
    image = body["messages"][0]["content"][1]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == scores_schema(2)


def test_concurrency_is_bounded(server):
    server.delay_s = 0.05
    server.default = lambda body: ok("x")
    out = OpenAIEngine(engine_cfg(server, max_concurrency=2).engine).generate([REQ] * 6)
    assert [c.text for c in out] == ["x"] * 6
    assert server.max_in_flight == 2


def test_two_stage_labeling_through_the_endpoint(server):
    server.default = judge
    cfg = engine_cfg(server)
    cfg.labeler.window, cfg.labeler.overlap = 8, 2
    labeler = build_labeler(cfg.engine, cfg.labeler)
    rows = episodes()
    out = labeler.label_rows(rows)
    stats = labeler.stats()
    for row, cols in zip(rows, out, strict=True):
        t = len(row["actions"])
        assert cols[COL("status")] == ["ok"] * t
        assert all(0 <= s <= 10 for s in cols[COL("score")]) and len(cols[COL("score")]) == t
    stage2 = [b for b in server.requests if "response_format" in b]
    stage1 = [b for b in server.requests if "response_format" not in b]
    assert len(stage1) == len(stage2) == stats["windows"]
    # Stage 2 repeats stage 1's messages verbatim, then the analysis and the scoring request.
    # (Requests run concurrently, so pair them by content rather than by arrival order.)
    prompts1 = [b["messages"] for b in stage1]
    assert all(b["messages"][:2] in prompts1 and len(b["messages"]) == 4 for b in stage2)
    assert all(b["messages"][2]["role"] == "assistant" for b in stage2)
    assert stats["stage2_cached_tokens"] == 50 * len(stage2)


def test_endpoint_without_schema_support_free_text_is_parsed(server):
    server.default = lambda body: judge(body, wrap=True)
    cfg = engine_cfg(server, response_format_json_schema=False)
    labeler = build_labeler(cfg.engine, cfg.labeler)
    _, short = episodes()
    cols = labeler.label_rows([short])[0]
    assert all("response_format" not in b for b in server.requests)
    t = len(short["actions"])
    assert cols[COL("score")] == [float((i * 3) % 11) for i in range(t)]


def test_malformed_replies_are_retried_then_recorded(server):
    analysis = ok("analysis")
    server.script = [analysis, ok("7/10 overall"), ok('{"scores": [1]}'), ok('{"scores": [99, 1]}')]
    cfg = engine_cfg(server, response_format_json_schema=False)
    cfg.labeler.max_parse_retries = 2
    labeler = build_labeler(cfg.engine, cfg.labeler)
    _, short = episodes()
    cols = labeler.label_rows([short])[0]
    t = len(short["actions"])
    assert len(server.requests) == 4  # stage 1, then stage 2 and two retries
    assert cols[COL("status")] == ["parse_error"] * t
    assert cols[COL("score")] == [None] * t and cols[COL("reward")] == [None] * t
    assert "3 attempt(s)" in cols[COL("message")][0] and "scores for" in cols[COL("message")][0]
    assert labeler.stats()["parse_failures"] == 3
    assert cols[COL("analysis")] == ["analysis"]
    # The retry shows the model its unusable reply and asks again, extending the same conversation.
    retry = server.requests[2]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "7/10 overall"}
    assert server.requests[1]["messages"] == retry[:-2]


def test_odd_reply_bodies_are_errors_not_crashes():
    from rgvlm_ray.labelers.engines.openai import parse_response

    assert parse_response([1, 2]).error.startswith("reply is not a JSON object")
    assert "choices" in parse_response({"choices": []}).error
    c = parse_response({"choices": [{"message": {"content": "x"}}]})
    assert (c.text, c.prompt_tokens, c.cached_tokens, c.error) == ("x", 0, None, None)
