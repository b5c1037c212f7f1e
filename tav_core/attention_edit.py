"""Video edit with prompt-to-prompt attention control (Video-P2P), on ComfyUI's sampling machinery.

`edit_sample` samples the source video and the edited video together from one inversion: the latent
batch is the inverted latent twice (2F rows), the positive cond gives the first F rows the source
prompt and the next F the edited prompt, and DDIM with classifier-free guidance runs as a KSAMPLER
sampler function under a CFGGuider, as Video Sample does (progress, previews, interrupt, ControlNet
in the conds). A clone of the model carries the control (attention_control.py): attn2 replace
patches, the temporal attention override, the frame count; local blend runs after every step.

Unconditional prompts, as Video-P2P's pipeline: both videos get the empty prompt, except that a
null-text inversion's per-step embeddings replace the source video's (only the source's), and in
fast mode the source video is sampled without guidance (its conditional prediction alone).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
import latent_preview

from . import attention_control, checks, inflate, null_text, prompt_tokens, sampling
from .attention_control import ControlError, EditPlan
from .prompt_tokens import PromptError


class EditError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class PromptPair:
    source: prompt_tokens.Prompt
    edited: prompt_tokens.Prompt
    source_tokens: dict  # ComfyUI tokens, to encode
    edited_tokens: dict


def tokenize_pair(clip, source_prompt: str, edited_prompt: str) -> PromptPair:
    try:
        source, source_tokens = prompt_tokens.comfy_prompt(clip, source_prompt)
        edited, edited_tokens = prompt_tokens.comfy_prompt(clip, edited_prompt)
    except PromptError as e:
        raise EditError(str(e)) from e
    return PromptPair(source, edited, source_tokens, edited_tokens)


def plan_edit(clip, prompts: PromptPair, steps: int, cross_replace: float, self_replace: float, controller: str,
              reweight: Sequence[tuple[str, float]] = (), blend_words: tuple[str, str] | None = None,
              blend_threshold: float = attention_control.BLEND_THRESHOLD) -> EditPlan:
    """The controller's plan for an edit of `prompts` (see edit_sample for the arguments)."""
    checks.check_finite("cross_replace", cross_replace, EditError, 0.0, 1.0)
    checks.check_finite("self_replace", self_replace, EditError, 0.0, 1.0)
    checks.check_finite("blend_threshold", blend_threshold, EditError, 0.0, 1.0)
    source, edited = prompts.source, prompts.edited
    tensors = {}
    try:
        if controller == "replace":
            tensors["replace_mapper"] = prompt_tokens.replacement_mapper(source, edited)
        elif controller == "refine":
            tensors["refine_mapper"], tensors["refine_alphas"] = prompt_tokens.refinement_mapper(source, edited)
        elif controller == "reweight":
            if not reweight:
                raise EditError("the reweight controller needs words to reweight and their weights.")
            if source.length != edited.length:
                raise EditError("reweight alone scales the source's maps position by position, so both prompts must "
                                f"have as many tokens ({source.length - 2} and {edited.length - 2} here); usually "
                                "they are the same prompt. To change words and reweight, use replace or refine with "
                                "reweight words.")
        else:
            raise EditError(f"controller must be one of {', '.join(attention_control.CONTROLLERS)}, "
                            f"not {controller!r}.")
        if reweight:
            weighted = [(word, prompt_tokens.comfy_word(clip, word), value) for word, value in reweight]
            for word, _, value in weighted:
                checks.check_finite(f"the weight of {word!r}", value, EditError, -100.0, 100.0)
            tensors["equalizer"] = prompt_tokens.equalizer(edited, weighted)
        if blend_words is not None:
            source_word, edited_word = blend_words
            tensors["blend_tokens"] = torch.stack([
                prompt_tokens.token_mask(source.positions(source_word, prompt_tokens.comfy_word(clip, source_word))),
                prompt_tokens.token_mask(edited.positions(edited_word, prompt_tokens.comfy_word(clip, edited_word)))])
        return EditPlan(controller=controller, steps=steps,
                        cross_steps=attention_control.cross_replace_steps(cross_replace, steps),
                        self_window=attention_control.self_replace_window(self_replace, steps),
                        blend_start=attention_control.blend_start(steps), blend_threshold=blend_threshold, **tensors)
    except (PromptError, ControlError) as e:
        raise EditError(str(e)) from e


def _encode(clip, tokens: dict):
    encoded = clip.encode_from_tokens_scheduled(tokens)
    if len(encoded) != 1:
        raise EditError("attention control needs one conditioning per prompt; remove the CLIP's scheduled hooks.")
    return encoded[0]


def video_pair_conditioning(source, edited, frames: int, extras: dict | None = None) -> list:
    """One cond whose first `frames` rows get `source` ([cond, options] of CLIP's encode) and the next the edit's.

    Tensors with a batch of one (cross-attention, SDXL's pooled output) are stacked per row; ComfyUI
    keeps a cond's batch when it equals the latent's.
    """
    (source_cond, source_options), (edited_cond, edited_options) = source, edited

    def rows(a, b):
        return torch.cat([a.expand(frames, *a.shape[1:]), b.expand(frames, *b.shape[1:])])

    options = {}
    for key, value in source_options.items():
        other = edited_options.get(key)
        if torch.is_tensor(value) and torch.is_tensor(other) and value.shape[:1] == (1,) and other.shape == value.shape:
            options[key] = rows(value, other)
        else:
            options[key] = value
    options.update(extras or {})
    return [[rows(source_cond, edited_cond), options]]


def _control_options(conditioning) -> dict:
    """The ControlNet options ('control', 'control_apply_to_uncond') of an optional conditioning input."""
    if conditioning is None:
        return {}
    if not isinstance(conditioning, list) or not conditioning:
        raise EditError("the ControlNet conditioning is not a CONDITIONING; connect a ControlNet Apply node's output.")
    options = conditioning[0][1]
    if options.get("control") is None:
        raise EditError("the conditioning input carries no ControlNet; apply one (ControlNet Apply) or leave the "
                        "input unconnected. Its prompt is not used: the node encodes its two prompts itself.")
    return {key: options[key] for key in ("control", "control_apply_to_uncond") if key in options}


def _default_attention(q, k, v, heads, mask=None, **kwargs):
    return comfy_attention.optimized_attention(q, k, v, heads, mask=mask, **kwargs)


def controlled_model(model, controller: attention_control.AttentionController, frames: int):
    """A clone of the inflated `model` with the controller's patches; the base model is left as it was."""
    options = model.model_options.get("transformer_options", {})
    if options.get("patches_replace", {}).get("attn2"):
        raise EditError("the model already has cross-attention replace patches (e.g. IP-Adapter), which attention "
                        "control would override; edit with the model before those patches.")
    if model.model_options.get("context_handler") is not None:
        raise EditError("attention control cannot run in context windows (the two videos share each call); remove "
                        "the Context Windows node before it.")
    if options.get(inflate.TEMPORAL_ATTENTION_OPTION) is not None:
        raise EditError("the model already carries a temporal attention override (another attention edit).")
    clone = model.clone()
    patch = attention_control.CrossAttentionPatch(controller)
    for _, _, (block, number, index) in inflate.transformer_blocks(model.model.diffusion_model):
        clone.set_model_attn2_replace(patch, block, number, index)
    transformer_options = clone.model_options.setdefault("transformer_options", {})
    transformer_options[inflate.TEMPORAL_ATTENTION_OPTION] = controller.temporal_attention
    # Two videos of `frames` frames ride in one latent: the frame count is not the latent's batch.
    transformer_options[inflate.FRAMES_OPTION] = frames
    return clone


def _edited_preview(model, steps: int, frames: int):
    """ComfyUI's preview and progress callback, showing the edited video (the batch's second half)."""
    default = latent_preview.prepare_callback(model, steps)

    def callback(step, x0, x, total_steps):
        default(step, x0[frames:], x[frames:], total_steps)

    return callback


def edit_sample(model, clip, source_prompt: str, edited_prompt: str, latent: dict, steps: int = 50,
                cfg: float = 7.5, cross_replace: float = 0.2, self_replace: float = 0.5, controller: str = "replace",
                reweight: Sequence[tuple[str, float]] = (), blend_words: tuple[str, str] | None = None,
                blend_threshold: float = attention_control.BLEND_THRESHOLD, control=None, fast: bool | None = None,
                callback=None) -> tuple[torch.Tensor, torch.Tensor, attention_control.AttentionController]:
    """Sample the source and the edited video together under prompt-to-prompt control (Video-P2P).

    model: the inflated (tuned) MODEL. clip: the CLIP that encodes both prompts (its tokenizer gives
    the token positions). latent: DDIM Invert's or Null-Text Inversion's LATENT (the inversion marker
    is required; `steps` must be its steps). With null-text embeddings (null_text.NULL_TEXT_KEY) the
    source video's uncond takes the step's embedding and cfg must be the one they were optimised
    for; in their fast mode the source video is sampled without guidance. cfg: guidance of the videos.
    cross_replace: fraction of steps whose edited cross maps come from the source
    (int(cross_replace * (steps + 1)) steps, as Video-P2P's per-step alpha table of steps + 1 rows);
    self_replace: fraction of steps (int(self_replace * steps)) whose edited temporal maps are the
    source's. controller: "replace" (word swap, same word count), "refine" (words added, aligned by
    tokens) or "reweight" (the source's maps scaled by `reweight`). reweight: (word of the edited
    prompt, weight) pairs; with replace or refine they stack an equaliser on it (Video-P2P's
    eq_params). blend_words: (source word, edited word) for local blend, or None; blend_threshold:
    its mask threshold (Video-P2P's mask_th, 0.3) on the maps normalised by their maximum. control: an
    optional CONDITIONING whose ControlNet applies to both videos. fast: sample the source video without
    guidance (Video-P2P's --fast); None: as the latent says (a fast-mode Null-Text Inversion is fast);
    True also from a plain DDIM Invert latent. callback(step, x0, x, total_steps): as sampling.ddim_sample's,
    on the whole batch [source frames; edited frames]; the default previews the edited video.

    Returns (edited, source, controller): the raw latents [F, C, h, w] at the schedule's final level,
    as Video Sample's, and the run's AttentionController (its last local-blend mask, for inspection).
    """
    unet = model.model.diffusion_model
    samples = latent.get("samples") if isinstance(latent, dict) else None
    try:
        checks.check_latents(unet, samples, EditError)
        if not sampling.check_inversion(latent, steps):
            raise EditError("the latent is not an inversion: connect DDIM Invert's LATENT (inverted with the same "
                            "steps), since the edit must start from the source video's own noise.")
        null = null_text.from_latent(latent, steps, model)
    except (sampling.SamplingError, null_text.NullTextError) as e:
        raise EditError(str(e)) from e
    checks.check_finite("cfg", cfg, EditError, 0.0, 100.0)
    if fast is None:
        fast = null is not None and null.fast
    if null is not None and null.fast != bool(fast):
        raise EditError(f"fast is {fast}, but the latent is a {'fast-mode' if null.fast else 'null-text'} inversion; "
                        "leave fast unset to follow the latent.")
    if fast and null is None:
        null = null_text.NullText(None, float(cfg), True, steps)
    if null is not None and not null.fast and not math.isclose(cfg, null.cfg, rel_tol=1e-6):
        raise EditError(f"the null-text embeddings were optimised for cfg {null.cfg:g}; edit with that cfg (got "
                        f"{cfg:g}), or invert again with cfg {cfg:g}.")
    if not inflate.is_inflated(model):
        raise EditError("this MODEL is not inflated; use the model from One-Shot Tune or Load Tuned Weights.")
    frames = samples.shape[0]
    prompts = tokenize_pair(clip, source_prompt, edited_prompt)
    plan = plan_edit(clip, prompts, steps, cross_replace, self_replace, controller, reweight, blend_words,
                     blend_threshold)
    extras = _control_options(control)
    positive = video_pair_conditioning(_encode(clip, prompts.source_tokens), _encode(clip, prompts.edited_tokens),
                                       frames, extras)
    empty = _encode(clip, clip.tokenize(""))
    negative = video_pair_conditioning(empty, empty, frames, extras)
    checks.check_conditioning(unet, positive, EditError, "prompt conditioning")

    sigmas = sampling.ddim_levels(model, steps)
    control_run = attention_control.AttentionController(plan, sigmas, frames, _default_attention)
    patched = controlled_model(model, control_run, frames)
    if null is not None:  # Video-P2P: the null text (or fast mode) is the source video's only
        patched = null_text.with_null_text(patched, null, steps, videos=2, null_videos=(0,))
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sampler = comfy.samplers.KSAMPLER(sampling.sample_ddim, extra_options={"after_step": control_run.end_step})
    start = torch.cat([samples, samples])
    if callback is None:
        callback = _edited_preview(patched, steps, frames)
    try:
        out = sampling._run(patched, guider, sampler, sigmas, start, callback, seed=0)
    except ControlError as e:
        raise EditError(str(e)) from e
    out = sampling._rescale(patched, out, 1 / math.sqrt(1 + float(sigmas[-1]) ** 2))
    return out[frames:], out[:frames], control_run
