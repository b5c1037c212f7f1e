"""Inflate Model on ComfyUI's real UNet (tiny random SD1.5), checked against naive references."""
import math

import pytest
import torch

FRAMES = 4


def clip_latents(vae, clip_path, video, frames=FRAMES, size=64):
    images, _ = video.read_clip(str(clip_path), frames, 0, 2, size, size, "center crop")
    return vae.encode(torch.from_numpy(images))


def apply(core, patcher, x, sigma, context, frames):
    """One direct UNet call on a loaded model, the way ComfyUI's samplers call it."""
    options = core.inflate.call_options(patcher, frames)
    return patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)


def call(core, patcher, x, sigma, context, frames):
    core.inflate.load(patcher)
    return apply(core, patcher, x, sigma, context, frames)


def inputs(batch, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size, size, generator=g), torch.full((batch,), 2.0),
            torch.randn(batch, 77, 768, generator=g))


@pytest.fixture
def models(sd15, core):
    base = sd15[0]
    return base, core.inflate.inflate(base, seed=0)


def test_one_frame_equals_the_image_model(models, core):
    base, inflated = models
    x, sigma, context = inputs(1)
    with torch.inference_mode():
        expected = call(core, base, x, sigma, context, 1)
        got = call(core, inflated, x, sigma, context, 1)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()


def test_several_real_frames_differ_from_the_image_model(models, core, sd15, real_clip):
    base, inflated = models
    with torch.inference_mode():
        latents = clip_latents(sd15[2], real_clip, core.video)
        _, sigma, context = inputs(FRAMES)
        expected = call(core, base, latents, sigma, context, FRAMES)
        got = call(core, inflated, latents, sigma, context, FRAMES)
    # Frames 1.. attend to other frames, and the ResNet statistics are pooled over the clip.
    assert (got - expected).abs().max() > 1e-3
    assert torch.isfinite(got).all()


def capture(module, store, key):
    """A test hook registered after the pack's: it sees the module's final output."""
    def hook(mod, args, kwargs, output):
        store[key] = (args, kwargs, output)
    return module.register_forward_hook(hook, with_kwargs=True)


def test_resnet_groupnorm_is_video_wide_with_cond_and_uncond_batched(models, core):
    _, inflated = models
    diffusion_model = inflated.model.diffusion_model
    resblock = next(m for m in diffusion_model.modules() if type(m).__name__ == "ResBlock")
    norm = resblock.in_layers[0]
    seen = {}
    x, sigma, context = inputs(2 * FRAMES)  # two videos: cond and uncond
    with torch.inference_mode():
        core.inflate.load(inflated)
        handle = capture(norm, seen, "norm")  # after loading: loading re-registers the pack's hooks
        try:
            apply(core, inflated, x, sigma, context, FRAMES)
        finally:
            handle.remove()
    (h,), _, out = seen["norm"]
    reference = torch.nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps).requires_grad_(False)
    reference.load_state_dict({"weight": norm.weight, "bias": norm.bias})
    videos = h.reshape(2, FRAMES, *h.shape[1:]).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
    with torch.inference_mode():
        expected = reference(videos).permute(0, 2, 1, 3, 4).reshape(h.shape)
        per_frame = torch.nn.functional.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, per_frame, atol=1e-3)


def naive_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, spelled out."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d) for t in (q, k, v))
    weights = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    return torch.einsum("bhqk,bkhd->bqhd", weights.softmax(-1), v).reshape(b, n, c)


def naive_tune_a_video_block(block, temporal, x, context, frames):
    """The official BasicTransformerBlock of Tune-A-Video, written out frame by frame."""
    videos = x.shape[0] // frames
    n = block.norm1(x)
    attn1 = block.attn1
    q, k, v = attn1.to_q(n), attn1.to_k(n), attn1.to_v(n)
    rows = []
    for b in range(videos):
        for i in range(frames):
            row, first, former = b * frames + i, b * frames, b * frames + max(i - 1, 0)
            keys = torch.cat([k[first], k[former]])[None]
            values = torch.cat([v[first], v[former]])[None]
            rows.append(naive_attention(q[row][None], keys, values, block.n_heads))
    x = attn1.to_out(torch.cat(rows)) + x
    x = block.attn2(block.norm2(x), context=context) + x
    x = block.ff(block.norm3(x)) + x
    out = x.clone()
    attn = temporal.attn_temp
    for b in range(videos):
        for token in range(x.shape[1]):
            seq = x[b * frames:(b + 1) * frames, token][None]  # [1, F, C]: one position over time
            h = temporal.norm_temp(seq)
            h = attn.to_out(naive_attention(attn.to_q(h), attn.to_k(h), attn.to_v(h), block.n_heads))
            out[b * frames:(b + 1) * frames, token] += h[0]
    return out


def test_transformer_block_equals_the_naive_official_block(sd15, core):
    inflated = core.inflate.inflate(sd15[0], seed=3)
    layers = core.inflate.temporal_layers(inflated)
    path, block, _ = core.inflate.transformer_blocks(inflated.model.diffusion_model)[0]
    temporal = layers.layer(path)
    with torch.no_grad():  # a trained-looking temporal layer, so that it contributes
        torch.nn.init.normal_(temporal.attn_temp.to_out[0].weight, std=0.05)
        torch.nn.init.normal_(temporal.attn_temp.to_out[0].bias, std=0.05)
    seen = {}
    x, sigma, context = inputs(2 * FRAMES, seed=1)
    with torch.inference_mode():
        core.inflate.load(inflated)
        handle = capture(block, seen, "block")
        try:
            apply(core, inflated, x, sigma, context, FRAMES)
        finally:
            handle.remove()
        (h,), kwargs, out = seen["block"]
        expected = naive_tune_a_video_block(block, temporal, h, kwargs["context"], FRAMES)
    assert torch.allclose(out, expected, atol=2e-5, rtol=1e-4), (out - expected).abs().max()


def test_base_model_unchanged_after_inflate_sample_and_eject(sd15, core, comfy_nodes):
    import comfy.sample

    base = sd15[0]
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    x, sigma, context = inputs(FRAMES)
    with torch.inference_mode():
        before = call(core, base, x, sigma, context, FRAMES)
        inflated = core.inflate.inflate(base, seed=0)
        positive = [[context[:1], {}]]
        noise = torch.randn(FRAMES, 4, 8, 8)
        comfy.sample.sample(inflated, noise, 2, 5.0, "ddim", "ddim_uniform", positive, positive,
                            torch.zeros(FRAMES, 4, 8, 8), disable_pbar=True, seed=0)
        after = call(core, base, x, sigma, context, FRAMES)
    assert torch.equal(before, after)
    assert weights.keys() == base.model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in base.model.state_dict().items())
    hooks = [m for m in base.model.modules() if m._forward_hooks]
    assert hooks == [], "hooks left on the base model after ejection"


def test_core_sampler_learns_the_frame_count_from_the_latent(models, comfy_nodes):
    import comfy.sample

    _, inflated = models
    g = torch.Generator().manual_seed(0)
    context = torch.randn(1, 77, 768, generator=g)
    noise = torch.randn(FRAMES, 4, 8, 8, generator=g)
    with torch.inference_mode():
        out = comfy.sample.sample(inflated, noise, 2, 5.0, "euler", "normal", [[context, {}]],
                                  [[torch.zeros_like(context), {}]], torch.zeros_like(noise), seed=0,
                                  disable_pbar=True)
    assert out.shape == noise.shape and torch.isfinite(out).all()


def test_batches_of_partial_videos_are_refused(models, core):
    _, inflated = models
    x, sigma, context = inputs(FRAMES + 1)
    with torch.inference_mode(), pytest.raises(ValueError, match="whole videos"):
        call(core, inflated, x, sigma, context, FRAMES)


def test_inflating_twice_is_a_no_op(models, core):
    _, inflated = models
    again = core.inflate.inflate(inflated, seed=5)
    assert core.inflate.temporal_layers(again) is core.inflate.temporal_layers(inflated)
    assert again.injections.keys() == inflated.injections.keys()


def test_the_seed_sets_the_temporal_weights(sd15, core):
    def weights(seed):
        layers = core.inflate.temporal_layers(core.inflate.inflate(sd15[0], seed=seed))
        return layers.state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "to_q" in k)
    out = [k for k in a if "to_out" in k]
    assert out and all(torch.count_nonzero(a[k]) == 0 for k in out), "attn_temp.to_out must start at zero"


def test_several_conds_and_area_conds_batch_whole_videos(models, comfy_nodes):
    """Cond and uncond together, two positive conds, one of them on an area: every call holds whole videos."""
    import comfy.sample
    import node_helpers

    _, inflated = models
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
    area = node_helpers.conditioning_set_values([[b, {}]], {"area": (4, 4, 0, 0), "strength": 1.0,
                                                            "set_area_to_bounds": False})
    noise = torch.randn(FRAMES, 4, 8, 8, generator=g)
    with torch.inference_mode():
        out = comfy.sample.sample(inflated, noise, 2, 5.0, "euler", "normal", [[a, {}]] + area,
                                  [[torch.zeros_like(a), {}]], torch.zeros_like(noise), seed=0, disable_pbar=True)
    assert out.shape == noise.shape and torch.isfinite(out).all()
