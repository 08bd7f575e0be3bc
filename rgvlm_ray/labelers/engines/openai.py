"""`openai` engine: any OpenAI-compatible /chat/completions endpoint, with the standard library only.

Images travel as PNG data URLs. Requests run `max_concurrency` at a time; 429, 5xx, timeouts and connection
errors are retried with exponential backoff (a server's Retry-After wins when it is longer). The API key is
read from the environment variable named by `engine.openai.api_key_env`, never from a config file.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from rgvlm_ray.config import EngineConfig
from rgvlm_ray.labelers.engines.base import ChatRequest, Completion, Conversation, with_image_parts
from rgvlm_ray.labelers.images import data_url

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_RETRY_AFTER_S = 60.0


def to_openai_messages(messages: Conversation) -> list[dict]:
    return with_image_parts(
        messages, lambda image: {"type": "image_url", "image_url": {"url": data_url(image)}}
    )


def request_body(req: ChatRequest, cfg: EngineConfig) -> dict:
    body: dict = {
        "model": cfg.model,
        "messages": to_openai_messages(req.messages),
        "max_tokens": req.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": cfg.seed if req.seed is None else req.seed,
    }
    if req.schema is not None and cfg.openai.response_format_json_schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "scores", "schema": req.schema, "strict": True},
        }
    return body


def parse_response(payload) -> Completion:
    if not isinstance(payload, dict):
        return Completion(None, error=f"reply is not a JSON object: {str(payload)[:200]}")
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    try:
        text = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return Completion(None, error=f"response without choices[0].message.content: {str(payload)[:200]}")
    return Completion(
        text=text if isinstance(text, str) else "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=details.get("cached_tokens"),
    )


def _retry_after(headers) -> float:
    try:
        return min(float(headers.get("Retry-After", 0)), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):  # an HTTP date: fall back to our own backoff
        return 0.0


class OpenAIEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.model_id = cfg.model
        self.supports_schema = cfg.openai.response_format_json_schema
        self.url = cfg.openai.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(cfg.openai.api_key_env, "") if cfg.openai.api_key_env else ""
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.openai.max_concurrency))

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        return list(self.pool.map(self.complete, requests))

    def complete(self, req: ChatRequest) -> Completion:
        data = json.dumps(request_body(req, self.cfg)).encode()
        attempts = self.cfg.openai.max_retries + 1
        last = ""
        for attempt in range(attempts):
            wait = self.cfg.openai.backoff_s * 2**attempt
            try:
                http = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(http, timeout=self.cfg.timeout_s) as resp:
                    return parse_response(json.loads(resp.read()))
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                last = f"HTTP {exc.code}: {detail}"
                if exc.code not in RETRY_STATUS and exc.code < 500:
                    hint = ""
                    if (
                        exc.code == 400
                        and req.schema is not None
                        and self.cfg.openai.response_format_json_schema
                    ):
                        hint = " (if the endpoint lacks json_schema support: engine.openai.response_format_json_schema=false)"
                    return Completion(None, error=last + hint)
                wait = max(wait, _retry_after(exc.headers))
            except TimeoutError:
                last = f"no reply within engine.timeout_s={self.cfg.timeout_s:g}s"
            except (urllib.error.URLError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError):
                    last = f"no reply within engine.timeout_s={self.cfg.timeout_s:g}s"
                else:
                    last = f"connection failed: {reason}"
            except json.JSONDecodeError as exc:
                return Completion(None, error=f"reply is not JSON: {exc}")
            if attempt + 1 < attempts:
                log.info(
                    "openai request failed (%s); retry %d/%d in %.2fs", last, attempt + 1, attempts - 1, wait
                )
                time.sleep(wait)
        return Completion(None, error=f"{self.url}: gave up after {attempts} attempt(s): {last}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
