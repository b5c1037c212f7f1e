"""The bad-input matrix of the model nodes: every bad value gets a clear error that names the node and
the input, instead of a raw torch/optimizer error or a NaN video; edited inversions are caught."""
import math

import pytest
import torch

from tav_core.testing.comfy_inprocess import clip_images, encode_prompts

FRAMES = 4
STEPS = 2
TUNE_PREFIX = r"^One-Shot Tune \(Tune-A-Video\): "
INVERT_PREFIX = r"^DDIM Invert \(Tune-A-Video\): "
SAMPLE_PREFIX = r"^Video Sample \(Tune-A-Video\): "
PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"


@pytest.fixture(scope="module")
def inputs(sd15, core, synthetic_clip):
    """(inflated MODEL, clip LATENT, source prompt, empty prompt)."""
    model, clip, vae = sd15
    with torch.inference_mode():
        latent = {"samples": vae.encode(clip_images(synthetic_clip, FRAMES))}
    prompts = encode_prompts(clip, "a ball is rolling", "")
    return core.inflate.inflate(model), latent, prompts["a ball is rolling"], prompts[""]


@pytest.fixture(scope="module")
def nodes(pack):
    tune = pack.nodes.tune.OneShotTune.PREPARE_CLASS_CLONE({})  # as ComfyUI runs it (hidden inputs set)
    return tune, pack.nodes.sample.DDIMInvert, pack.nodes.sample.VideoSample


@pytest.fixture(scope="module")
def inversion(nodes, inputs):
    _, invert, _ = nodes
    model, latent, _, empty = inputs
    with torch.inference_mode():
        return invert.execute(model, latent, empty, STEPS).result[0]


def _tune(nodes, inputs, **overrides):
    tune = nodes[0]
    model, latent, positive, _ = inputs
    args = dict(model=model, positive=positive, latent=latent, steps=1, learning_rate=1e-3, seed=0, trainable=PAPER,
                gradient_checkpointing=False, checkpoint_blocks="all blocks", precision="fp32", optimizer="AdamW",
                cache=False) | overrides
    with torch.inference_mode():
        return tune.execute(**args)


def _sample(nodes, inputs, latent, **overrides):
    sample = nodes[2]
    model, _, positive, empty = inputs
    args = dict(model=model, positive=positive, negative=empty, latent=latent, steps=STEPS, cfg=12.5, seed=0,
                eta=0.0) | overrides
    with torch.inference_mode():
        return sample.execute(**args)


WIDE = [[torch.zeros(1, 77, 1024), {}]]  # SD2.x's text width on an SD1.x model
BAD_LATENTS = {
    "16 channels": (torch.zeros(FRAMES, 16, 8, 8), "16 channels but the model expects 4"),
    "5-D": (torch.zeros(1, FRAMES, 4, 8, 8), r"\[F,C,h,w\].*\[1, 4, 4, 8, 8\]"),
    "odd size": (torch.zeros(FRAMES, 4, 9, 8), "height 72 is not a multiple of 16: use 64 or 80"),
}


@pytest.mark.parametrize("case", list(BAD_LATENTS))
def test_bad_latents_are_refused_by_every_model_node(nodes, inputs, case):
    samples, message = BAD_LATENTS[case]
    model, _, positive, empty = inputs
    with pytest.raises(ValueError, match=TUNE_PREFIX + ".*" + message):
        _tune(nodes, inputs, latent={"samples": samples})
    with pytest.raises(ValueError, match=INVERT_PREFIX + ".*" + message):
        with torch.inference_mode():
            nodes[1].execute(model, {"samples": samples}, empty, STEPS)
    with pytest.raises(ValueError, match=SAMPLE_PREFIX + ".*" + message):
        _sample(nodes, inputs, {"samples": samples})


def test_conditioning_of_another_width_is_refused_by_every_model_node(nodes, inputs):
    model, latent, _, empty = inputs
    with pytest.raises(ValueError, match=TUNE_PREFIX + ".*width 1024.*768"):
        _tune(nodes, inputs, positive=WIDE)
    with pytest.raises(ValueError, match=INVERT_PREFIX + ".*width 1024.*768"):
        with torch.inference_mode():
            nodes[1].execute(model, latent, WIDE, STEPS)
    for name in ("positive", "negative"):
        with pytest.raises(ValueError, match=SAMPLE_PREFIX + f".*{name} conditioning has width 1024"):
            _sample(nodes, inputs, latent, **{name: WIDE})


@pytest.mark.parametrize("value", [math.nan, math.inf, -1e-3, 0.0])
def test_bad_learning_rates_are_refused(nodes, inputs, value):
    with pytest.raises(ValueError, match=TUNE_PREFIX + "learning_rate"):
        _tune(nodes, inputs, learning_rate=value)


@pytest.mark.parametrize("name, value", [("cfg", math.nan), ("cfg", math.inf), ("eta", math.nan), ("eta", 1.5),
                                         ("eta", -0.1)])
def test_bad_guidance_and_eta_are_refused(nodes, inputs, name, value):
    with pytest.raises(ValueError, match=SAMPLE_PREFIX + name):
        _sample(nodes, inputs, inputs[1], **{name: value})


def test_the_inversion_samples_unchanged(nodes, inputs, inversion):
    (video,) = _sample(nodes, inputs, inversion).result
    assert torch.isfinite(video["samples"]).all()


@pytest.mark.parametrize("edit", [
    lambda s: s * 1.1,  # LatentMultiply
    lambda s: torch.nn.functional.interpolate(s, scale_factor=2)[..., ::2, ::2].contiguous() + 1e-3,
    lambda s: torch.nn.functional.interpolate(s, size=(16, 16)),  # LatentUpscale (to 128 px)
], ids=["multiply", "tiny change", "upscale"])
def test_an_edited_inversion_is_refused(nodes, inputs, inversion, edit):
    edited = {**inversion, "samples": edit(inversion["samples"])}
    with pytest.raises(ValueError, match=SAMPLE_PREFIX + "the latent was changed after DDIM Invert"):
        _sample(nodes, inputs, edited)
