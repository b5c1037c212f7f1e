"""A backward pass under ComfyUI's inference kernels, for the clones that train (One-Shot Tune, null-text inversion).

Some of what ComfyUI computes with, chosen by launch options or per model, has no backward pass:
- attention: ComfyUI picks one function per process (`--use-sage-attention`, `--use-flash-attention`), and
  a node may set another per model (`transformer_options["optimized_attention_override"]`, as
  `set_model_optimized_attention` and sage attention patch nodes do). ComfyUI wraps flash-attn in a custom
  op that registers no autograd formula (backward raises); sage attention computes outside autograd, so
  every projection before it silently gets no gradient and the optimiser skips it;
- fp8 matrix multiplication (`comfy.ops.fp8_ops`: fp8 weights with `--fast fp8_matrix_mult` on GPUs with
  fp8 compute, or the `fp8_e4m3fn_fast` weight dtype): it clamps each input in place and multiplies with
  `torch._scaled_mm`, which has no derivative.

`make_differentiable` gives a training clone attention through `TrainingAttention` (ComfyUI's own choice
where that is written in differentiable operations, PyTorch's SDPA where it is not) and its fp8 linear
layers the manual-cast path (the weight cast to the compute dtype per operation, as without `--fast`).
Sampling keeps whatever the user launched with. What this cannot reach (an attention function swapped in
without ComfyUI's `wrap_attn`) the trainers catch as a tensor without a gradient, and `no_backward_hint`
explains.
"""
from __future__ import annotations

import logging

import comfy.ldm.modules.attention as comfy_attention
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
    fp8_layers = 0
    for owner in (patcher, *patcher.get_nested_additional_models()):
        for path, module in owner.model.named_modules():
            if isinstance(module, comfy.ops.fp8_ops.Linear):
                owner.add_object_patch(path, _manual_cast_view(module))
                fp8_layers += 1
    if fp8_layers:
        logging.info("Tune-A-Video: fp8 matrix multiplication has no backward pass; training casts the fp8 weights of "
                     "%d linear layers to the compute dtype per operation instead. Sampling keeps fp8 compute.",
                     fp8_layers)


def _manual_cast_view(module):
    """The layer as a `comfy.ops.manual_cast.Linear` sharing all its state (parameters, weight wrappers, hooks), so
    every state-dict key stays; its forward pass is fp8_ops' own fallback path."""
    view = object.__new__(comfy.ops.manual_cast.Linear)
    view.__dict__ = module.__dict__
    return view


def no_backward_hint() -> str:
    """The sentence that error messages end with when a trained tensor got no gradient."""
    return (f"ComfyUI's attention in use is {describe(comfy_attention.optimized_attention)}; an attention kernel "
            "without a backward pass (sage attention, a node that replaces ComfyUI's attention function) cuts the "
            "gradient. Restart ComfyUI without that option, or remove the node, for training.")
