"""Checkpoint folders: weights as safetensors, optimizer state via torch.load(weights_only=True), the rest JSON.

A run folder (`--out`) holds Ray Train's bookkeeping and one `checkpoint_<step:08d>/` per saved step:
    model.safetensors   online network            spec.json    ModelSpec (architecture)
    target.safetensors  Polyak target network     vocab.json   goal vocabulary
    optimizer.pt        Adam + lr schedule state  config.json  the full config (credentials redacted)
    run.json            step, reward mode and scale, dataset seed pool and env (what evaluation needs)
Nothing here is ever unpickled: safetensors and JSON cannot run code, and `weights_only=True` only builds
tensors and plain containers.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rgvlm_ray import storage
from rgvlm_ray.config import Config, StorageConfig, redacted
from rgvlm_ray.iql.model import IQLNet, ModelSpec
from rgvlm_ray.iql.vocab import Vocab

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{8})$")
FILES = ("model.safetensors", "spec.json", "vocab.json", "run.json")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _state_bytes(net: torch.nn.Module) -> bytes:
    # safetensors refuses shared or non-contiguous storage; clone() gives each tensor its own.
    return save_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()})


def save_checkpoint(
    directory: str,
    net: IQLNet,
    target: IQLNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    vocab: Vocab,
    cfg: Config,
    run: dict[str, Any],
) -> None:
    """Write a complete checkpoint into a local folder (Ray Train uploads it to the run's storage)."""
    os.makedirs(directory, exist_ok=True)
    files: dict[str, bytes] = {
        "model.safetensors": _state_bytes(net),
        "target.safetensors": _state_bytes(target),
        "spec.json": net.spec.to_json().encode(),
        "vocab.json": vocab.to_json().encode(),
        "config.json": json.dumps(redacted(cfg), indent=2).encode(),
        "run.json": json.dumps(run, indent=2).encode(),
    }
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buf)
    files["optimizer.pt"] = buf.getvalue()
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def load_training_state(
    directory: str,
    net: IQLNet,
    target: IQLNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore everything a resumed run needs from a local checkpoint folder; returns run.json."""

    def read(name: str) -> bytes:
        with open(os.path.join(directory, name), "rb") as f:
            return f.read()

    net.load_state_dict(load_safetensors(read("model.safetensors")))
    target.load_state_dict(load_safetensors(read("target.safetensors")))
    state = torch.load(io.BytesIO(read("optimizer.pt")), weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads(read("run.json"))


def latest_checkpoint(path: str, cfg: StorageConfig | None = None) -> str | None:
    """The newest complete checkpoint under a run folder, the folder itself if it is one, else None."""
    fs, p = storage.get_fs(path, cfg)
    if fs.exists(f"{p}/spec.json"):
        return path
    if not fs.exists(p):
        return None
    steps = []
    for entry in fs.ls(p, detail=False):
        match = CHECKPOINT_RE.match(storage.basename(entry))
        if match and fs.exists(f"{entry.rstrip('/')}/run.json"):
            steps.append((int(match.group(1)), entry))
    if not steps:
        return None
    return storage.with_scheme(path, max(steps)[1].rstrip("/"))


def read_file(path: str, name: str, cfg: StorageConfig | None = None) -> bytes:
    fs, p = storage.get_fs(path, cfg)
    with fs.open(f"{p}/{name}", "rb") as f:
        return f.read()


def read_json(path: str, name: str, cfg: StorageConfig | None = None) -> dict[str, Any]:
    return json.loads(read_file(path, name, cfg))


def load_policy(path: str, cfg: StorageConfig | None = None) -> tuple[IQLNet, Vocab, dict[str, Any]]:
    """(network in eval mode, vocabulary, run.json) from one checkpoint folder, local or s3://."""
    spec = ModelSpec.from_json(read_file(path, "spec.json", cfg).decode())
    net = IQLNet(spec)
    net.load_state_dict(load_safetensors(read_file(path, "model.safetensors", cfg)))
    vocab = Vocab.from_json(read_file(path, "vocab.json", cfg).decode())
    return net.eval(), vocab, read_json(path, "run.json", cfg)
