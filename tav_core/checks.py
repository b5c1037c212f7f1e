"""Checks of what reaches the model, shared by One-Shot Tune, DDIM Invert and Video Sample.

Sizes follow the pack's one rule (sizes.py): frame sides are multiples of 8 * 2^(downsamples).
"""
from __future__ import annotations

import math

from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample

from .sizes import VAE_FACTOR, size_problem


def downsamples(unet) -> int:
    return sum(1 for m in unet.modules() if isinstance(m, Downsample))


def pixel_multiple(unet) -> int:
    """Frame sides must be multiples of this for `unet`."""
    return VAE_FACTOR * 2 ** downsamples(unet)


def check_latents(unet, latents, error, min_frames: int = 1) -> None:
    """Raise `error` unless `latents` is a video latent [F, C, h, w] this UNet can take."""
    shape = tuple(getattr(latents, "shape", ()))
    if len(shape) != 4 or shape[0] < min_frames:
        raise error(f"the latent must hold the clip's frames [F,C,h,w]{f' with F >= {min_frames}' if min_frames > 1 else ''};"
                    f" got {list(shape)}. Encode the Load Video frames with VAE Encode.")
    if shape[1] != unet.in_channels:
        raise error(f"the latent has {shape[1]} channels but the model expects {unet.in_channels}; "
                    "encode the clip with this model's VAE.")
    multiple = pixel_multiple(unet)
    problem = size_problem(shape[3] * VAE_FACTOR, shape[2] * VAE_FACTOR, multiple)
    if problem:
        raise error(f"frames of {shape[3] * VAE_FACTOR}x{shape[2] * VAE_FACTOR} (latent {shape[3]}x{shape[2]}) do not "
                    f"fit this model, which needs sides that are multiples of {multiple} ({problem}). Set Load "
                    "Video's width and height accordingly.")


def context_dim(unet) -> int:
    block = next(m for m in unet.modules() if isinstance(m, BasicTransformerBlock))
    return block.attn2.to_k.in_features


def check_conditioning(unet, conditioning, error, name: str = "conditioning") -> None:
    """Raise `error` unless every cond of `conditioning` has the model's text width."""
    expected = context_dim(unet)
    if not isinstance(conditioning, list):
        raise error(f"{name} is not a CONDITIONING; connect a CLIP Text Encode.")
    for cond, _ in conditioning:
        if getattr(cond, "ndim", 0) != 3 or cond.shape[-1] != expected:
            width = cond.shape[-1] if getattr(cond, "ndim", 0) else None
            raise error(f"the {name} has width {width} (shape {list(getattr(cond, 'shape', ()))}) but the model "
                        f"expects [batch, tokens, {expected}]: encode the prompt with this checkpoint's CLIP.")


def check_finite(name: str, value, error, low: float | None = None, high: float | None = None) -> None:
    """Raise `error` unless `value` is a finite number within [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, not {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} {value} is outside {low}..{high}.")
