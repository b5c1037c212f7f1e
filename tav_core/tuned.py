"""Tuned weights as weight patches on an inflated clone, so that LoRA and other patches stack.

Tensors are named as in an inflated ComfyUI UNet: `diffusion_model.<module path>.<param>`, where the
temporal layers sit in their transformer blocks (`...transformer_blocks.0.attn_temp.to_q.weight`)
although they live in the temporal ModelPatcher. Those names map 1:1 to the official checkpoint's
through ComfyUI's UNet key map (see weights.py).
"""
from __future__ import annotations

import torch

import comfy.lora
import comfy.model_patcher
import comfy.utils

from . import inflate

UNET_PREFIX = "diffusion_model."
TUNED_ATTACHMENT = "tuneavideo.tuned"
_TEMPORAL_PARTS = (".attn_temp.", ".norm_temp.")


def is_temporal(name: str) -> bool:
    return any(part in name for part in _TEMPORAL_PARTS)


def _owner(patcher, name: str):
    """(ModelPatcher, its own key) that holds the tensor `name`."""
    if is_temporal(name):
        return inflate.temporal_patcher(patcher), name[len(UNET_PREFIX):]
    return patcher, name


def temporal_names(patcher) -> list[str]:
    return [UNET_PREFIX + k for k in inflate.temporal_layers(patcher).state_dict()]


def every_name(patcher) -> list[str]:
    """Every tensor of the inflated model: the UNet's, then the temporal layers'."""
    return [k for k in key_patches(patcher) if k.startswith(UNET_PREFIX)] + temporal_names(patcher)


def key_patches(patcher) -> dict[str, list]:
    """`ModelPatcher.get_key_patches`: key -> [(raw weight, its convert function), *weight patches].

    Not ComfyUI's own, which fails on quantised layers in ComfyUI 0.33: their state dicts also list the scale and
    format of the weight (`weight_scale`, `comfy_quant`), which are no attributes to look up. They are part of the
    weight (a QuantizedTensor) and of its convert function, so they are left out here."""
    out = {}
    for key in patcher.model_state_dict():
        path, _, attribute = key.rpartition(".")
        if not hasattr(comfy.utils.get_attr(patcher.model, path) if path else patcher.model, attribute):
            continue
        weight, _, convert = comfy.model_patcher.get_key_weight(patcher.model, key)
        if key in patcher.backup:  # loaded with its patches applied in place: the raw weight is backed up
            weight = patcher.backup[key].weight
        if key in patcher.hook_backup:
            weight = patcher.hook_backup[key][0]
        out[key] = [(weight, convert or _unconverted)] + list(patcher.patches.get(key, ()))
    return out


def _unconverted(weight, **kwargs):
    return weight


def tuned_names(patcher) -> list[str]:
    """Every tensor a tuned-weight file holds: all temporal ones plus the tuned UNet ones."""
    tuned = patcher.get_attachment(TUNED_ATTACHMENT) or {}
    return temporal_names(patcher) + sorted(tuned.get("names", ()))


def tuned_metadata(patcher) -> dict:
    return dict((patcher.get_attachment(TUNED_ATTACHMENT) or {}).get("metadata", {}))


def add_deltas(patcher, deltas: dict[str, torch.Tensor], metadata: dict | None = None):
    """An inflated clone with `deltas` added to its weights as "diff" patches.

    The temporal ModelPatcher is cloned too, so the input model keeps its own weights.
    """
    model = inflate.inflate(patcher)
    layers = inflate.temporal_patcher(model).clone()
    model.set_additional_models(inflate.KEY, [layers])
    unet_deltas, temporal_deltas = {}, {}
    for name, delta in deltas.items():
        owner, key = _owner(model, name)
        (temporal_deltas if owner is layers else unet_deltas)[key] = ("diff", (delta,))
    for owner, patches in ((model, unet_deltas), (layers, temporal_deltas)):
        added = owner.add_patches(patches, 1.0)
        missing = set(patches) - set(added)
        if missing:
            raise KeyError(f"the model has no tensors named {sorted(missing)[:5]}")
    previous = patcher.get_attachment(TUNED_ATTACHMENT) or {}
    names = set(previous.get("names", ())) | {n for n in deltas if not is_temporal(n)}
    model.set_attachments(TUNED_ATTACHMENT, {"names": sorted(names),
                                             "metadata": {**previous.get("metadata", {}), **(metadata or {})}})
    return model


def _weights(patcher, names, with_patches: bool) -> dict[str, torch.Tensor]:
    out, walked = {}, {}
    for name in names:
        owner, key = _owner(patcher, name)
        if id(owner) not in walked:  # one state-dict walk per ModelPatcher
            walked[id(owner)] = key_patches(owner)
        patches = walked[id(owner)].get(key)
        if patches is None:
            raise KeyError(f"the model has no tensor {name}")
        (weight, convert), *rest = patches
        value = convert(weight.detach().to(torch.float32, copy=True), inplace=True)
        out[name] = comfy.lora.calculate_weight(rest, value, key) if with_patches and rest else value
    return out


def effective_weights(patcher, names) -> dict[str, torch.Tensor]:
    """The float32 values of `names` with all their patches applied, as ComfyUI computes them."""
    return _weights(patcher, names, with_patches=True)


def raw_weights(patcher, names) -> dict[str, torch.Tensor]:
    """The float32 values of `names` without any patch: what patches are relative to."""
    return _weights(patcher, names, with_patches=False)
