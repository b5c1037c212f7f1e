"""Opt-in disk cache of tuned weights, keyed by everything that determines them.

The key covers the base model's raw weights and every patch on them, the whole configuration of
the model as its forward pass uses it (fingerprint.py: model options, object patches such as
model_sampling, wrappers, injections with the inflation settings, weight wrappers, hooks), the
temporal layers' initial weights, the clip's latents (the training window), the conditioning, the
settings that change the result, and the pack's algorithm (the source of the modules that compute
the tuning), with the torch and device it ran on. Re-running a shared workflow skips the tuning; a
change to any of these tunes again.

Entries are untrusted files: read into memory (never memory-mapped: a file truncated under the
server must not crash it), and checked against what the tuning would produce (names, shapes,
float32, finite values, a loss per step). A bad entry is a miss with a warning, and is replaced.
Writes are atomic (a temporary file renamed into place) and a failed write only warns.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from pathlib import Path

import safetensors.torch
import torch

from . import files, fingerprint, inflate, tuned, windows

CACHE_FORMAT = 2
# Gradient checkpointing changes nothing; the precision counts as what it resolved to (cache_key).
_RESULT_SETTINGS = ("steps", "learning_rate", "seed", "trainable", "optimizer", "betas",
                    "weight_decay", "eps", "max_grad_norm")
# The modules whose code computes the tuned weights: any change to them is a new algorithm.
_ALGORITHM_MODULES = ("attention.py", "inflate.py", "tuning.py", "tuned.py", "tune_cache.py", "windows.py")
_MAX_HEADER = 100 << 20


def _algorithm_version() -> str:
    digest = hashlib.blake2b(digest_size=16)
    here = Path(__file__).resolve().parent
    for name in _ALGORITHM_MODULES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def _feed_weights(describer: fingerprint.Describer, patcher) -> None:
    """Raw weights of `patcher` and every weight patch on them (LoRA, tuned deltas, ...)."""
    for key, ((weight, _), *patches) in sorted(tuned.key_patches(patcher).items()):
        describer.put(key)
        describer.tensor(weight)
        describer.value([p[:4] for p in patches])  # strength, patch data, strength_model, offset


def _feed_model(describer: fingerprint.Describer, patcher) -> None:
    base = patcher.model
    describer.value({
        "class": type(base),
        "model_type": getattr(base, "model_type", None),
        "unet_config": getattr(getattr(base, "model_config", None), "unet_config", None),
        "latent_format": getattr(base, "latent_format", None),
        "dtype": getattr(getattr(base, "diffusion_model", None), "dtype", None),
        "manual_cast_dtype": getattr(base, "manual_cast_dtype", None),
        "model_sampling": patcher.get_model_object("model_sampling"),  # object patch, or the model's own
    })
    describer.patcher_config(patcher)
    _feed_weights(describer, patcher)
    for key, models in sorted(patcher.additional_models.items()):  # the temporal layers, ControlNets, ...
        describer.put(f"additional {key}")
        for model in models:
            describer.patcher_config(model)
            _feed_weights(describer, model)


def model_fingerprint(patcher) -> str:
    """Hash of everything of a model that its forward pass uses."""
    describer = fingerprint.Describer(hashlib.blake2b(digest_size=16))
    _feed_model(describer, patcher)
    return describer.digest.hexdigest()


def cache_key(patcher, positive, latent: dict, settings, autocast_dtype: torch.dtype | None) -> str:
    """`autocast_dtype`: the dtype the tune computes in (None: the model's own), which is what the
    precision setting resolved to on this device: "auto" is bf16 on one CPU and fp32 on the next."""
    describer = fingerprint.Describer(hashlib.blake2b(digest_size=16))
    describer.put(f"tuneavideo-tune-cache-{CACHE_FORMAT} {_algorithm_version()} torch {torch.__version__} "
                  f"device {torch.device(patcher.load_device).type}")
    _feed_model(describer, patcher)
    describer.value(latent)
    describer.value(positive)
    describer.value({name: getattr(settings, name) for name in _RESULT_SETTINGS})
    describer.value({"autocast_dtype": autocast_dtype})
    window = windows.effective(settings.window_frames, latent["samples"].shape[0])
    if window:  # only then: a window no shorter than the clip tunes exactly as the whole clip does
        describer.value({"window_frames": window})
    return describer.digest.hexdigest()


def expected_entry(patcher, names) -> dict[str, tuple]:
    """name -> shape of every tensor an entry of this tuning must hold."""
    shapes = {}
    for owner in (patcher, inflate.temporal_patcher(patcher)):
        for key, ((weight, _), *_) in tuned.key_patches(owner).items():
            shapes[key if owner is patcher else "diffusion_model." + key] = tuple(weight.shape)
    return {name: shapes.get(name) for name in names}


def _read_metadata(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(_MAX_HEADER, len(data) - 8):
        raise ValueError("the header is longer than the file")
    return json.loads(data[8:8 + length]).get("__metadata__") or {}


def _validate(deltas: dict, metadata: dict, expected: dict[str, tuple], steps: int) -> list[float]:
    if set(deltas) != set(expected):
        extra, missing = sorted(set(deltas) - set(expected)), sorted(set(expected) - set(deltas))
        raise ValueError(f"it holds other tensors than this tuning makes (unknown {extra[:3]}, missing {missing[:3]})")
    for name, delta in deltas.items():
        if delta.dtype != torch.float32:
            raise ValueError(f"{name} is {delta.dtype}, not float32")
        if tuple(delta.shape) != expected[name]:
            raise ValueError(f"{name} has shape {tuple(delta.shape)}, not {expected[name]}")
        if not torch.isfinite(delta).all():
            raise ValueError(f"{name} holds non-finite values")
    losses = json.loads(metadata["losses"])
    if (not isinstance(losses, list) or len(losses) != steps
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in losses)):
        raise ValueError(f"its losses are not {steps} finite numbers")
    return [float(x) for x in losses]


def load(cache_dir: str, key: str, expected: dict[str, tuple], steps: int):
    """(deltas, losses) stored under `key` if the entry is sound, else None (with a warning).

    The file is read into memory: the tensors own their memory, so nothing stays mapped to a file
    that someone may change or truncate while the tuned model is alive.
    """
    path = os.path.join(cache_dir, f"{key}.safetensors")
    if not os.path.isfile(path):
        return None
    try:
        data = Path(path).read_bytes()
        deltas = safetensors.torch.load(data)
        losses = _validate(deltas, _read_metadata(data), expected, steps)
    except Exception as e:  # whatever is wrong, the entry is unusable: a miss that gets replaced
        logging.warning("Tune-A-Video: ignoring the bad tune cache entry %s (%s: %s); tuning again and "
                        "replacing it.", os.path.basename(path), type(e).__name__, e)
        return None
    return deltas, losses


def store(cache_dir: str, key: str, deltas: dict, losses: list[float]) -> str | None:
    """Write the entry atomically; on failure (disk full, no permission, ...) warn and return None."""
    path = os.path.join(cache_dir, f"{key}.safetensors")
    tensors = {name: t.detach().cpu().contiguous() for name, t in deltas.items()}
    try:
        os.makedirs(cache_dir, exist_ok=True)
        files.write_atomic(path, lambda partial: safetensors.torch.save_file(
            tensors, partial, metadata={"losses": json.dumps(losses)}))
    except Exception as e:
        logging.warning("Tune-A-Video: could not store the tuned weights in the tune cache (%s: %s); the "
                        "result is kept, but the next run tunes again.", type(e).__name__, e)
        return None
    return path
