"""`hf` engine: transformers AutoModelForImageTextToText + AutoProcessor, batched, constrained by xgrammar.

The same load path serves a hub id (Qwen/Qwen2.5-VL-7B-Instruct) and a local dir (the tiny test model).

Prefix reuse (`engine.hf.prefix_reuse`, on by default): the KV cache of each conversation the caller marks
`continued` (stage 1) is kept, and a later request that extends it (stage 2) is fed only its new tokens, with
no pixels (prefix_cache.py). Requests without a kept prefix in the same batch are encoded in full, in their
own `generate` call.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import weakref
from itertools import groupby

from transformers import AutoConfig, AutoProcessor
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLProcessor

from rgvlm_ray.config import EngineConfig
from rgvlm_ray.labelers.engines import prefix_cache
from rgvlm_ray.labelers.engines.base import (
    ChatRequest,
    Completion,
    Conversation,
    EngineTimeout,
    chunks,
    images_of,
)

log = logging.getLogger(__name__)
# Models whose positions `prefix_cache` reproduces: Qwen's multimodal rotary positions (get_rope_index).
PREFIX_REUSE_MODELS = ("qwen2_vl", "qwen2_5_vl")


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor, which needs torchvision (we never send video)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):  # noqa: N801 (transformers' naming)
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


IMAGE_ONLY_PROCESSORS = {
    Qwen2VLConfig: ImageOnlyQwen2VLProcessor,
    Qwen2_5_VLConfig: ImageOnlyQwen2_5_VLProcessor,
}


def register_processors() -> None:
    """Register the image-only Qwen-VL processors with AutoProcessor (idempotent).

    The tiny model is saved with `ImageOnlyQwen2VLProcessor` as its processor class, which AutoProcessor
    resolves only after this registration, so tests go through exactly the load path of real checkpoints.
    """
    for config_cls, proc_cls in IMAGE_ONLY_PROCESSORS.items():
        AutoProcessor.register(config_cls, proc_cls, exist_ok=True)


def load_processor(model: str, revision: str | None = None):
    """AutoProcessor, falling back to the image-only Qwen-VL processor when the stock one needs torchvision.

    A hub checkpoint names its stock processor class (e.g. Qwen2_5_VLProcessor) in processor_config.json, so
    the registration alone does not help there; on a machine without torchvision its video processor fails
    to load, and the image-only subclass (same tokenizer, image processor and chat template) takes over.
    """
    register_processors()
    try:
        return AutoProcessor.from_pretrained(model, revision=revision)
    except (AttributeError, ImportError, OSError, ValueError) as exc:
        fallback = IMAGE_ONLY_PROCESSORS.get(type(AutoConfig.from_pretrained(model, revision=revision)))
        if fallback is None:
            raise
        log.info("stock processor for %s did not load (%s); using %s", model, exc, fallback.__name__)
        return fallback.from_pretrained(model, revision=revision)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def to_hf_messages(messages: Conversation) -> list[dict]:
    """Images become bare placeholders for the chat template; the pixels go to the processor separately."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [{"type": "image"} if p["type"] == "image" else p for p in content]
        out.append({"role": m["role"], "content": content})
    return out


class HFEngine:
    supports_schema = True

    def __init__(self, cfg: EngineConfig) -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForImageTextToText

        self.cfg = cfg
        self.model_id = cfg.model
        self.device = resolve_device(cfg.device)
        self.processor = load_processor(cfg.model, cfg.revision)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only batching: prompts end where generation starts
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForImageTextToText.from_pretrained(
            cfg.model, revision=cfg.revision, dtype=resolve_dtype(cfg.dtype, self.device)
        ).to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id])
        vocab = self.model.config.get_text_config().vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=vocab, stop_token_ids=self.eos_ids
        )
        self.compiler = xgr.GrammarCompiler(info)
        self._grammars: dict[str, object] = {}
        self._torch = torch
        self.image_token_id = getattr(self.model.config, "image_token_id", None)
        self.prefixes = self._prefix_store()
        self._digest_memo: dict[int, tuple] = {}
        # transformers 5.24 renamed generate's `past_key_values` to `cache` (the GPU image has 5.17).
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _prefix_store(self) -> prefix_cache.PrefixStore | None:
        if not self.cfg.hf.prefix_reuse:
            return None
        model_type = self.model.config.model_type
        if model_type not in PREFIX_REUSE_MODELS:
            log.warning(
                "prefix reuse is off for model_type %r (supported: %s); stage 2 re-encodes its prompt",
                model_type,
                ", ".join(PREFIX_REUSE_MODELS),
            )
            return None
        return prefix_cache.PrefixStore(self.cfg.hf.prefix_cache_tokens)

    def _grammar(self, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = self.compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        results: dict[int, Completion] = {}

        # One generate call needs one max_new_tokens, and either all rows constrained or none. Rows of one
        # sampled batch draw different random numbers, so self-consistency samples can share a call.
        def key(i: int) -> tuple:
            r = requests[i]
            return (r.schema is None, r.max_new_tokens)

        order = sorted(range(len(requests)), key=key)
        for _, group in groupby(order, key=key):
            for idx in chunks(list(group), self.cfg.batch_size):
                try:
                    out = self._generate_batch([requests[i] for i in idx])
                except Exception as exc:  # a timeout or OOM in one batch keeps the other batches' results
                    log.warning("hf generate on %d conversation(s) failed: %s", len(idx), exc)
                    out = [Completion(None, error=f"{type(exc).__name__}: {exc}") for _ in idx]
                for i, c in zip(idx, out, strict=True):
                    results[i] = c
        return [results[i] for i in range(len(requests))]

    def _generate_batch(self, batch: list[ChatRequest]) -> list[Completion]:
        texts = [
            self.processor.apply_chat_template(
                to_hf_messages(r.messages), tokenize=False, add_generation_prompt=True
            )
            for r in batch
        ]
        plans: dict[int, prefix_cache.Plan] = {}
        if self.prefixes is not None and len(self.prefixes):
            digests = [self._digests(r) for r in batch]
            # Only rows over the pixels of a kept prefix can continue one (stage 1's rows never do).
            rows = [i for i, d in enumerate(digests) if self.prefixes.candidates(d)]
            raw = self.tokenizer([texts[i] for i in rows])["input_ids"] if rows else []
            for i, ids in zip(rows, raw, strict=True):
                p = prefix_cache.plan(self.prefixes, ids, digests[i], self.image_token_id)
                if p is not None:
                    plans[i] = p
        hits = list(plans)
        misses = [i for i in range(len(batch)) if i not in plans]
        out: dict[int, Completion] = {}
        if misses:
            done = self._generate_full([batch[i] for i in misses], [texts[i] for i in misses])
            out.update(zip(misses, done, strict=True))
        if hits:
            done = self._generate_cached([batch[i] for i in hits], [plans[i] for i in hits])
            out.update(zip(hits, done, strict=True))
        return [out[i] for i in range(len(batch))]

    def _generate_full(self, batch: list[ChatRequest], texts: list[str]) -> list[Completion]:
        """Prompts encoded from scratch: images through the vision tower, every token through the LM."""
        images = [im for r in batch for im in images_of(r.messages)]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        result = self._generate(batch, dict(inputs))
        mask = inputs["attention_mask"]
        width = inputs["input_ids"].shape[1]
        starts = (width - mask.sum(dim=1)).tolist()
        if self.prefixes is not None and any(r.continued for r in batch):
            deltas = self._rope_deltas(inputs)
            ids = inputs["input_ids"].tolist()
            for i, r in enumerate(batch):
                if r.continued:
                    digests = self._digests(r)
                    runs = prefix_cache.image_runs(ids[i][starts[i] :], self.image_token_id)
                    if len(runs) == len(digests):
                        columns = list(range(starts[i], width))
                        self._keep(result, i, columns, width, digests, tuple(runs), deltas[i])
        cached = [0] * len(batch) if self.prefixes is not None else [None] * len(batch)
        return self._completions(result, width, mask.sum(dim=1).tolist(), cached)

    def _generate_cached(self, batch: list[ChatRequest], plans: list[prefix_cache.Plan]) -> list[Completion]:
        """Prompts that continue kept prefixes: only each row's uncached suffix is fed, no pixels."""
        b = prefix_cache.assemble(plans, self.tokenizer.pad_token_id, self.device)
        from transformers import DynamicCache

        cache = DynamicCache(b.layers, config=self.model.config)
        inputs = {
            "input_ids": b.input_ids,
            "attention_mask": b.attention_mask,
            "position_ids": b.position_ids,
            self._cache_kwarg: cache,
        }
        result = self._generate(batch, inputs)
        width = b.input_ids.shape[1]
        for i, (r, p) in enumerate(zip(batch, plans, strict=True)):
            if r.continued:
                pre = p.prefix
                self._keep(result, i, b.columns[i], width, pre.images, pre.image_tokens, pre.rope_delta)
        return self._completions(result, width, [len(p.ids) for p in plans], [p.reuse for p in plans])

    def _generate(self, batch: list[ChatRequest], inputs: dict):
        from xgrammar.contrib.hf import LogitsProcessor

        torch = self._torch
        kwargs: dict = {
            "max_new_tokens": batch[0].max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "return_dict_in_generate": True,
        }
        if self.cfg.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p)
            torch.manual_seed(self.cfg.seed if batch[0].seed is None else batch[0].seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if batch[0].schema is not None:
            # A fresh processor per call (it keeps matcher state); one grammar per row of the batch.
            kwargs["logits_processor"] = [LogitsProcessor([self._grammar(r.schema) for r in batch])]
        start = time.monotonic()
        with torch.inference_mode():
            # max_time stops generation at the deadline; the check below turns that into an error.
            out = self.model.generate(**inputs, max_time=self.cfg.timeout_s, **kwargs)
        elapsed = time.monotonic() - start
        if elapsed >= self.cfg.timeout_s:
            raise EngineTimeout(
                f"hf generate on {len(batch)} conversation(s) ran {elapsed:.0f}s, past engine.timeout_s="
                f"{self.cfg.timeout_s:g}; raise it or lower engine.batch_size / max_new_tokens"
            )
        return out

    def _completions(
        self, result, width: int, prompt_tokens: list[int], cached: list[int | None]
    ) -> list[Completion]:
        new = result.sequences[:, width:].cpu()
        texts_out = self.processor.batch_decode(new, skip_special_tokens=True)
        return [
            Completion(text=t, prompt_tokens=int(p), completion_tokens=self._count(row), cached_tokens=c)
            for t, p, row, c in zip(texts_out, prompt_tokens, new.tolist(), cached, strict=True)
        ]

    def _digests(self, request: ChatRequest) -> tuple[str, ...]:
        """Pixel digests of a request's images, each image hashed once (stage 2 shows stage 1's image objects)."""
        out = []
        for image in images_of(request.messages):
            ref, digest = self._digest_memo.get(id(image), (None, None))
            if ref is None or ref() is not image:  # an id is reused once its image is gone
                digest = prefix_cache.image_digest(image)
                self._digest_memo[id(image)] = (weakref.ref(image, self._forget_digest(id(image))), digest)
            out.append(digest)
        return tuple(out)

    def _forget_digest(self, key: int):
        return lambda _ref: self._digest_memo.pop(key, None)

    def _rope_deltas(self, inputs) -> list[int]:
        """Per row: mrope position minus token index for text after the last image (0 for text only).

        `generate` has just computed them for this batch and left them on the model, where transformers itself
        reads them to continue a generation; recomputing costs a Python loop over every token.
        """
        n = inputs["input_ids"].shape[0]
        if inputs.get("image_grid_thw") is None:
            return [0] * n
        kept = getattr(self.model.model, "rope_deltas", None)
        if isinstance(kept, self._torch.Tensor) and kept.numel() == n:
            return kept.view(-1).tolist()
        extra = {k: inputs[k] for k in ("mm_token_type_ids", "image_grid_thw") if k in inputs}
        _, deltas = self.model.model.get_rope_index(
            inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra
        )
        return deltas.view(-1).tolist()

    def _keep(
        self, result, row: int, columns: list[int], width: int, images, image_tokens, delta: int
    ) -> None:
        """Keep one row's prompt (at `columns`) + fed answer KV, for a later call that extends it."""
        if self.prefixes is None:
            return
        cache = getattr(result, "cache", None)
        if cache is None:
            cache = getattr(result, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            # A sliding-window, quantized or static cache cannot be sliced per row like this.
            log.warning(
                "prefix reuse is off: %s returns a %s; stage 2 re-encodes its prompt",
                self.model_id,
                type(cache).__name__,
            )
            self.prefixes = None
            return
        cache_width = cache.get_seq_length()
        seq = result.sequences[row].tolist()
        end = width + prefix_cache.fed_length(seq[width:], self.eos_ids, cache_width, width)
        columns = [*columns, *range(width, end)]
        kv = prefix_cache.take([(layer.keys, layer.values) for layer in layers], row, columns)
        ids = [seq[c] for c in columns]
        self.prefixes.add(prefix_cache.Prefix(ids, images, image_tokens, kv, int(delta)))

    def _count(self, row: list[int]) -> int:
        """Generated tokens up to and including the first stop token (the rest is padding)."""
        for i, tok in enumerate(row):
            if tok in self.eos_ids:
                return i + 1
        return len(row)

    def close(self) -> None:
        self.model = None
        self._grammars.clear()
        if self.prefixes is not None:
            self.prefixes.clear()
