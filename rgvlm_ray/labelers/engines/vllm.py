"""`vllm` engine: a thin adapter over `vllm.LLM.chat` (vLLM 0.29 API) for GPU nodes.

Everything vLLM-independent (engine arguments, message conversion, sampling arguments, token accounting)
lives in plain functions tested without vllm. Prefix caching is on, so a stage-2 request, which extends its
stage-1 conversation verbatim, re-uses the stage-1 KV cache; `num_cached_tokens` reports how much.
"""

from __future__ import annotations

import threading

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.engines.base import (
    ChatRequest,
    Completion,
    Conversation,
    EngineError,
    EngineTimeout,
    with_image_parts,
)

INSTALL_HINT = (
    "the vllm engine needs vLLM: pip install 'rgvlm-ray[vllm]' on a GPU node (or use engine.kind=hf)"
)


def import_vllm():
    try:
        import vllm
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from None
    return vllm, StructuredOutputsParams


def llm_kwargs(cfg: EngineConfig, labeler: LabelerConfig) -> dict:
    """Arguments for `vllm.LLM(...)`."""
    # RG-VLM shows a window's window + 1 frames; GVL adds the episode's first frame as its 0% anchor.
    needed = labeler.window + (2 if labeler.strategy == "gvl" else 1)
    images = cfg.vllm.limit_mm_per_prompt or needed
    if images < needed:  # vLLM would refuse every prompt of a full window
        raise UsageError(
            f"engine.vllm.limit_mm_per_prompt={images} is below the {needed} images a window of "
            f"labeler.window={labeler.window} shows (labeler.strategy={labeler.strategy}); raise it or leave it unset"
        )
    return {
        "model": cfg.model,
        "revision": cfg.revision,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "tensor_parallel_size": cfg.vllm.tensor_parallel_size,
        "gpu_memory_utilization": cfg.vllm.gpu_memory_utilization,
        "max_model_len": cfg.vllm.max_model_len,
        "limit_mm_per_prompt": {"image": images},
        "enable_prefix_caching": True,
    }


def to_vllm_messages(messages: Conversation) -> list[dict]:
    return with_image_parts(messages, lambda image: {"type": "image_pil", "image_pil": image})


def sampling_kwargs(req: ChatRequest, cfg: EngineConfig) -> dict:
    """Arguments for `SamplingParams(...)`, minus `structured_outputs` (added with the vllm class)."""
    return {
        "n": 1,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": cfg.seed if req.seed is None else req.seed,
        "max_tokens": req.max_new_tokens,  # vLLM's default is only 16
    }


def to_completion(output) -> Completion:
    """A `RequestOutput` (duck-typed) to a Completion."""
    seq = output.outputs[0]
    return Completion(
        text=seq.text,
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=len(seq.token_ids),
        cached_tokens=getattr(output, "num_cached_tokens", None),
    )


def call_with_timeout(fn, timeout_s: float):
    """Run `fn()` in a helper thread; raise EngineTimeout if it has not returned in time.

    vLLM cannot cancel a running `chat`, so the thread is abandoned; the caller should treat the engine as
    broken (a Ray actor would be restarted).
    """
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="vllm-chat")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise EngineTimeout(f"vLLM chat did not return within engine.timeout_s={timeout_s:g}s")
    if "error" in box:
        raise EngineError(f"vLLM chat failed: {box['error']}") from box["error"]
    return box["value"]


class VLLMEngine:
    supports_schema = True

    def __init__(self, cfg: EngineConfig, labeler: LabelerConfig) -> None:
        vllm, self._structured = import_vllm()
        self._vllm = vllm
        self.cfg = cfg
        self.model_id = cfg.model
        self.llm = vllm.LLM(**llm_kwargs(cfg, labeler))

    def _params(self, req: ChatRequest):
        kwargs = sampling_kwargs(req, self.cfg)
        if req.schema is not None:
            kwargs["structured_outputs"] = self._structured(json=req.schema)
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        messages = [to_vllm_messages(r.messages) for r in requests]
        params = [self._params(r) for r in requests]
        outputs = call_with_timeout(
            lambda: self.llm.chat(messages, sampling_params=params, use_tqdm=False), self.cfg.timeout_s
        )
        return [to_completion(o) for o in outputs]

    def close(self) -> None:
        self.llm = None
