"""The vllm adapter's request building, tested without vllm (it is a GPU-only extra)."""

from __future__ import annotations

import importlib.util
import time

import pytest
from PIL import Image

from rgvlm_ray.config import load_config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import build_labeler
from rgvlm_ray.labelers.engines import ChatRequest, EngineError, EngineTimeout
from rgvlm_ray.labelers.engines.vllm import (
    call_with_timeout,
    llm_kwargs,
    sampling_kwargs,
    to_completion,
    to_vllm_messages,
)
from rgvlm_ray.labelers.prompts import scores_schema


def cfg():
    c = load_config()
    c.engine.kind, c.engine.model = "vllm", "Qwen/Qwen2.5-VL-7B-Instruct"
    return c


def test_llm_kwargs_follow_the_config():
    c = cfg()
    c.engine.vllm.tensor_parallel_size, c.engine.vllm.max_model_len = 2, 8192
    c.labeler.window = 10
    kw = llm_kwargs(c.engine, c.labeler)
    assert kw["enable_prefix_caching"] is True
    assert kw["limit_mm_per_prompt"] == {"image": 11}  # window + 1 observations
    assert kw["tensor_parallel_size"] == 2 and kw["max_model_len"] == 8192
    assert kw["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    c.engine.vllm.limit_mm_per_prompt = 40
    assert llm_kwargs(c.engine, c.labeler)["limit_mm_per_prompt"] == {"image": 40}


def test_messages_and_sampling():
    image = Image.new("RGB", (4, 4))
    msgs = [
        {"role": "system", "content": "judge"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "image": image}]},
    ]
    out = to_vllm_messages(msgs)
    assert out[0] == msgs[0]
    assert out[1]["content"][1] == {"type": "image_pil", "image_pil": image}
    c = cfg()
    kw = sampling_kwargs(ChatRequest(msgs, scores_schema(3), 50, seed=9), c.engine)
    assert kw["max_tokens"] == 50 and kw["seed"] == 9 and kw["temperature"] == c.engine.temperature


def test_request_output_to_completion():
    class Seq:
        text, token_ids = '{"scores": [1]}', [1, 2, 3, 4]

    class Out:
        prompt_token_ids, outputs, num_cached_tokens = list(range(100)), [Seq()], 96

    c = to_completion(Out())
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.cached_tokens) == ('{"scores": [1]}', 100, 4, 96)


def test_call_with_timeout():
    assert call_with_timeout(lambda: 3, 1.0) == 3
    with pytest.raises(EngineTimeout, match="timeout_s"):
        call_with_timeout(lambda: time.sleep(2), 0.05)
    with pytest.raises(EngineError, match="boom"):
        call_with_timeout(lambda: (_ for _ in ()).throw(RuntimeError("boom")), 1.0)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_says_how_to_install():
    c = cfg()
    with pytest.raises(UsageError, match=r"pip install 'rgvlm-ray\[vllm\]'"):
        build_labeler(c.engine, c.labeler)
