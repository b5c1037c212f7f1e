"""CLIP scores of an edited video, by the protocol of Tune-A-Video's Table 1 and LOVEU-TGVE 2023.

- frame consistency: the mean cosine similarity of the CLIP image embeddings of every pair of distinct
  frames, x 100 (LOVEU's `clip_score_frame`: the off-diagonal mean of the cosine matrix);
- text alignment: the mean over frames of the CLIP score between the frame and the edited prompt,
  100 x cos (LOVEU's `clip_score_text`: `logits_per_image` of openai/clip-vit-large-patch14, whose
  logit scale is exactly 100); not clipped at 0, as LOVEU does not clip;
- PickScore: the mean over frames of the PickScore model's own `logit_scale.exp()` x cos.

LOVEU's scoring script (scripts/run_eval.py) computes exactly these, but as published two of its branches
never load a model: it checks for "clip_score_frames" where the metric is "clip_score_frame", and for
"pico_score" where it is "pick_score". Its frame consistency is also a fraction (92.40 is 100 x that).
It stretches every frame to 480 x 480 before CLIP's processor; LOVEU's clips are 480 x 480 already, so
here the frames go to the processor as they are.

The models are transformers `CLIPModel` folders (config, weights, tokenizer and processor files) and
their preprocessing is transformers' CLIP processor. transformers is imported here only, lazily, so the
rest of the pack never pays for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

CLIP_SCALE = 100.0
REQUIRED_FILES = ("config.json",)


class ScoreError(ValueError):
    """A clear, user-facing problem with a scoring model or its input."""


@dataclass
class Scorer:
    model: object  # transformers CLIPModel
    processor: object  # transformers CLIPProcessor (or any processor with images= and text=)
    device: torch.device


def _transformers():
    try:
        import transformers
    except ImportError as e:  # an optional dependency of this metric only
        raise ScoreError("the CLIP score needs the transformers package: pip install transformers") from e
    return transformers


def load_scorer(folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Scorer:
    """A CLIPModel folder (as `save_pretrained` or a Hugging Face download writes it), offline."""
    if not os.path.isdir(folder) or not all(os.path.isfile(os.path.join(folder, f)) for f in REQUIRED_FILES):
        raise ScoreError(f"{folder} is not a CLIPModel folder (it needs config.json, the weights, and the "
                         "tokenizer and processor files)")
    transformers = _transformers()
    try:
        model = transformers.CLIPModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ScoreError(f"cannot load the CLIP model in {folder}: {e}") from e
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ScoreError(f"{folder} has no CLIP processor (preprocessor_config.json and tokenizer files); "
                         "copy them from the model's original repository")
    model.eval().requires_grad_(False).to(device)
    return Scorer(model, processor, torch.device(device))


def frames_to_pil(frames: torch.Tensor) -> list:
    """ComfyUI IMAGE [F,H,W,3] in 0..1 -> PIL images, rounded to 8 bits as saved frames are."""
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ScoreError(f"images must be an IMAGE batch [frames, height, width, 3], got {tuple(frames.shape)}")
    array = (frames.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(frame) for frame in array]


@torch.no_grad()
def image_embeddings(scorer: Scorer, frames: torch.Tensor) -> torch.Tensor:
    """Projected CLIP image embeddings [F, D] of the frames, preprocessed by the model's processor."""
    pixels = scorer.processor(images=frames_to_pil(frames), return_tensors="pt")["pixel_values"]
    dtype = next(scorer.model.parameters()).dtype
    # The projection of the pooled output, spelled out: get_image_features' return type changed in
    # transformers 5.
    pooled = scorer.model.vision_model(pixel_values=pixels.to(scorer.device, dtype)).pooler_output
    return scorer.model.visual_projection(pooled).float()


@torch.no_grad()
def text_embedding(scorer: Scorer, prompt: str) -> torch.Tensor:
    """The projected CLIP text embedding [D] of the prompt (truncated to CLIP's 77 tokens)."""
    tokens = scorer.processor(text=[prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
    pooled = scorer.model.text_model(input_ids=tokens["input_ids"].to(scorer.device),
                                     attention_mask=tokens["attention_mask"].to(scorer.device)).pooler_output
    return scorer.model.text_projection(pooled).float()[0]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def frame_consistency_of(embeddings: torch.Tensor) -> float:
    """100 x the mean cosine similarity over all pairs of distinct frames."""
    frames = embeddings.shape[0]
    if frames < 2:
        raise ScoreError(f"frame consistency compares pairs of frames and needs at least 2; got {frames}")
    unit = _unit(embeddings.double())
    cosine = unit @ unit.T
    off_diagonal = cosine.sum() - cosine.diagonal().sum()
    return float(CLIP_SCALE * off_diagonal / (frames * (frames - 1)))


def text_alignment_of(embeddings: torch.Tensor, text: torch.Tensor, scale: float = CLIP_SCALE) -> float:
    """scale x the mean over frames of cos(frame, prompt)."""
    if embeddings.shape[0] < 1:
        raise ScoreError("text alignment needs at least one frame")
    return float(scale * (_unit(embeddings.double()) @ _unit(text.double())).mean())


def clip_scores(scorer: Scorer, frames: torch.Tensor, prompt: str) -> tuple[float, float]:
    """(frame consistency, text alignment) of the frames against the edited prompt."""
    if frames.shape[0] < 2:
        raise ScoreError(f"frame consistency needs at least 2 frames; the video has {frames.shape[0]}")
    embeddings = image_embeddings(scorer, frames)
    return frame_consistency_of(embeddings), text_alignment_of(embeddings, text_embedding(scorer, prompt))


def pick_score(scorer: Scorer, frames: torch.Tensor, prompt: str) -> float:
    """PickScore: the model's own logit_scale.exp() x cos(frame, prompt), averaged over frames."""
    scale = float(scorer.model.logit_scale.detach().float().exp())
    return text_alignment_of(image_embeddings(scorer, frames), text_embedding(scorer, prompt), scale)
