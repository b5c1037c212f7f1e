"""Tune-A-Video inflation of a ComfyUI UNet, on a clone of its ModelPatcher.

Everything goes through ComfyUI's extension points, so the shared base model is never changed:
- sparse-causal self-attention: an attn1 replace patch on every transformer block;
- temporal attention (`norm_temp` + `attn_temp`) after each block's feed-forward: forward hooks that
  a `PatcherInjection` registers when the clone is loaded and removes when it is unloaded. The
  temporal weights live in their own small ModelPatcher, attached as an additional model, so that
  ComfyUI moves, patches and frees them like any model;
- video-wide GroupNorm in the ResNet blocks and the output layer: forward hooks of the same
  injection, reading the frame count that a DIFFUSION_MODEL wrapper publishes for the call.

The frame count travels in `transformer_options[FRAMES_OPTION]`. An OUTER_SAMPLE wrapper records it
from the latent for every sampler (core KSampler included), and the DIFFUSION_MODEL wrapper checks
that each model call holds whole videos, however ComfyUI batched or split the conds.
"""
from __future__ import annotations

import contextvars
import re
import types

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
from comfy.ldm.modules.attention import BasicTransformerBlock
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, VideoResBlock

from . import windows
from .attention import TemporalAttention, sparse_causal_attention, video_group_norm

KEY = "tuneavideo"
FRAMES_OPTION = "tav_frames"
VIDEO_NORM_OPTION = "tav_video_norm"
# transformer_options key of an optional override of the temporal layers' attention, called as
# fn(q, k, v, heads, mask=None, transformer_options=..., default=...) on projected [videos * tokens,
# frames, heads * dim] tensors (rows: video-major), where `default` is the attention that runs without
# it. Attention control (attention_control.py) swaps temporal maps through it.
TEMPORAL_ATTENTION_OPTION = "tav_temporal_attention"

# Frames per video of the model call in progress; set by the DIFFUSION_MODEL wrapper for the
# GroupNorm hooks, which (unlike transformer blocks) receive no transformer_options.
_call_frames: contextvars.ContextVar[int | None] = contextvars.ContextVar("tav_call_frames", default=None)

_BLOCK_PATH = re.compile(r"^(?:(input|output)_blocks\.(\d+)|(middle)_block)\.\d+\.transformer_blocks\.(\d+)$")


class InflateError(ValueError):
    pass


def transformer_blocks(diffusion_model) -> list[tuple[str, BasicTransformerBlock, tuple]]:
    """(module path, block, attn1 patch key) for every spatial transformer block of the UNet."""
    found = []
    for path, module in diffusion_model.named_modules():
        if type(module) is not BasicTransformerBlock:
            continue
        match = _BLOCK_PATH.match(path)
        if match is None:
            continue  # e.g. the temporal stacks of video UNets: not spatial blocks
        level, number, middle, index = match.groups()
        patch_key = ("middle", 0, int(index)) if middle else (level, int(number), int(index))
        found.append((path, module, patch_key))
    return found


def video_norms(diffusion_model) -> list[torch.nn.GroupNorm]:
    """The GroupNorms that the official 3D UNet applies to whole videos: ResNet blocks' and `out`."""
    norms = []
    for module in diffusion_model.modules():
        # isinstance: gradient checkpointing swaps in subclass views; video UNets' own blocks excluded
        if isinstance(module, ResBlock) and not isinstance(module, VideoResBlock):
            norms += [module.in_layers[0], module.out_layers[0]]
    out = getattr(diffusion_model, "out", None)
    if out is not None and isinstance(out[0], torch.nn.GroupNorm):
        norms.append(out[0])
    return norms


class TemporalLayers(torch.nn.Module):
    """All `norm_temp`/`attn_temp` layers, keyed like the UNet modules they follow.

    State-dict keys mirror the inflated UNet's, e.g.
    `input_blocks.1.1.transformer_blocks.0.attn_temp.to_q.weight`, which maps 1:1 to the official
    checkpoint names through ComfyUI's UNet key map.
    """

    def __init__(self, blocks, dtype, device, seed: int, operations):
        super().__init__()
        self.paths = [path for path, _, _ in blocks]
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for path, block, _ in blocks:
            layer = TemporalAttention(block.attn1.to_q.in_features, block.n_heads, block.d_head,
                                      dtype=torch.float32, device="cpu", operations=operations)
            layer.reset_parameters(generator)  # on CPU in float32: the same seed, the same weights
            self._place(path, layer.to(device=device, dtype=dtype))
        self.requires_grad_(False)  # like ComfyUI's models; tuning enables what it trains

    def _place(self, path: str, layer: torch.nn.Module) -> None:
        parent = self
        *parents, leaf = path.split(".")
        for name in parents:
            if name not in parent._modules:
                parent.add_module(name, torch.nn.Module())
            parent = parent._modules[name]
        parent.add_module(leaf, layer)

    def layer(self, path: str) -> TemporalAttention:
        return self.get_submodule(path)


class SparseCausalAttn1:
    """attn1 replace patch: frame i attends to frames 0 and i-1 with the block's own projections."""

    def __call__(self, q, k, v, extra_options):
        frames, former = _layout(extra_options)
        if frames is None:
            raise InflateError(_NO_FRAMES)
        precision = extra_options.get("attn_precision")

        def attention(q, k, v, heads, mask=None):  # with the options: ComfyUI's attention override applies
            return comfy_attention.optimized_attention(q, k, v, heads, mask=mask, attn_precision=precision,
                                                       transformer_options=extra_options)

        return sparse_causal_attention(q, k, v, extra_options["n_heads"], frames, attention, former)


_NO_FRAMES = ("Tune-A-Video: the inflated model was called without a frame count. Sample it with a "
              "sampler node (the frame count is the latent's batch size) or the Tune-A-Video nodes.")


class Inflation:
    """The PatcherInjection pair: registers and removes the temporal and GroupNorm hooks."""

    def __init__(self, video_norm: bool):
        self.video_norm = video_norm
        self.handles: list = []

    def fingerprint_state(self) -> dict:
        """What of it changes the forward pass (for the tune cache); the hook handles do not."""
        return {"video_norm": self.video_norm}

    def inject(self, patcher) -> None:
        self.eject(patcher)
        diffusion_model = patcher.model.diffusion_model
        temporal = temporal_layers(patcher)
        for path, block, _ in transformer_blocks(diffusion_model):
            hook = _temporal_hook(temporal.layer(path))
            self.handles.append(block.register_forward_hook(hook, with_kwargs=True))
        if self.video_norm:
            for norm in video_norms(diffusion_model):
                self.handles.append(norm.register_forward_hook(_video_norm_hook))

    def eject(self, patcher) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _temporal_hook(layer: TemporalAttention):
    def hook(block, args, kwargs, output):
        options = kwargs.get("transformer_options", {})
        frames, _ = _layout(options)
        if frames is None:
            raise InflateError(_NO_FRAMES)
        precision = block.attn_precision

        def attention(q, k, v, heads, mask=None):
            return comfy_attention.optimized_attention(q, k, v, heads, mask=mask, attn_precision=precision,
                                                       transformer_options=options)

        override = options.get(TEMPORAL_ATTENTION_OPTION)
        if override is None:
            return layer(output, frames, attention)

        def overridden(q, k, v, heads, mask=None):
            return override(q, k, v, heads, mask=mask, transformer_options=options, default=attention)

        return layer(output, frames, overridden)

    return hook


def _video_norm_hook(norm, args, output):
    frames = _call_frames.get()
    if frames is None or frames == 1:
        return output  # one frame: video-wide statistics are the frame's own
    x = args[0]
    # The weights as ComfyUI's own forward would use them: cast, offloaded (lowvram) or rebuilt by
    # weight wrappers (tuning), under the same condition as comfy.ops.
    if getattr(norm, "comfy_cast_weights", False) or getattr(norm, "weight_function", None) \
            or getattr(norm, "bias_function", None):
        weight, bias = comfy.ops.cast_bias_weight(norm, x)
    else:
        weight, bias = norm.weight, norm.bias
    params = types.SimpleNamespace(num_groups=norm.num_groups, eps=norm.eps, weight=weight, bias=bias)
    return video_group_norm(x, frames, params)


def _record_frames(executor, noise, latent_image, *args, **kwargs):
    """OUTER_SAMPLE wrapper: the frame count of a sampler run is the latent's batch size."""
    options = executor.class_obj.model_options.setdefault("transformer_options", {})
    options.setdefault(FRAMES_OPTION, latent_image.shape[0])
    windows.anchor_core_handler(executor.class_obj.model_options)  # this run's copy of the options
    return executor(noise, latent_image, *args, **kwargs)


def _check_and_publish_frames(executor, x, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: every call must hold whole videos; publish F to the norm hooks."""
    options = kwargs.get("transformer_options") if "transformer_options" in kwargs else args[4]
    frames, _ = _layout(options)
    if frames is None:
        raise InflateError(_NO_FRAMES)
    if x.shape[0] % frames:
        raise InflateError(
            f"Tune-A-Video: a model call of batch {x.shape[0]} does not hold whole videos of {frames} "
            "frames. Every latent in one sampling run must have the clip's frame count.")
    token = _call_frames.set(frames)
    try:
        return executor(x, *args, **kwargs)
    finally:
        _call_frames.reset(token)


def _layout(options: dict):
    """(frames per video, former rows) of this call: the clip's, or a frame window's (windows.py)."""
    try:
        return windows.call_layout(options, options.get(FRAMES_OPTION))
    except windows.WindowError as e:
        raise InflateError(f"Tune-A-Video: {e}") from e


def is_inflated(patcher) -> bool:
    return bool(patcher.get_additional_models_with_key(KEY))


def temporal_patcher(patcher):
    """The ModelPatcher that holds (and patches) the temporal layers of an inflated model."""
    found = patcher.get_additional_models_with_key(KEY)
    if not found:
        raise InflateError("this MODEL is not inflated; pass it through Inflate Model first.")
    return found[0]


def temporal_layers(patcher) -> TemporalLayers:
    return temporal_patcher(patcher).model


def inflate(patcher, seed: int = 0, video_norm: bool = True):
    """Return an inflated clone of `patcher`; the base model is left untouched.

    An already inflated model comes back as a plain clone, so inflating twice is a no-op.
    """
    model = patcher.clone()
    if is_inflated(model):
        return model
    diffusion_model = getattr(patcher.model, "diffusion_model", None)
    blocks = transformer_blocks(diffusion_model) if diffusion_model is not None else []
    if not blocks:
        raise InflateError(
            "Tune-A-Video needs a UNet built from transformer blocks (SD1.x, SD2.x, SDXL); this "
            f"{type(patcher.model).__name__} has none. Connect an SD1.x, SD2.x or SDXL model.")
    layers = TemporalLayers(blocks, dtype=patcher.model.get_dtype(), device=patcher.offload_device, seed=seed,
                            operations=layer_operations(patcher))
    layer_patcher = comfy.model_patcher.ModelPatcher(layers, load_device=patcher.load_device,
                                                     offload_device=patcher.offload_device)
    # Cast per operation to the input's dtype, which is the surrounding block's compute dtype: it may
    # change after inflation (core ModelComputeDtype, a compute-dtype object patch), and where it
    # equals the storage dtype casting costs nothing.
    layer_patcher.force_cast_weights = True
    model.set_additional_models(KEY, [layer_patcher])
    attn1 = SparseCausalAttn1()
    for _, _, patch_key in blocks:
        model.set_model_attn1_replace(attn1, *patch_key)
    model.set_injections(KEY, [comfy.patcher_extension.PatcherInjection(*_inject_eject(video_norm))])
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, _record_frames)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY,
                               _check_and_publish_frames)
    model.model_options["transformer_options"][VIDEO_NORM_OPTION] = video_norm
    return model


def layer_operations(patcher):
    """The comfy.ops family for the added layers, picked as ComfyUI picks the UNet's own.

    Storage dtype and compute dtype are the model's, so that where ComfyUI stores the UNet in one
    dtype and computes in another (fp8 weights, bf16 on a card without bf16, --bf16-unet on a CPU)
    the temporal layers cast per operation exactly like the layers around them, and lowvram
    loading can cast them too. The quantised families (scaled fp8, mixed precision) are not
    offered: they expect per-layer scales that freshly initialised layers do not have; manual
    casting from the storage dtype computes the same thing.
    """
    model = patcher.model
    return comfy.ops.pick_operations(model.get_dtype(), model.manual_cast_dtype, load_device=patcher.load_device,
                                     disable_fast_fp8=True)


def _inject_eject(video_norm: bool):
    inflation = Inflation(video_norm)
    return inflation.inject, inflation.eject


def call_options(patcher, frames: int) -> dict:
    """transformer_options for calling a model directly (outside a sampler) on `frames`-frame videos.

    Built as ComfyUI's samplers build them, with the patcher's wrappers merged in.
    """
    options = comfy.patcher_extension.copy_nested_dicts(patcher.model_options["transformer_options"])
    comfy.patcher_extension.merge_nested_dicts(options.setdefault("wrappers", {}), patcher.wrappers,
                                               copy_dict1=False)
    options[FRAMES_OPTION] = int(frames)
    return options


def load(patcher) -> None:
    """Load the model and its temporal layers the ComfyUI way, for direct calls outside sampling."""
    comfy.model_management.load_models_gpu([patcher, *patcher.get_nested_additional_models()])
