"""Prompt-to-prompt attention control (Video-P2P) on the inflated model, on ComfyUI's frames-in-batch layout.

The source video and the edited video are sampled in one batch. In every model call, ComfyUI stacks
one chunk of rows per cond (`transformer_options["cond_or_uncond"]`: 0 for the positive, 1 for the
negative), and each chunk holds the two videos frame by frame: rows [source frames 0..F-1, edited
frames 0..F-1]. As Video-P2P (LOW_RESOURCE off), only the positive chunk is controlled:

- cross-attention (every attn2, through an attn2 replace patch): while the step is below
  `cross_steps`, the edited video's maps are computed from the source's, per frame and head, by the
  edit's controller (replace: source maps @ mapper; refine: aligned source columns, the edit's own
  for added tokens; reweight: the source's maps, or a replace/refine result, times the equalizer);
- temporal attention (the inflation's attn_temp, through inflate.TEMPORAL_ATTENTION_OPTION): for steps
  in the self-replace window, the edited video's [frames x frames] maps are the source's. Video-P2P's
  "self" maps are these: its register_attention_control patches the CrossAttention modules, which
  are attn2 and attn_temp; the sparse-causal attn1 is a FrameAttention and stays uncontrolled;
- the attention store for local blend: the blend words' cross-attention (after the edit, as the
  official stores the maps it then edits in place), summed over their tokens, averaged over heads
  and layers and summed over the steps so far, at the coarsest resolution where the down and up
  blocks have cross-attention (SD1.5 at 512 px: the 16x16 maps, the official down_cross[2:4] +
  up_cross[:3]). The official reshape hard-codes SD1.5's 8 heads and the 16x16 size (its -1 is the
  frames); here heads, frames and size are the call's, so any resolution and SD2's head counts work.

The step is the index of the call's sigma in the DDIM schedule (sampling.ddim_levels), not a count
of layer calls, so any batching of conds into model calls gives the same control.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .prompt_tokens import MAX_TOKENS

CONTROLLERS = ("replace", "refine", "reweight")
BLEND_START = 0.2  # Video-P2P's LocalBlend start_blend: the fraction of steps before the mask applies
BLEND_THRESHOLD = 0.3  # its mask_th
_COND = 0  # ComfyUI's cond_or_uncond value of the positive cond
_WINDOW_OPTION = "context_window"  # core's context-window key (windows.CONTEXT_WINDOW)


class ControlError(ValueError):
    pass


def cross_replace_steps(fraction: float, steps: int) -> int:
    """Steps (from the first) whose cross maps come from the source.

    As Video-P2P's get_time_words_attention_alpha, whose per-step table has steps + 1 rows:
    int(fraction * (steps + 1)), e.g. 10 of 50 for 0.2.
    """
    return int(fraction * (steps + 1))


def self_replace_window(fraction: float, steps: int) -> tuple[int, int]:
    """[start, end) steps whose temporal maps come from the source: (0, int(steps * fraction))."""
    return 0, int(steps * fraction)


def blend_start(steps: int) -> int:
    """The first step whose result is blended (LocalBlend applies once its counter exceeds int(0.2 steps))."""
    return int(BLEND_START * steps)


@dataclasses.dataclass(frozen=True)
class EditPlan:
    """What the controller does; built by attention_edit.plan_edit from the prompts."""

    controller: str  # replace, refine or reweight
    steps: int
    cross_steps: int
    self_window: tuple[int, int]
    replace_mapper: torch.Tensor | None = None  # [77, 77], replace
    refine_mapper: torch.Tensor | None = None  # [77] long, refine
    refine_alphas: torch.Tensor | None = None  # [77], refine
    equalizer: torch.Tensor | None = None  # [77]: reweight, alone or on replace/refine
    blend_tokens: torch.Tensor | None = None  # [2, 77]: the source's and the edit's blend-word tokens
    blend_start: int = 0
    blend_threshold: float = BLEND_THRESHOLD

    def __post_init__(self):
        if self.controller not in CONTROLLERS:
            raise ControlError(f"controller must be one of {', '.join(CONTROLLERS)}, not {self.controller!r}.")
        needs = {"replace": self.replace_mapper, "refine": self.refine_mapper, "reweight": self.equalizer}
        if needs[self.controller] is None:
            raise ControlError(f"the {self.controller} controller needs its {self.controller} tensors.")


def attention_maps(q, k, heads: int) -> torch.Tensor:
    """softmax(q k^T d^-1/2) per head: [batch, heads, Nq, Nk] in float32, from [batch, N, heads * d]."""
    batch, nq, inner = q.shape
    d = inner // heads
    q = q.reshape(batch, nq, heads, d).transpose(1, 2).float()
    k = k.reshape(batch, k.shape[1], heads, d).transpose(1, 2).float()
    return torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)


def apply_maps(maps, v) -> torch.Tensor:
    """maps [batch, heads, Nq, Nk] @ v [batch, Nk, heads * dv] -> [batch, Nq, heads * dv] in float32."""
    batch, heads, nq, nk = maps.shape
    v = v.reshape(batch, nk, heads, -1).transpose(1, 2).float()
    return (maps @ v).transpose(1, 2).reshape(batch, nq, -1)


def blend_mask(maps: torch.Tensor, size: tuple[int, int], threshold: float = BLEND_THRESHOLD) -> torch.Tensor:
    """LocalBlend's mask from the blend words' maps [2 videos, F, h, w]: [F, H, W] bool.

    Per video and frame: 3x3 max-pool, nearest resize to the latent's size, divide by the maximum,
    threshold; the edit's region is the union of the source's and the edit's.
    """
    pooled = F.max_pool2d(maps, 3, stride=1, padding=1)
    resized = F.interpolate(pooled, size=size)
    normalised = resized / resized.amax(dim=(2, 3), keepdim=True)
    regions = normalised > threshold
    return regions[0] | regions[1]


class AttentionController:
    """One edit run's control: the attn2 replace patch, the temporal attention override and the local blend.

    `levels`: the run's DDIM sigmas (sampling.ddim_levels); `frames`: frames per video.
    """

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options: every clone of the patched model (a null-text
        # wrapper's, a sampler's) must drive this one run's controller and its local-blend store.
        return self

    def __init__(self, plan: EditPlan, levels: torch.Tensor, frames: int, default_attention):
        self.plan = plan
        self.levels = levels.double()[:-1]
        self.frames = frames
        self.default_attention = default_attention  # optimized_attention(q, k, v, heads, mask=None, **kw)
        # Local blend store: per query count n (one resolution), the sum over steps of the step's
        # maps averaged over heads and layers [2, F, n], and the step being gathered.
        self.store: dict[int, torch.Tensor] = {}
        self.store_shapes: dict[int, tuple[int, int]] = {}
        self.store_layers: set = set()
        self._gathering: dict[int, list] = {}
        self.last_mask: torch.Tensor | None = None

    # --- where in the run and in the batch -------------------------------------------------------
    def step_of(self, options) -> int:
        sigmas = options.get("sigmas")
        if sigmas is None:
            raise ControlError("attention control needs the sampler's sigmas in transformer_options.")
        sigma = float(sigmas.reshape(-1)[0])
        distance = (self.levels.log() - math.log(max(sigma, 1e-12))).abs()
        step = int(distance.argmin())
        if distance[step] > 1e-3:
            raise ControlError(f"the model was called at sigma {sigma:.5g}, which is none of the {self.plan.steps} "
                               "DDIM steps of this edit; attention control runs only inside its own sampler.")
        return step

    def cond_chunks(self, rows: int, options) -> list[slice]:
        """Row ranges of the positive chunks in a call of `rows` rows."""
        if options.get(_WINDOW_OPTION) is not None:
            raise ControlError("attention control cannot run in context windows; remove the Context Windows node.")
        kinds = options.get("cond_or_uncond")
        if not kinds or rows % len(kinds):
            raise ControlError("attention control needs ComfyUI's cond_or_uncond layout of the batch.")
        size = rows // len(kinds)
        return [slice(i * size, (i + 1) * size) for i, kind in enumerate(kinds) if kind == _COND]

    # --- cross-attention --------------------------------------------------------------------------
    def edit_cross(self, source, edited):
        """The edit's cross maps from the source's: [F, heads, n, 77] each."""
        plan = self.plan
        base = source
        if plan.replace_mapper is not None:
            base = source @ plan.replace_mapper.to(source)
        elif plan.refine_mapper is not None:
            alphas = plan.refine_alphas.to(source)
            base = source[..., plan.refine_mapper.to(source.device)] * alphas + edited * (1 - alphas)
        if plan.equalizer is not None:
            base = base * plan.equalizer.to(source)
        return base

    def cross_attention(self, q, k, v, extra_options):
        """The attn2 replace patch body: explicit maps, the edit, the store, maps @ v."""
        step = self.step_of(extra_options)
        heads = extra_options["n_heads"]
        block = extra_options.get("block")
        store = self.plan.blend_tokens is not None and block is not None and block[0] in ("input", "output")
        if k.shape[1] != MAX_TOKENS:
            raise ControlError(f"attention control needs {MAX_TOKENS}-token prompts, the model got {k.shape[1]} tokens.")
        controlled = step < self.plan.cross_steps
        if not (controlled or store):
            return self.default_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                          transformer_options=extra_options)
        maps = attention_maps(q, k, heads)
        for rows in self.cond_chunks(q.shape[0], extra_options):
            source, edited = self._videos(maps[rows])
            if controlled:
                edited.copy_(self.edit_cross(source, edited))
            if store:
                self._gather(maps[rows], extra_options, block)
        return apply_maps(maps, v).to(q.dtype)

    def _videos(self, chunk):
        if chunk.shape[0] != 2 * self.frames:
            raise ControlError(f"attention control expects the source and the edited video ({2 * self.frames} rows) "
                               f"in every cond, got {chunk.shape[0]} rows.")
        return chunk[:self.frames], chunk[self.frames:]

    # --- temporal attention -------------------------------------------------------------------------
    def temporal_attention(self, q, k, v, heads, mask=None, transformer_options=None, default=None):
        """inflate.TEMPORAL_ATTENTION_OPTION: rows are (video, token) pairs, tokens attend over frames."""
        start, end = self.plan.self_window
        step = self.step_of(transformer_options)
        if not start <= step < end:
            return default(q, k, v, heads, mask=mask)
        if mask is not None:
            raise ControlError("attention control does not take masked temporal attention.")
        maps = attention_maps(q, k, heads)
        for rows in self.cond_chunks(q.shape[0], transformer_options):
            chunk = maps[rows]
            half = chunk.shape[0] // 2  # [source video's tokens; edited video's tokens]
            chunk[half:] = chunk[:half]
        return apply_maps(maps, v).to(q.dtype)

    # --- local blend --------------------------------------------------------------------------------
    def _gather(self, chunk, options, block) -> None:
        height, width = options["activations_shape"][-2:]
        heads, n = chunk.shape[1], chunk.shape[2]
        videos = chunk.reshape(2, self.frames, heads, n, MAX_TOKENS)
        words = torch.einsum("vfhnm,vm->vfn", videos, self.plan.blend_tokens.to(chunk))
        gathering = self._gathering.setdefault(n, [torch.zeros_like(words), 0])
        gathering[0] += words
        gathering[1] += heads
        self.store_shapes[n] = (height, width)
        self.store_layers.add((block, options.get("block_index", 0)))

    def end_step(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """After step `step` (x: [2F, C, H, W]): fold the step's maps into the store, blend from blend_start."""
        for n, (total, terms) in self._gathering.items():
            mean = total / terms
            self.store[n] = mean if n not in self.store else self.store[n] + mean
        self._gathering = {}
        if self.plan.blend_tokens is None or step < self.plan.blend_start:
            return x
        if not self.store:
            raise ControlError("local blend found no cross-attention maps in the down and up blocks.")
        n = min(self.store)  # the coarsest resolution
        height, width = self.store_shapes[n]
        maps = self.store[n].reshape(2, self.frames, height, width)
        mask = blend_mask(maps, tuple(x.shape[-2:]), self.plan.blend_threshold)
        self.last_mask = mask
        source, edited = x[:self.frames], x[self.frames:]
        blended = source + mask[:, None].to(x) * (edited - source)
        return torch.cat([source, blended])


class CrossAttentionPatch:
    """attn2 replace patch object handing every call to the run's controller."""

    def __init__(self, controller: AttentionController):
        self.controller = controller

    def __call__(self, q, k, v, extra_options):
        return self.controller.cross_attention(q, k, v, extra_options)
