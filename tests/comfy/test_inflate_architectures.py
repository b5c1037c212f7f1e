"""Tiny SD2-shaped and SDXL-shaped UNets (ComfyUI's own classes) inflate and run."""
import pytest
import torch

FRAMES = 3
COMMON = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
          "in_channels": 4, "out_channels": 4, "model_channels": 64, "use_temporal_resblock": False,
          "use_temporal_attention": False, "channel_mult": [1, 2], "num_res_blocks": [1, 1]}
ARCHITECTURES = {
    # SD2.x: linear projections, 64-channel heads, OpenCLIP-H context, v-prediction.
    "sd2": ("SD20", {**COMMON, "context_dim": 1024, "use_linear_in_transformer": True, "adm_in_channels": None,
                     "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
                     "transformer_depth_middle": 1}),
    # SDXL: no attention at the first level, transformer depth 2, per-level heads, pooled-text adm.
    "sdxl": ("SDXL", {**COMMON, "context_dim": 2048, "use_linear_in_transformer": True, "adm_in_channels": 2816,
                      "num_classes": "sequential",
                      "transformer_depth": [0, 2], "transformer_depth_output": [0, 0, 2, 2],
                      "transformer_depth_middle": 2}),
}


def tiny_model(kind):
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    from tav_core.testing.checkpoints import initialised_weights

    class_name, unet_config = ARCHITECTURES[kind]
    model_config = getattr(comfy.supported_models, class_name)(dict(unet_config))
    model_type = comfy.model_base.ModelType.V_PREDICTION if kind == "sd2" else comfy.model_base.ModelType.EPS
    model = model_config.get_model({}) if kind == "sdxl" else comfy.model_base.BaseModel(model_config, model_type)
    model.diffusion_model.load_state_dict(initialised_weights(model.diffusion_model, torch.Generator().manual_seed(0)))
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device), unet_config


def run(core, patcher, unet_config, frames, batch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    context = torch.randn(batch, 77, unet_config["context_dim"], generator=g)
    extra = {}
    if unet_config["adm_in_channels"]:
        extra["y"] = torch.randn(batch, unet_config["adm_in_channels"], generator=g)
    core.inflate.load(patcher)
    return patcher.model.apply_model(x, torch.full((batch,), 2.0), c_crossattn=context,
                                     transformer_options=core.inflate.call_options(patcher, frames), **extra)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_tiny_unets_inflate_and_run(comfy_nodes, core, kind):
    base, unet_config = tiny_model(kind)
    blocks = core.inflate.transformer_blocks(base.model.diffusion_model)
    depth = max(key[2] for _, _, key in blocks) + 1
    assert depth == (2 if kind == "sdxl" else 1)
    inflated = core.inflate.inflate(base, seed=0)
    layers = core.inflate.temporal_layers(inflated)
    for path, block, _ in blocks:  # heads and head size of the block's own attn1
        attn = layers.layer(path).attn_temp
        assert attn.heads == block.n_heads and attn.to_q.out_features == block.n_heads * block.d_head
    with torch.inference_mode():
        one_base = run(core, base, unet_config, 1, 1)
        one_inflated = run(core, inflated, unet_config, 1, 1)
        video_base = run(core, base, unet_config, FRAMES, 2 * FRAMES)
        video_inflated = run(core, inflated, unet_config, FRAMES, 2 * FRAMES)
    assert torch.allclose(one_inflated, one_base, atol=1e-6, rtol=0)
    assert torch.isfinite(video_inflated).all()
    assert (video_inflated - video_base).abs().max() > 1e-3
