"""A backward pass under ComfyUI's inference kernels, for the clones that train (One-Shot Tune, null-text inversion).

Some of what ComfyUI computes with, chosen by launch options or per model, has no backward pass:
- attention: ComfyUI picks one function per process (`--use-sage-attention`, `--use-flash-attention`), and
  a node may set another per model (`transformer_options["optimized_attention_override"]`, as
  `set_model_optimized_attention` and sage attention patch nodes do). ComfyUI wraps flash-attn in a custom
  op that registers no autograd formula (backward raises); sage attention computes outside autograd, so
  every projection before it silently gets no gradient and the optimiser skips it;
- fp8 matrix multiplication (`comfy.ops.fp8_ops`: fp8 weights with `--fast fp8_matrix_mult` on GPUs with
  fp8 compute, or the `fp8_e4m3fn_fast` weight dtype; and ComfyUI 0.3's `scaled_fp8_ops` for a scaled fp8
  checkpoint marked for it): it clamps each input in place and multiplies with `torch._scaled_mm`, which has
  no derivative. (ComfyUI 0.33's quantised layers have one, but quantise their inputs to fp8 in the forward
  pass, which training is kept out of as well.)

`make_differentiable` gives a training clone attention through `TrainingAttention` (ComfyUI's own choice
where that is written in differentiable operations, PyTorch's SDPA where it is not) and its fp8 linear
layers the weight-only path (the weight cast to the compute dtype per operation, as without `--fast`).
Sampling keeps whatever the user launched with. What this cannot reach (an attention function swapped in
without ComfyUI's `wrap_attn`) the trainers catch as a tensor without a gradient, and `no_backward_hint`
explains.
"""
from __future__ import annotations

import logging

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.ops

OVERRIDE_KEY = "optimized_attention_override"
# ComfyUI's attention functions made of differentiable torch operations, and xformers' (which has a backward).
DIFFERENTIABLE_ATTENTION = frozenset({"attention_basic", "attention_split", "attention_sub_quad",
                                      "attention_pytorch", "attention_xformers"})


def describe(function) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__name__', type(function).__name__)}"


def has_backward(function) -> bool:
    return (getattr(function, "__module__", None) == comfy_attention.__name__
            and function.__name__ in DIFFERENTIABLE_ATTENTION)


class TrainingAttention:
    """The override, called by ComfyUI's `wrap_attn` as `(func, *args, **kwargs)` with the function it was about to
    run. Logs each function it stands in for once."""

    def __init__(self):
        self.substituted: set[str] = set()

    def __call__(self, func, *args, **kwargs):
        if has_backward(func):
            return func(*args, **kwargs)
        name = describe(func)
        if name not in self.substituted:
            self.substituted.add(name)
            logging.info("Tune-A-Video: %s has no backward pass; training computes attention with PyTorch's SDPA "
                         "instead. Sampling keeps %s.", name, name)
        # ComfyUI's wrapper has marked kwargs as inside it, so this runs SDPA without consulting the override again.
        return comfy_attention.attention_pytorch(*args, **kwargs)


def make_differentiable(patcher) -> None:
    """Prepare `patcher` (a training clone, whose model_options are its own) and its additional models (e.g. the
    temporal layers' clone) for a backward pass."""
    options = patcher.model_options.setdefault("transformer_options", {})
    previous = options.get(OVERRIDE_KEY)
    if previous is not None:
        logging.info("Tune-A-Video: the model's own attention override (%s) is left out of training, which needs a "
                     "backward pass; sampling uses it.", describe(previous))
    options[OVERRIDE_KEY] = TrainingAttention()
    weight_only = {}  # ComfyUI 0.3's scaled fp8 classes without fp8 matrix multiplication, by their arguments
    fp8_layers = sum(_fp8_layers_in_full_precision(owner, weight_only)
                     for owner in (patcher, *patcher.get_nested_additional_models()))
    if fp8_layers:
        logging.info("Tune-A-Video: training multiplies the weights of %d fp8 linear layers in the compute dtype "
                     "(fp8 matrix multiplication has no backward pass, or one with fp8 inputs); sampling keeps "
                     "fp8 compute.", fp8_layers)


def _fp8_layers_in_full_precision(patcher, weight_only: dict) -> int:
    """Object-patch every layer of `patcher` that multiplies in fp8 to cast its weight per operation instead,
    through ComfyUI's own code for that: fp8_ops as manual_cast, scaled fp8 (ComfyUI 0.3) as its weight-only class,
    quantised layers (QuantizedTensor weights) with their full-precision switch. Returns how many."""
    scaled_in_fp8 = _scaled_fp8_multiplies_in_fp8(patcher)
    count = 0
    for path, module in patcher.model.named_modules():
        if isinstance(module, comfy.ops.fp8_ops.Linear):
            patcher.add_object_patch(path, _view(module, comfy.ops.manual_cast.Linear))
        elif scaled_in_fp8 and is_scaled_fp8(module):
            key = (module.scale_input is not None, module.weight.dtype)
            if key not in weight_only:
                weight_only[key] = comfy.ops.scaled_fp8_ops(fp8_matrix_mult=False, scale_input=key[0],
                                                            override_dtype=key[1]).Linear
            patcher.add_object_patch(path, _view(module, weight_only[key]))
        elif getattr(module, "layout_type", None) is not None and getattr(module, "_full_precision_mm", True) is False:
            # ComfyUI 0.33 trains these with fp8 inputs in the forward pass: tuned changes 0.36 off weight-only fp8's.
            patcher.add_object_patch(f"{path}._full_precision_mm", True)
        else:
            continue
        count += 1
    return count


def _scaled_fp8_multiplies_in_fp8(patcher) -> bool:
    """Whether ComfyUI 0.3 built `patcher`'s scaled fp8 layers with fp8 matrix multiplication: as its
    pick_operations decides, where the device has fp8 compute and the checkpoint asks for it."""
    optimizations = getattr(getattr(patcher.model, "model_config", None), "optimizations", {})
    return (hasattr(comfy.ops, "scaled_fp8_ops") and optimizations.get("fp8", False)
            and comfy.model_management.supports_fp8_compute(patcher.load_device))


def is_scaled_fp8(module) -> bool:
    """A layer of ComfyUI 0.3's `scaled_fp8_ops`. (ComfyUI 0.33 loads such checkpoints as QuantizedTensor weights,
    whose layers have a backward pass of their own.)"""
    return isinstance(module, comfy.ops.manual_cast.Linear) and torch.is_tensor(getattr(module, "scale_weight", None))


def _view(module, cls):
    """The layer as an instance of `cls` sharing all its state (parameters, weight wrappers, hooks), so every
    state-dict key stays: with manual_cast.Linear fp8_ops' own fallback path, with a weight-only scaled fp8 class
    scaled_fp8_ops' own."""
    view = object.__new__(cls)
    view.__dict__ = module.__dict__
    return view


def no_backward_hint() -> str:
    """The sentence that error messages end with when a trained tensor got no gradient."""
    return (f"ComfyUI's attention in use is {describe(comfy_attention.optimized_attention)}; an attention kernel "
            "without a backward pass (sage attention, a node that replaces ComfyUI's attention function) cuts the "
            "gradient. Restart ComfyUI without that option, or remove the node, for training.")
