"""Opt-in disk cache of tuned weights, keyed by everything that determines them.

The key covers the base model (raw weights, patches on them, the temporal layers' initial weights),
the clip's latents, the conditioning and the settings that change the result, so re-running a
shared workflow skips the tuning and a change to any input tunes again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import safetensors.torch
import torch

from . import inflate, windows

CACHE_FORMAT = 1
_RESULT_SETTINGS = ("steps", "learning_rate", "seed", "trainable", "precision", "optimizer", "betas",
                    "weight_decay", "eps", "max_grad_norm")  # gradient checkpointing changes nothing


def _feed(digest, value) -> None:
    if torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed(digest, item)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(str(key).encode())
            _feed(digest, value[key])
    else:
        digest.update(repr(value).encode())


def model_fingerprint(patcher, digest=None) -> str:
    """Hash of a model's raw weights and of every patch on them (LoRA, tuned deltas, ...)."""
    digest = digest or hashlib.blake2b(digest_size=16)
    for owner in (patcher, *([inflate.temporal_patcher(patcher)] if inflate.is_inflated(patcher) else [])):
        for key, ((weight, _), *patches) in sorted(owner.get_key_patches().items()):
            digest.update(key.encode())
            _feed(digest, weight)
            _feed(digest, [p[:4] for p in patches])  # strength, patch data, strength_model, offset
    return digest.hexdigest()


def cache_key(patcher, positive, latents: torch.Tensor, settings) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"tuneavideo-tune-cache-{CACHE_FORMAT}".encode())
    model_fingerprint(patcher, digest)
    _feed(digest, latents)
    _feed(digest, [[c, {k: v for k, v in o.items() if torch.is_tensor(v)}] for c, o in positive])
    _feed(digest, {name: getattr(settings, name) for name in _RESULT_SETTINGS})
    window = windows.effective(settings.window_frames, latents.shape[0])
    if window:  # only then: a window no shorter than the clip tunes exactly as the whole clip does
        _feed(digest, {"window_frames": window})
    return digest.hexdigest()


def load(cache_dir: str, key: str):
    """(deltas, losses) stored under `key`, or None."""
    path = os.path.join(cache_dir, f"{key}.safetensors")
    if not os.path.isfile(path):
        return None
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            deltas = {name: f.get_tensor(name) for name in f.keys()}
            losses = json.loads(f.metadata()["losses"])
    except Exception as e:  # a damaged entry is a miss, not a failure
        logging.warning("Tune-A-Video: ignoring unreadable cache entry %s: %s", path, e)
        return None
    return deltas, losses


def store(cache_dir: str, key: str, deltas: dict, losses: list[float]) -> str:
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{key}.safetensors")
    partial = f"{path}.{os.getpid()}.partial"
    tensors = {name: t.detach().cpu().contiguous() for name, t in deltas.items()}
    safetensors.torch.save_file(tensors, partial, metadata={"losses": json.dumps(losses)})
    os.replace(partial, path)
    return path
