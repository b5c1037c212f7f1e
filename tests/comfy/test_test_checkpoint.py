"""The generated test checkpoint loads in real ComfyUI as SD1.5, fully initialised and usable."""
import pytest
import torch
from safetensors import safe_open

from tav_core.testing.checkpoints import sd15_unet_config
from tav_core.testing.comfy_inprocess import bootstrap_comfyui

# ComfyUI builds these for SD1 text encoders, but the SD1 checkpoint layout has no slot for them:
# logit_scale gets its value in the constructor, text_projection only feeds the pooled output,
# which SD1.5's UNet never reads. Real SD1.5 checkpoints load the same way.
CLIP_KEYS_NOT_IN_SD1_LAYOUT = {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    """(model patcher, CLIP, VAE) as ComfyUI's CheckpointLoaderSimple returns them."""
    bootstrap_comfyui()
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(tiny_checkpoint), output_vae=True, output_clip=True)
    return model, clip, vae


@pytest.fixture(scope="module")
def file_keys(tiny_checkpoint):
    with safe_open(str(tiny_checkpoint), "pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def text_cond(loaded):
    clip = loaded[1]
    return clip.encode_from_tokens(clip.tokenize("a man is skiing"))


def test_detected_as_sd15_eps_with_transformers_down_mid_and_up(loaded):
    import comfy.model_base
    from comfy.ldm.modules.attention import BasicTransformerBlock

    base_model = loaded[0].model
    assert type(base_model.model_config).__name__ == "SD15"
    assert base_model.model_type == comfy.model_base.ModelType.EPS
    detected = base_model.model_config.unet_config
    assert {k: detected[k] for k in sd15_unet_config("tiny")} == sd15_unet_config("tiny")
    unet = base_model.diffusion_model
    for path in (unet.input_blocks, unet.middle_block, unet.output_blocks):
        assert any(isinstance(m, BasicTransformerBlock) for m in path.modules())


def test_file_holds_every_weight_of_unet_clip_and_vae(loaded, file_keys):
    model, clip, vae = loaded
    model_config = model.model.model_config
    unet = {"model.diffusion_model." + k for k in model.model.diffusion_model.state_dict()}
    clip_model = set(clip.cond_stage_model.state_dict())
    # ComfyUI's own SD1.5 saving map turns the loaded CLIP's keys back into file keys.
    clip_saved = set(model_config.process_clip_state_dict_for_saving(dict.fromkeys(clip_model)))
    vae_saved = {"first_stage_model." + k for k in vae.first_stage_model.state_dict()}

    assert {k for k in file_keys if k.startswith("model.diffusion_model.")} == unet
    assert {k for k in file_keys if k.startswith("cond_stage_model.")} == clip_saved
    assert len(clip_model) - len(clip_saved) == len(CLIP_KEYS_NOT_IN_SD1_LAYOUT)
    assert CLIP_KEYS_NOT_IN_SD1_LAYOUT <= clip_model
    assert {k for k in file_keys if k.startswith("first_stage_model.")} == vae_saved
    assert type(vae.first_stage_model).__name__ == "TAESD"
    assert file_keys == unet | clip_saved | vae_saved


def test_unet_parameters_are_finite_and_random_like_pytorch_defaults(loaded):
    unet = loaded[0].model.diffusion_model
    checked = 0
    for name, layer in unet.named_modules():
        for pname, p in layer.named_parameters(recurse=False):
            where = f"{name}.{pname}"
            assert torch.isfinite(p).all(), where
            if isinstance(layer, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                assert torch.all(p == (1.0 if pname == "weight" else 0.0)), where
            else:
                assert p.std() > 0, f"{where} is constant"
            checked += 1
    assert checked == len(list(unet.parameters()))


def test_clip_text_encode(text_cond):
    assert text_cond.shape == (1, 77, 768)
    assert torch.isfinite(text_cond).all()


def test_vae_round_trip_shapes(loaded):
    vae = loaded[2]
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latents = vae.encode(images)
        decoded = vae.decode(latents)
    assert latents.shape == (2, 4, 8, 8)
    assert decoded.shape == (2, 64, 64, 3)
    assert torch.isfinite(latents).all() and torch.isfinite(decoded).all()


def test_unet_output_depends_on_the_frame(loaded, text_cond):
    base_model = loaded[0].model
    frames = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = base_model.apply_model(frames, torch.tensor([1.0, 1.0]),
                                     c_crossattn=text_cond.repeat(2, 1, 1))
    assert out.shape == frames.shape
    assert torch.isfinite(out).all()
    # Bias-dominated weights would give (nearly) the same output for both frames.
    difference = (out[0] - out[1]).abs().mean() / out.abs().mean()
    assert difference > 0.1, f"relative frame difference {difference:.4f}"
