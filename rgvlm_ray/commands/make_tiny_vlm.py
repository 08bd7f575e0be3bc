"""`rgvlm make-tiny-vlm`."""

from __future__ import annotations

import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.tiny_vlm import BUILDERS


def main(cfg: Config) -> int:
    require(cfg, "tiny_model.out")
    t = cfg.tiny_model
    if t.kind not in BUILDERS:
        raise UsageError(f"--kind must be one of {sorted(BUILDERS)}, got {t.kind!r}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = BUILDERS[t.kind](t.out, t.seed)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(json.dumps({"out": str(out), "kind": t.kind, "bytes": size}))
    return 0
