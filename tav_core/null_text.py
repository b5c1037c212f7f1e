"""Null-text inversion (Mokady et al., CVPR 2023) on the Tune-A-Video model, as Video-P2P applies it.

Plain DDIM inversion is exact only without guidance: sampled back with CFG, the unconditional branch
pulls every step off the inversion's path, and the video drifts. Null-text inversion keeps the text
and the inversion and instead optimises, for each sampling step, the *unconditional* embedding so
that the CFG step from the current latent lands on the inversion's latent one level lower. Sampled
with those per-step embeddings, the source prompt reconstructs the clip at full guidance.

The algorithm (Video-P2P's `NullInversion`, run_videop2p.py):
1. DDIM inversion under the SOURCE prompt with guidance 1, the model queried at the level it moves to
   (exactly `sampling.sample_ddim_inversion`); all levels' latents are kept.
2. For sampling step i = 0..steps-1 (high noise first), from latent_cur (initially the inversion's
   end): the cond prediction is computed once without grad; the uncond embedding, starting from the
   previous step's result (the empty prompt's embedding at i = 0), is optimised with Adam,
   lr = 1e-2 * (1 - i / 100), for up to `inner_steps` iterations on
   MSE(CFG DDIM step from latent_cur, the inversion's latent at the next lower level), stopping early
   once the loss is below epsilon + i * 2e-5; then latent_cur takes that CFG step with the result.
   The loss is taken on the reference's latents x_ddim = sqrt(a) * x (a: alphas_cumprod at the
   target level, x: ComfyUI's latent), so that its values and the early-stop threshold are the
   official code's.
3. Fast mode (Video-P2P's `--fast`) stops after step 1: no embeddings; the source is then sampled
   with its positive prediction only (no guidance), which retraces the inversion.

Everything runs inside ComfyUI's sampling machinery (a KSAMPLER under a CFGGuider, conds processed by
core, so ControlNet, area conds and model patches apply), on a gradient clone whose frozen weights
autograd can differentiate through (tuning.gradient_clone); gradients go to the embedding only. The
embedding reaches the model through an APPLY_MODEL wrapper that swaps the uncond rows' cross-attention
context (`with_null_text`): the same mechanism samples with the result later. A ControlNet in the
conditioning still sees the original negative prompt: the swap happens after core computed its hints.

Windows: the embeddings are optimised over the whole clip, so the inversion takes no frame windows.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.samplers
import comfy.utils
import latent_preview

from . import checkpointing, checks, differentiable, sampling, tuning

NULL_TEXT_KEY = "tav_null_text"  # the LATENT key of a null-text inversion's NullText
WRAPPER_KEY = "tav_null_text"
LEVEL_TOLERANCE = 1e-4  # relative: how close a model call's sigma must be to a schedule level


class NullTextError(ValueError):
    pass


@dataclass(frozen=True)
class NullText:
    """What a null-text inversion hands to sampling.

    uncond: float32 [steps, tokens, C], the unconditional cross-attention embedding of each sampling
        step (row 0: the highest noise level, timestep 981 for 50 steps); None in fast mode.
    cfg: the guidance scale the embeddings were optimised for.
    fast: Video-P2P's fast mode: no embeddings; the source is sampled with its positive prediction only.
    steps: the DDIM steps of the inversion.
    losses: per step, the loss after each Adam iteration (diagnostics; empty in fast mode).
    """

    uncond: torch.Tensor | None
    cfg: float
    fast: bool
    steps: int
    losses: tuple = field(default=(), compare=False)


def null_text_invert(model, latent_raw: torch.Tensor, positive, negative, steps: int, cfg: float = 7.5,
                     inner_steps: int = 10, epsilon: float = 1e-5, fast: bool = False, callback=None,
                     gradient_checkpointing: bool = False):
    """Null-text-invert the clip's raw latents [F, C, h, w]; returns (inverted_raw, NullText).

    positive: the source prompt's CONDITIONING (DDIM inversion runs under it at guidance 1).
    negative: the empty prompt's CONDITIONING, one cond of batch 1: its embedding starts the
        optimisation and is the uncond of every CFG prediction.
    inverted_raw: ComfyUI's x at the last DDIM level in raw VAE units, the same convention as
        `sampling.ddim_invert` (and bit-identical to `ddim_invert(model, latent_raw, positive, steps)`).
    callback(step, x0, x, total_steps), default ComfyUI's preview and progress bar: total_steps is
        steps (fast) or 2 * steps (inversion, then one per optimised step).
    gradient_checkpointing: recompute every UNet block in the backward pass (checkpointing.py) instead of
        keeping its activations: the same embeddings for a fraction of the memory, about one more forward
        pass per Adam iteration. The official code keeps them.
    The work runs on a gradient clone: the caller's model is left as it was, its weights get no
    gradients and keep their values. Raises NullTextError (or sampling.SamplingError) for bad inputs.
    """
    unet = model.model.diffusion_model
    checks.check_latents(unet, latent_raw, NullTextError)
    checks.check_conditioning(unet, positive, NullTextError, "positive (source prompt) conditioning")
    checks.check_conditioning(unet, negative, NullTextError, "negative (empty prompt) conditioning")
    checks.check_finite("cfg", cfg, NullTextError, 0.0, 100.0)
    checks.check_finite("epsilon", epsilon, NullTextError, 0.0, 1.0)
    if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or not 1 <= inner_steps <= 1000:
        raise NullTextError(f"inner_steps must be an integer between 1 and 1000, not {inner_steps!r}.")
    if model.model_options.get("context_handler") is not None:
        raise NullTextError("the model carries core context windows; null-text inversion optimises over the whole "
                            "clip. Remove the Context Windows node before it.")
    if fast:
        if callback is None:
            callback = latent_preview.prepare_callback(model, steps)
        inverted = sampling.ddim_invert(model, latent_raw, positive, steps, callback=callback)
        return inverted, NullText(None, float(cfg), True, steps)
    start_embedding = _start_embedding(negative)
    if callback is None:
        callback = latent_preview.prepare_callback(model, 2 * steps)
    with torch.inference_mode(False), torch.enable_grad():
        # Fresh (non-inference) copies: autograd saves what the backward pass needs.
        positive, negative = _fresh_conditioning(positive), _fresh_conditioning(negative)
        raw = latent_raw.clone()
        start_embedding = start_embedding.clone()
        levels = sampling.ddim_levels(model, steps)  # sampling order, steps + 1
        clone = tuning.gradient_clone(model)
        swap = _UncondSwap(levels, [None] * steps, videos=1, null_videos=(0,))
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, swap)
        clone.set_model_input_block_patch_after_skip(_separate_skip)
        if gradient_checkpointing:
            checkpointing.add_checkpointing(clone, checkpointing.ALL_BLOCKS)
        loop = _NullTextLoop(swap, start_embedding, float(cfg), inner_steps, float(epsilon), callback)
        guider = comfy.samplers.CFGGuider(clone)
        guider.set_conds(positive, negative)
        guider.set_cfg(1.0)  # the inversion's guidance; the optimisation forms its CFG itself
        inversion_sigmas = levels.flip(0)
        start = sampling.rescale_latent(model, raw, math.sqrt(1 + float(inversion_sigmas[0]) ** 2))
        try:
            inverted = guider.sample(torch.zeros_like(start), start, comfy.samplers.KSAMPLER(loop),
                                     inversion_sigmas, callback=None,
                                     disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
        finally:
            tuning.unload_clone(clone)
        uncond = torch.stack([e.detach().float().cpu() for e in swap.table])
    logging.info("Tune-A-Video: null-text inversion, final loss per step: %s",
                 " ".join(f"{step[-1]:.2e}" for step in loop.losses))
    result = NullText(uncond, float(cfg), False, steps, tuple(tuple(step) for step in loop.losses))
    return inverted.to(comfy.model_management.intermediate_device()), result


def with_null_text(model, null_text: NullText, steps: int, videos: int = 1,
                   null_videos: Sequence[int] | None = None):
    """A clone of `model` that samples with a null-text inversion's per-step unconditional embeddings.

    Contract:
    - Sampling must use the DDIM levels of `sampling.ddim_levels(model, steps)` (Video Sample's,
      `sampling.sample_ddim` with those sigmas). Each model call's sigma picks the step: the call at
      level k (k = 0 the highest) uses `null_text.uncond[k]`. A call at any other sigma raises
      NullTextError.
    - Every model call is a batch of `videos` videos of equal frame count, stacked in the batch
      dimension in order ([video 0's frames; video 1's frames; ...]; e.g. for Video-P2P the source
      video, then the edited one). Only the batch chunks core marks as uncond
      (transformer_options["cond_or_uncond"] == 1) are changed, and in them only the rows of the
      videos in `null_videos` (default: all): their cross-attention context becomes the step's
      embedding (repeated along the tokens if core padded the uncond to a longer cond's length).
      Video-P2P swaps the source's uncond only (null_videos=[0]); the null-text paper all of them.
      Cond rows and the other videos' uncond rows are left exactly as they were.
    - Fast mode (null_text.fast, no embeddings): instead, the guided prediction of the videos in
      `null_videos` becomes their positive (cond) prediction alone, as Video-P2P's `--fast` samples
      the source; the other videos keep the model's CFG.
    - The result's CFG must be `null_text.cfg` for the embeddings to retrace the inversion; this
      function does not set it (the caller's guider does).
    The input model is not changed; a null text already on it is replaced.
    """
    if not isinstance(videos, int) or videos < 1:
        raise NullTextError(f"videos must be a positive integer, not {videos!r}.")
    null_videos = tuple(range(videos)) if null_videos is None else tuple(null_videos)
    if not null_videos or any(not 0 <= v < videos for v in null_videos) or len(set(null_videos)) != len(null_videos):
        raise NullTextError(f"null_videos {list(null_videos)} must be distinct indices of the {videos} videos.")
    check_null_text(null_text, steps, checks.context_dim(model.model.diffusion_model))
    clone = model.clone()
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    if null_text.fast:
        clone.set_model_sampler_post_cfg_function(_PositiveOnly(videos, null_videos))
    else:
        swap = _UncondSwap(sampling.ddim_levels(model, steps), null_text.uncond, videos, null_videos)
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, swap)
    return clone


def check_null_text(entry, steps: int, context_dim: int) -> NullText:
    """`entry` if it is a NullText that sampling with `steps` on a model of text width `context_dim` can
    use; NullTextError otherwise. LATENTs are untrusted: any node may have put anything there."""
    if not isinstance(entry, NullText):
        raise NullTextError(f"the latent's {NULL_TEXT_KEY!r} entry is a {type(entry).__name__}, not a Null-Text "
                            "Inversion result; connect Null-Text Inversion's LATENT directly.")
    if not isinstance(entry.steps, int) or entry.steps != steps:
        raise NullTextError(f"the null-text inversion has {entry.steps!r} steps; sample it with the same number "
                            f"(got {steps}), or invert again with {steps} steps.")
    if not isinstance(entry.fast, bool):
        raise NullTextError(f"the null-text entry's fast flag is {entry.fast!r}, not a bool.")
    checks.check_finite("the null-text cfg", entry.cfg, NullTextError, 0.0, 100.0)
    uncond = entry.uncond
    if entry.fast:
        if uncond is not None:
            raise NullTextError("a fast-mode null-text entry must hold no embeddings.")
        return entry
    if not isinstance(uncond, torch.Tensor) or uncond.dtype != torch.float32 or uncond.ndim != 3:
        shape = list(getattr(uncond, "shape", []))
        raise NullTextError("the null-text embeddings must be a float32 tensor [steps, tokens, width], not "
                            f"{type(uncond).__name__} {getattr(uncond, 'dtype', '')} {shape}.")
    if uncond.shape[0] != steps or uncond.shape[1] < 1 or uncond.shape[2] != context_dim:
        raise NullTextError(f"the null-text embeddings are {list(uncond.shape)} but sampling needs [{steps}, tokens, "
                            f"{context_dim}] ({steps} steps, this model's text width {context_dim}).")
    if not torch.isfinite(uncond).all():
        raise NullTextError("the null-text embeddings hold NaN or infinite values; invert again.")
    return entry


def from_latent(latent: dict, steps: int, model) -> NullText | None:
    """The checked NullText a LATENT carries, or None if it carries none."""
    if NULL_TEXT_KEY not in latent:
        return None
    if sampling.INVERSION_KEY not in latent:
        raise NullTextError("the latent carries null-text embeddings but no inversion marker; connect Null-Text "
                            "Inversion's LATENT directly.")
    return check_null_text(latent[NULL_TEXT_KEY], steps, checks.context_dim(model.model.diffusion_model))


def for_sampling(model, null_text: NullText, steps: int, cfg: float):
    """(model, cfg) for sampling one video (the source prompt's reconstruction, or an edit) with `null_text`.

    Fast mode samples with the positive prediction only: guidance 1, which skips the uncond.
    Otherwise the cfg must be the one the embeddings were optimised for."""
    if null_text.fast:
        return model, 1.0
    if not math.isclose(cfg, null_text.cfg, rel_tol=1e-6):
        raise NullTextError(f"the null-text embeddings were optimised for cfg {null_text.cfg:g}; sample with that "
                            f"cfg (got {cfg:g}), or invert again with cfg {cfg:g}.")
    return with_null_text(model, null_text, steps), cfg


def _start_embedding(negative) -> torch.Tensor:
    if len(negative) != 1 or negative[0][0].shape[0] != 1:
        raise NullTextError("the negative conditioning must be one prompt (a CLIP Text Encode of the empty prompt); "
                            f"got {len(negative)} conds of batch {[c.shape[0] for c, _ in negative]}.")
    return negative[0][0][0].detach().float()


def _separate_skip(h, transformer_options):
    """input_block_patch_after_skip: the way down continues on a copy of the stored skip tensor.

    A ControlNet adds its output-block residuals to the stored skips in place (core's apply_control),
    while the next input block has saved the same tensor for backward; autograd would refuse it."""
    return h.clone() if h.requires_grad else h


def _fresh_conditioning(conditioning):
    return [[c.clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in o.items()}] for c, o in conditioning]


class _UncondSwap:
    """APPLY_MODEL wrapper: the uncond rows of the null videos get the current step's embedding (see
    `with_null_text`). `table[k]` is step k's embedding [tokens, C]; during optimisation entries are
    filled (and trained) as the steps go, and `active` is off while the inversion runs."""

    def __init__(self, levels: torch.Tensor, table, videos: int, null_videos: Sequence[int]):
        self.log_levels = levels[:-1].double().log()
        self.table = table
        self.videos = videos
        self.null_videos = tuple(null_videos)
        self.active = True

    def step_of(self, sigma: torch.Tensor) -> int:
        value = float(sigma.reshape(-1)[0])
        distance = (self.log_levels - math.log(max(value, 1e-30))).abs()
        step = int(distance.argmin())
        if distance[step] > LEVEL_TOLERANCE:
            raise NullTextError(f"the model was called at sigma {value:.5g}, which is none of the "
                                f"{len(self.table)}-step DDIM levels the null-text embeddings belong to; sample with "
                                "Video Sample (DDIM) and the inversion's steps.")
        return step

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        rows = transformer_options.get("cond_or_uncond") or []
        if self.active and c_crossattn is not None and 1 in rows:
            embedding = self.table[self.step_of(t)]
            if embedding is None:
                raise NullTextError("internal: the model was queried at a step not optimised yet.")
            if c_crossattn.shape[0] % len(rows):
                raise NullTextError(f"a model call of batch {c_crossattn.shape[0]} does not split into "
                                    f"{len(rows)} cond chunks.")
            chunks = list(c_crossattn.chunk(len(rows)))
            c_crossattn = torch.cat([self._swap(c, embedding) if kind == 1 else c for c, kind in zip(chunks, rows)])
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _swap(self, chunk: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        tokens = embedding.shape[0]
        if chunk.shape[1] % tokens or chunk.shape[2] != embedding.shape[1]:
            raise NullTextError(f"the uncond context is {list(chunk.shape[1:])}, which the null-text embedding "
                                f"{list(embedding.shape)} does not fit.")
        if chunk.shape[0] % self.videos:
            raise NullTextError(f"a model call of {chunk.shape[0]} rows per chunk does not hold {self.videos} videos.")
        per_video = chunk.shape[0] // self.videos
        context = embedding.to(device=chunk.device, dtype=chunk.dtype).repeat(chunk.shape[1] // tokens, 1)
        parts = list(chunk.split(per_video))
        for v in self.null_videos:
            parts[v] = context.expand(per_video, -1, -1)
        return torch.cat(parts)


class _PositiveOnly:
    """Post-CFG function of fast mode: the null videos' guided prediction is their cond prediction."""

    def __init__(self, videos: int, null_videos: Sequence[int]):
        self.videos = videos
        self.null_videos = tuple(null_videos)

    def __call__(self, args):
        denoised, cond = args["denoised"], args["cond_denoised"]
        if denoised.shape[0] % self.videos:
            raise NullTextError(f"a model call of batch {denoised.shape[0]} does not hold {self.videos} videos.")
        per_video = denoised.shape[0] // self.videos
        parts = list(denoised.split(per_video))
        for v in self.null_videos:
            parts[v] = cond[v * per_video:(v + 1) * per_video]
        return torch.cat(parts)


class _NullTextLoop:
    """The KSAMPLER sampler function: the inversion, then the per-step optimisation (module docstring)."""

    def __init__(self, swap: _UncondSwap, start_embedding: torch.Tensor, cfg: float, inner_steps: int,
                 epsilon: float, progress):
        self.swap = swap
        self.start_embedding = start_embedding
        self.cfg = cfg
        self.inner_steps = inner_steps
        self.epsilon = epsilon
        self.progress = progress
        self.losses: list[list[float]] = []

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        steps = len(sigmas) - 1
        trajectory = []

        def record(d):
            trajectory.append(d["x"])
            self.progress(d["i"], d["denoised"], d["x"], 2 * steps)

        self.swap.active = False  # the inversion runs at guidance 1, under the positive prompt only
        inverted = sampling.sample_ddim_inversion(model, x, sigmas, extra_args, callback=record, disable=disable)
        trajectory.append(inverted)
        self.swap.active = True
        tuning.make_weights_ordinary(model.inner_model.model_patcher)  # loaded by now
        self._optimise(model.inner_model, trajectory, sigmas.flip(0), extra_args["model_options"])
        return inverted

    def _eps(self, guider, x, sigma, which: int, model_options):
        # One branch of CFG through core's cond batching (conds processed by the guider, ControlNet
        # hints, hooks): which 0 is the positive, 1 the negative (core's cond_or_uncond index).
        conds = [guider.conds.get("positive"), None] if which == 0 else [None, guider.conds.get("negative")]
        denoised = comfy.samplers.calc_cond_batch(guider.inner_model, conds, x, sigma * x.new_ones([x.shape[0]]),
                                                  model_options)[which]
        return (x - denoised) / sigma

    def _optimise(self, guider, trajectory, levels, model_options):
        steps = len(levels) - 1
        x = trajectory[-1]
        embedding = self.start_embedding.to(x.device)
        for i in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            sigma, sigma_next = levels[i], levels[i + 1]
            s, s_next = float(sigma), float(sigma_next)
            # x_ddim = sqrt(a) x at the target level: the official loss's space.
            to_ddim = 1 / math.sqrt(1 + s_next**2)
            target = trajectory[steps - i - 1] * to_ddim
            with torch.no_grad():
                eps_cond = self._eps(guider, x, sigma, 0, model_options)
            parameter = embedding.detach().clone().requires_grad_(True)
            self.swap.table[i] = parameter
            optimizer = torch.optim.Adam([parameter], lr=1e-2 * (1.0 - i / 100.0))
            losses = []
            for _ in range(self.inner_steps):
                comfy.model_management.throw_exception_if_processing_interrupted()
                eps_uncond = self._eps(guider, x, sigma, 1, model_options)
                guided = eps_uncond + self.cfg * (eps_cond - eps_uncond)
                x_prev = sampling.ddim_step_comfy_space(x, guided, s, s_next, 0.0, None)
                loss = torch.nn.functional.mse_loss(x_prev * to_ddim, target)
                if not loss.requires_grad:  # backward would raise a bare autograd error
                    raise NullTextError("the loss got no gradient from the unconditional embedding. "
                                        + differentiable.no_backward_hint())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                if losses[-1] < self.epsilon + i * 2e-5:
                    break
            self.losses.append(losses)
            embedding = parameter.detach()
            self.swap.table[i] = embedding
            with torch.no_grad():
                eps_uncond = self._eps(guider, x, sigma, 1, model_options)
                guided = eps_uncond + self.cfg * (eps_cond - eps_uncond)
                self.progress(steps + i, x - s * guided, x, 2 * steps)
                x = sampling.ddim_step_comfy_space(x, guided, s, s_next, 0.0, None)
