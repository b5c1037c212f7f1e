"""The CLIP scores of tav_core.clip_score against a naive reference written from the definition.

Random-weight CLIPModel folders (a small configuration, and openai's ViT-L/14 configuration), with
openai CLIP's tokenizer and image processor, saved as a Hugging Face download and loaded offline.
"""
import itertools
import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tav_core import clip_score  # noqa: E402
from tav_core.testing.clip_models import cached_clip_model, write_clip_model  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return clip_score.load_scorer(str(write_clip_model(tmp_path_factory.mktemp("clip") / "small", "small")))


def frames(count, seed=0, size=(96, 128)):
    return torch.rand(count, *size, 3, generator=torch.Generator().manual_seed(seed))


def naive_embedding(scorer, image):
    """One frame at a time, through the processor and the model's forward pieces, as plain lists."""
    pixels = scorer.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = scorer.model.vision_model(pixel_values=pixels).pooler_output
        return scorer.model.visual_projection(pooled)[0].double().tolist()


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def naive_scores(scorer, video, prompt):
    images = clip_score.frames_to_pil(video)
    embeddings = [naive_embedding(scorer, image) for image in images]
    pairs = list(itertools.combinations(embeddings, 2))
    consistency = 100 * sum(cosine(a, b) for a, b in pairs) / len(pairs)
    tokens = scorer.processor.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        text = scorer.model.text_projection(scorer.model.text_model(**tokens).pooler_output)[0].double().tolist()
    alignment = sum(100 * cosine(e, text) for e in embeddings) / len(embeddings)
    return consistency, alignment


def test_scores_match_the_naive_reference(small):
    video = frames(5)
    got = clip_score.clip_scores(small, video, "a man is skiing on a mountain")
    want = naive_scores(small, video, "a man is skiing on a mountain")
    assert got == pytest.approx(want, abs=1e-4)


def test_text_alignment_is_loveu_logits_per_image_with_clip_l14_scale(small):
    """LOVEU's clip_score_text is CLIPModel's logits_per_image.mean(); ViT-L/14's logit scale is 100."""
    video, prompt = frames(3, seed=1), "a panda is surfing"
    with torch.no_grad():
        small.model.logit_scale.fill_(math.log(100.0))
        inputs = small.processor(text=[prompt], images=clip_score.frames_to_pil(video), return_tensors="pt",
                                 padding=True)
        loveu = float(small.model(**inputs).logits_per_image.mean())
    assert clip_score.clip_scores(small, video, prompt)[1] == pytest.approx(loveu, abs=1e-3)
    assert clip_score.pick_score(small, video, prompt) == pytest.approx(loveu, abs=1e-3)


def test_pick_score_uses_the_models_own_scale(tmp_path):
    scorer = clip_score.load_scorer(str(write_clip_model(tmp_path / "pick", "small", seed=3, logit_scale=50.0)))
    video, prompt = frames(3, seed=2), "a dog"
    assert clip_score.pick_score(scorer, video, prompt) == pytest.approx(
        clip_score.clip_scores(scorer, video, prompt)[1] / 2, rel=1e-6)


def test_identical_frames_are_perfectly_consistent(small):
    video = frames(1, seed=4).repeat(6, 1, 1, 1)
    assert clip_score.clip_scores(small, video, "x")[0] == pytest.approx(100.0, abs=1e-6)


def test_one_frame_is_a_clear_error(small):
    with pytest.raises(clip_score.ScoreError, match="at least 2"):
        clip_score.clip_scores(small, frames(1), "x")


def test_frame_consistency_moves_as_the_frames_drift_apart(small):
    """A clip that blends from one image to another, more at each level: consistency must fall."""
    start = torch.zeros(1, 96, 128, 3)
    end = torch.linspace(0, 1, 128)[None, None, :, None].expand(1, 96, 128, 3) * torch.tensor([1.0, 0.2, 0.6])
    ramp = torch.linspace(0, 1, 4)[:, None, None, None]
    scores = []
    for spread in (0.0, 0.3, 1.0):
        video = start * (1 - spread * ramp) + end * (spread * ramp)
        scores.append(clip_score.clip_scores(small, video, "x")[0])
    assert scores[0] == pytest.approx(100.0, abs=1e-6)
    assert scores[0] > scores[1] > scores[2]
    assert scores[2] < 99.0  # the metric really moves, not only in the last digits


def test_text_alignment_moves_with_the_prompt(small):
    video = frames(3, seed=7)
    aligned = [clip_score.clip_scores(small, video, prompt)[1] for prompt in ("a cat", "a red car at night")]
    assert abs(aligned[0] - aligned[1]) > 0.1


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(clip_score.ScoreError, match="not a CLIPModel folder"):
        clip_score.load_scorer(str(tmp_path))


def test_bad_image_shape_is_a_clear_error(small):
    with pytest.raises(clip_score.ScoreError, match="IMAGE batch"):
        clip_score.clip_scores(small, torch.rand(3, 64, 64), "x")


def test_vit_l_14_configuration():
    """openai/clip-vit-large-patch14's architecture (random weights, cached): 224 px, 768-d embeddings."""
    scorer = clip_score.load_scorer(str(cached_clip_model("vit-l-14")))
    assert scorer.model.config.vision_config.patch_size == 14
    assert scorer.model.config.vision_config.num_hidden_layers == 24
    video = frames(2, seed=8, size=(120, 160))
    consistency, alignment = clip_score.clip_scores(scorer, video, "a man is skiing")
    assert np.isfinite([consistency, alignment]).all()
    assert (consistency, alignment) == pytest.approx(naive_scores(scorer, video, "a man is skiing"), abs=1e-3)


def test_the_library_does_not_import_transformers_until_a_model_loads():
    import subprocess
    import sys

    code = "import sys, tav_core.clip_score; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
