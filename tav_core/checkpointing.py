"""Gradient checkpointing of UNet blocks through ComfyUI object patches.

Each ResBlock and SpatialTransformer is replaced, on the training clone only, by a *view*: an instance
of a subclass of its own class that shares the original's state (parameters, submodules, hooks), so
every state-dict key and isinstance() check stays the same, and whose forward runs under
non-reentrant `torch.utils.checkpoint`. Non-reentrant checkpointing differentiates through every
tensor the block uses, including the trainable deltas that weight wrappers inject, so down, mid and
up blocks all receive gradients (the official code's reentrant checkpointing gives the down blocks
none).
"""
from __future__ import annotations

import contextvars

import torch
import torch.utils.checkpoint
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

_VIEW_CLASSES: dict[type, type] = {}


def _checkpointed_forward(self, *args, **kwargs):
    forward = super(type(self), self).forward
    # The recomputation in backward must see this call's state: the frame count that the
    # GroupNorm hooks read from a context variable, and transformer_options as they are now
    # (ComfyUI keeps mutating that dict, e.g. the current block, as the forward pass moves on).
    context = contextvars.copy_context()
    args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
    kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}

    def run(*a, **k):
        return context.run(forward, *a, **k)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, **kwargs)


def checkpointed_view(module: torch.nn.Module) -> torch.nn.Module:
    cls = type(module)
    if cls not in _VIEW_CLASSES:
        _VIEW_CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": _checkpointed_forward})
    view = object.__new__(_VIEW_CLASSES[cls])
    view.__dict__ = module.__dict__
    return view


ALL_BLOCKS = "all blocks"
HIGHEST_RESOLUTION = "highest-resolution blocks"
SCOPES = (ALL_BLOCKS, HIGHEST_RESOLUTION)


def _width(module) -> int:
    return module.out_channels if isinstance(module, ResBlock) else module.in_channels


def add_checkpointing(patcher, scope: str = ALL_BLOCKS) -> None:
    """Object-patch the UNet's ResBlocks and SpatialTransformers with checkpointed views.

    HIGHEST_RESOLUTION checkpoints only the blocks of the first level (those as wide as the UNet's
    `model_channels`): they hold most of the activations (their token count is 4x the next level's)
    for a fraction of the recomputation.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown checkpointing scope {scope!r}; choose one of {SCOPES}")
    unet = patcher.model.diffusion_model
    for path, module in unet.named_modules():
        if type(module) in (ResBlock, SpatialTransformer) and (
                scope == ALL_BLOCKS or _width(module) == unet.model_channels):
            patcher.add_object_patch(f"diffusion_model.{path}", checkpointed_view(module))
