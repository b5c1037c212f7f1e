"""Tuned-weight files in the official Tune-A-Video naming, saved from and loaded as weight patches.

The official repository saves a diffusers `UNet3DConditionModel`, e.g.
`down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight`. ComfyUI's own
`unet_to_diffusers` maps diffusers names to its UNet's; we extend each transformer block's entry to
the block's `attn_temp`/`norm_temp` tensors. The official ResNet convs are `InflatedConv3d`, Conv2d
subclasses with the 2D shapes, so a whole official state dict maps onto ComfyUI's 2D UNet through the
same map.

Loading applies everything through `tuned.add_deltas`, as deltas from the model's raw weights, so
LoRA and other patches already on the model stay on top.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import safetensors
import safetensors.torch
import torch

import comfy.utils

from . import files, inflate, tuned

TEMPORAL_SUFFIXES = ("norm_temp.weight", "norm_temp.bias", "attn_temp.to_q.weight", "attn_temp.to_k.weight",
                     "attn_temp.to_v.weight", "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias")
_BLOCK_ANCHOR = "attn1.to_q.weight"  # one entry of unet_to_diffusers per transformer block
UNET_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
HASH_KEY = "base_model_hash"
VERSION_KEY = "pack_version"
_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_RAW_CHUNK = 16  # raw weights compared per chunk, so a whole-UNet file never needs a second full copy


class WeightsError(ValueError):
    pass


def official_to_comfy(unet_config: dict) -> dict[str, str]:
    """Official (diffusers UNet3D) name -> our name (`diffusion_model.<path>`), temporal tensors included.

    Covers every tensor a UNet of this config may have; filter by the model's own tensors.
    """
    names = {}
    for official, ours in comfy.utils.unet_to_diffusers(unet_config).items():
        names[official] = tuned.UNET_PREFIX + ours
        if official.endswith(_BLOCK_ANCHOR):
            official_block, our_block = official[:-len(_BLOCK_ANCHOR)], ours[:-len(_BLOCK_ANCHOR)]
            for suffix in TEMPORAL_SUFFIXES:
                names[official_block + suffix] = tuned.UNET_PREFIX + our_block + suffix
    return names


def _model_tensors(inflated) -> dict[str, torch.Tensor]:
    """Every tensor of an inflated model, by our name: the UNet's and the temporal layers'."""
    tensors = {tuned.UNET_PREFIX + k: v for k, v in inflated.model.diffusion_model.state_dict().items()}
    temporal = inflate.temporal_layers(inflated).state_dict()
    return tensors | {tuned.UNET_PREFIX + k: v for k, v in temporal.items()}


def base_model_hash(patcher) -> str:
    """Fingerprint of the base UNet: sha256 (first 16 hex digits) of every transformer block's
    attn2.to_k weight, which Tune-A-Video never tunes. Raw weights, so LoRA and tuning leave it
    unchanged; rounded to float16, so fp16 and fp32 loads of the same checkpoint agree."""
    blocks = inflate.transformer_blocks(patcher.model.diffusion_model)
    names = [f"{tuned.UNET_PREFIX}{path}.attn2.to_k.weight" for path, _, _ in blocks]
    digest = hashlib.sha256()
    for name, value in tuned.raw_weights(patcher, names).items():
        digest.update(name.encode())
        digest.update(value.to(torch.float16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def pack_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', _PYPROJECT.read_text(), re.MULTILINE)
    return match.group(1) if match else "unknown"


def _strings(metadata: dict) -> dict[str, str]:
    """safetensors metadata is str -> str: other values are stored as JSON."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def save_tuned(patcher, path, metadata: dict | None = None) -> dict[str, str]:
    """Write the tuned and added tensors of an inflated model, with their effective values, under
    the official names, as .safetensors; returns the metadata written.

    Metadata: the model's tuned metadata (frames, prompt, steps, learning rate as One-Shot Tune
    records them), then `metadata`, then the base model hash and the pack version.
    """
    if not inflate.is_inflated(patcher):
        raise WeightsError("this MODEL has no Tune-A-Video weights; connect the output of One-Shot Tune "
                           "or Load Tuned Weights.")
    to_official = {ours: official for official, ours in
                   official_to_comfy(patcher.model.model_config.unet_config).items()}
    names = tuned.tuned_names(patcher)
    unnamed = [n for n in names if n not in to_official]
    if unnamed:
        raise WeightsError(f"no official Tune-A-Video name for {unnamed[:3]}: this UNet layout cannot be saved.")
    tensors = {to_official[n]: v.cpu().contiguous() for n, v in tuned.effective_weights(patcher, names).items()}
    written = {**_strings(tuned.tuned_metadata(patcher)), **_strings(metadata or {}),
               HASH_KEY: base_model_hash(patcher), VERSION_KEY: pack_version()}
    try:
        files.write_atomic(str(path), lambda partial: safetensors.torch.save_file(tensors, partial, metadata=written))
    except Exception as e:  # SafetensorError, a full disk, no permission: say so plainly
        raise WeightsError(f"could not write {Path(path).name} ({type(e).__name__}: {e}). Check the free space "
                           "and permissions of ComfyUI's output folder.") from e
    return written


def weights_file(path) -> Path:
    """The file to read: `path` itself, or the UNet of a `save_pretrained` folder."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "unet", path):
            for name in UNET_FILES:
                if (folder / name).is_file():
                    return folder / name
        raise WeightsError(f"the folder {path.name} holds no unet/{UNET_FILES[0]} or .bin; pick a "
                           "Tune-A-Video output folder (save_pretrained) or a weights file.")
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; pick an existing weights file.")
    return path


def read_weights(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file or a pickled state dict, read without running code."""
    path = weights_file(path)
    try:
        if path.suffix.lower() == ".safetensors":
            with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
                state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
        else:
            state, metadata = torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as e:  # whatever the reader says, the file is unusable
        raise WeightsError(f"could not read {path.name} ({type(e).__name__}: {e}). Pick a .safetensors or "
                           ".bin file saved by Save Tuned Weights or by Tune-A-Video.") from e
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path.name} is not a state dict of tensors; pick a file saved by Save Tuned "
                           "Weights or a Tune-A-Video UNet.")
    return state, metadata


def _check(state: dict, to_ours: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a file that does not fit this model, naming what is wrong."""
    unknown = sorted(set(state) - set(to_ours))
    if unknown:
        raise WeightsError(f"the file holds {len(unknown)} tensors this model has no place for (e.g. "
                           f"{', '.join(unknown[:3])}): it was made for another architecture. Load it onto "
                           "the base model it was tuned from.")
    needed = [o for o, ours in to_ours.items() if tuned.is_temporal(ours)]
    missing = [o for o in needed if o not in state]
    if len(missing) == len(needed):
        raise WeightsError("the file holds no attn_temp/norm_temp tensors: it is not a Tune-A-Video file "
                           "(an image UNet?). Pick a file saved by Save Tuned Weights or a tuned Tune-A-Video UNet.")
    if missing:
        blocks = sorted({re.sub(r"\.(attn|norm)_temp\..*$", "", o) for o in missing})
        raise WeightsError(f"the file lacks {len(missing)} of the {len(needed)} temporal tensors (e.g. "
                           f"{', '.join(missing[:3])}), in blocks {', '.join(blocks)}: it is incomplete or "
                           "made for another UNet. Pick a complete file for this base model.")
    for official, value in state.items():
        if not value.is_floating_point():
            raise WeightsError(f"tensor {official} is {value.dtype} in the file; weights must be floating point. "
                               "The file is damaged or not a weights file.")
        if not torch.isfinite(value).all():
            raise WeightsError(f"tensor {official} holds NaN or infinite values: the file is damaged (or its "
                               "tuning diverged). Tune again, or pick another file.")
        expected = tensors[to_ours[official]].shape
        if value.shape != expected:
            raise WeightsError(f"tensor {official} has shape {tuple(value.shape)} in the file but "
                               f"{tuple(expected)} in this model: the file was made for a base model of another "
                               "size. Load it onto the base model it was tuned from.")


def _deltas(model, state: dict[str, torch.Tensor], dtypes: dict) -> dict[str, torch.Tensor]:
    """File value - raw weight for every temporal tensor and every UNet tensor the file changes.

    A UNet tensor counts as changed if it differs at the model's own precision, so the untouched
    tensors of a float32 official file do not all turn into deltas on a float16 model.
    """
    names, deltas = list(state), {}
    for start in range(0, len(names), _RAW_CHUNK):
        for name, raw in tuned.raw_weights(model, names[start:start + _RAW_CHUNK]).items():
            value, raw = state[name].to(torch.float32), raw.cpu()
            if tuned.is_temporal(name) or not torch.equal(value.to(dtypes[name]), raw.to(dtypes[name])):
                deltas[name] = value - raw
    return deltas


def load_tuned(patcher, path):
    """An inflated clone of `patcher` carrying the weights of `path`: a file of Save Tuned Weights, or an
    official tuned UNet (whole state dict as .safetensors/.bin, or a `save_pretrained` folder)."""
    if patcher.get_attachment(tuned.TUNED_ATTACHMENT) is not None:
        raise WeightsError("this MODEL already carries tuned weights (from One-Shot Tune or Load Tuned "
                           "Weights), which the file's would add to. Connect the model from before them.")
    model = inflate.inflate(patcher)
    tensors = _model_tensors(model)
    to_ours = {o: ours for o, ours in official_to_comfy(model.model.model_config.unet_config).items()
               if ours in tensors}
    state, metadata = read_weights(path)
    _check(state, to_ours, tensors)
    saved_hash = metadata.get(HASH_KEY)
    if saved_hash is not None and saved_hash != base_model_hash(model):
        logging.warning("Tune-A-Video: %s was tuned on another base model (hash %s); loading it anyway.",
                        Path(path).name, saved_hash)
    state = {to_ours[o]: v for o, v in state.items()}
    deltas = _deltas(model, state, {n: tensors[n].dtype for n in state})
    return tuned.add_deltas(model, deltas, metadata)
