"""LVLM engines behind one interface (base.py): `make_engine(cfg)` picks one by `engine.kind`."""

from __future__ import annotations

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.engines.base import ChatRequest, Completion, Engine, EngineError, EngineTimeout

LVLM_ENGINES = ("hf", "vllm", "openai")

__all__ = [
    "ChatRequest",
    "Completion",
    "Engine",
    "EngineError",
    "EngineTimeout",
    "LVLM_ENGINES",
    "make_engine",
]


def make_engine(cfg: EngineConfig, labeler: LabelerConfig) -> Engine:
    """Load the engine once (heavy imports happen here, not at module import)."""
    if not cfg.model:
        raise UsageError("engine.model is empty: pass --model with a hub id or a local model directory")
    if cfg.kind == "hf":
        from rgvlm_ray.labelers.engines.hf import HFEngine

        return HFEngine(cfg)
    if cfg.kind == "vllm":
        from rgvlm_ray.labelers.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, labeler)
    if cfg.kind == "openai":
        from rgvlm_ray.labelers.engines.openai import OpenAIEngine

        return OpenAIEngine(cfg)
    raise UsageError(f"engine.kind {cfg.kind!r} is not an LVLM engine; expected one of {LVLM_ENGINES}")
