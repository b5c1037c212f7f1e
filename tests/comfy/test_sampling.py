"""DDIM Invert / Video Sample on ComfyUI's sampling machinery, checked against a naive reference loop.

The naive loop is tav_core.schedule's reference DDIM (diffusers' float32 alphas) with the UNet called
directly at integer timesteps and classifier-free guidance done by hand, as the official code does.
"""

import pytest
import torch

from tav_core.testing.comfy_inprocess import (clip_images, encode_prompts, inflate_with_active_temporal_layers,
                                              with_v_prediction)

FRAMES = 4
STEPS = 5
CFG = 12.5
SCALE = 0.18215  # the reference's latent scale: its latents are raw VAE latents times this
TOLERANCE = 1e-4


def relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def frames(synthetic_clip):
    return clip_images(synthetic_clip, FRAMES)


@pytest.fixture(scope="module")
def clip_latents(sd15, frames):
    with torch.inference_mode():  # as ComfyUI runs nodes
        return sd15[2].encode(frames)  # raw VAE latents [F, 4, 8, 8]


@pytest.fixture(scope="module")
def prompts(sd15):
    return encode_prompts(sd15[1], "", "a red car on a road")


@pytest.fixture(scope="module")
def inflated(sd15, core):
    return inflate_with_active_temporal_layers(core.inflate, sd15[0])


class NaiveReference:
    """The official loops: UNet at integer t, eps (or v converted to eps), CFG by hand, diffusers' alphas."""

    def __init__(self, core, patcher, v_pred=False):
        self.core, self.patcher, self.v_pred = core, patcher, v_pred
        self.alphas = core.schedule.scaled_linear_alphas_cumprod()

    def eps_fn(self, contexts, cfg=1.0):
        unet = self.patcher.model.diffusion_model
        options = self.core.inflate.call_options(self.patcher, FRAMES)

        def eps_of(x, t, context):
            out = unet(x, torch.full((x.shape[0],), float(t)), context=context.expand(x.shape[0], -1, -1),
                       transformer_options=options).float()
            return self.core.schedule.v_to_eps(out, x, self.alphas[t]) if self.v_pred else out

        def eps(x, t):
            if len(contexts) == 1:
                return eps_of(x, t, contexts[0])
            # One call on [cond video; uncond video], as the official pipeline batches them.
            both = torch.cat([c.expand(x.shape[0], -1, -1) for c in contexts])
            cond, uncond = eps_of(torch.cat([x, x]), t, both).chunk(2)
            return uncond + cfg * (cond - uncond)

        return eps

    def invert(self, raw, context, steps=STEPS):
        self.core.inflate.load(self.patcher)
        return self.core.schedule.ddim_invert(self.eps_fn([context]), raw * SCALE, steps, self.alphas)

    def sample(self, x_t, cond, uncond, steps=STEPS, cfg=CFG, eta=0.0, generator=None):
        self.core.inflate.load(self.patcher)
        x = self.core.schedule.ddim_sample(self.eps_fn([cond, uncond], cfg), x_t, steps, self.alphas, eta, generator)
        return x / SCALE

    def last_level(self, steps=STEPS):
        return self.alphas[self.core.schedule.ddim_timesteps(steps)[0]]


def context(conditioning):
    return conditioning[0][0]


def invert_and_sample(core, model, raw, prompts):
    with torch.inference_mode():
        inverted = core.sampling.ddim_invert(model, raw, prompts[""], STEPS)
        sampled = core.sampling.ddim_sample(model, prompts["a red car on a road"], prompts[""], inverted, STEPS,
                                            CFG, 0.0, 0, from_inversion=True)
    return inverted, sampled


@pytest.mark.parametrize("v_pred", [False, True], ids=["eps", "v-prediction"])
def test_invert_and_sample_match_the_naive_reference(core, inflated, clip_latents, prompts, v_pred):
    model = with_v_prediction(inflated) if v_pred else inflated
    inverted, sampled = invert_and_sample(core, model, clip_latents, prompts)
    naive = NaiveReference(core, model, v_pred)
    with torch.inference_mode():
        expected_inverted = naive.invert(clip_latents, context(prompts[""]))
        expected = naive.sample(expected_inverted, context(prompts["a red car on a road"]), context(prompts[""]))
    # The inverted LATENT is ComfyUI's x = x_ddim / sqrt(a_T), in raw VAE units.
    got_inverted = inverted * SCALE * naive.last_level().sqrt()
    errors = relative_error(got_inverted, expected_inverted), relative_error(sampled, expected)
    print(f"max relative error vs naive reference ({'v' if v_pred else 'eps'}): invert {errors[0]:.2e}, "
          f"sample {errors[1]:.2e}")
    assert max(errors) < TOLERANCE, errors
    assert (sampled - clip_latents).abs().max() > 1e-2  # the prompt changed the video


def test_text_to_video_from_seeded_noise_with_eta_matches_the_naive_reference(core, inflated, prompts):
    empty = torch.zeros(FRAMES, 4, 8, 8)
    positive, negative = prompts["a red car on a road"], prompts[""]
    with torch.inference_mode():
        got = core.sampling.ddim_sample(inflated, positive, negative, empty, STEPS, CFG, 0.5, 7, from_inversion=False)
        generator = torch.Generator().manual_seed(7)  # one stream: x_T first, then the eta noise
        x_t = torch.randn(empty.shape, generator=generator)
        expected = NaiveReference(core, inflated).sample(x_t, context(positive), context(negative), eta=0.5,
                                                         generator=generator)
    assert relative_error(got, expected) < TOLERANCE


def gaussian_data_model(model, mean=0.5, std=1.0):
    """The model as the exact denoiser of data x0 ~ N(mean, std^2) (in model space), for any prompt."""
    patched = model.clone()

    def denoise(apply_model, args):
        x, sigma = args["input"], args["timestep"].view(-1, 1, 1, 1)
        return mean + std**2 / (std**2 + sigma**2) * (x - mean)

    patched.set_model_unet_function_wrapper(denoise)
    return patched


@pytest.fixture(scope="module")
def exact_model(sd15):
    return gaussian_data_model(sd15[0])


def test_inversion_then_sampling_recovers_the_clip_with_an_exact_model(core, exact_model, clip_latents, prompts):
    latents = clip_latents / (clip_latents.std() * SCALE)  # the clip at the data's scale (unit std in model space)
    empty = prompts[""]
    errors = []
    for steps in (10, 50, 250):
        with torch.inference_mode():
            inverted = core.sampling.ddim_invert(exact_model, latents, empty, steps)
            recovered = core.sampling.ddim_sample(exact_model, empty, empty, inverted, steps, 1.0, 0.0, 0,
                                                  from_inversion=True)
        errors.append(relative_error(recovered, latents))
        assert (inverted - latents).abs().max() > 1.0 / SCALE  # it did travel to noise and back
    print(f"round-trip relative error at 10, 50, 250 steps: {', '.join(f'{e:.1e}' for e in errors)}")
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-2, errors


def test_eta_noise_is_seeded(core, exact_model, prompts):
    def run(seed):
        empty, cond = torch.zeros(FRAMES, 4, 8, 8), prompts[""]
        with torch.inference_mode():
            return core.sampling.ddim_sample(exact_model, cond, cond, empty, STEPS, CFG, 0.5, seed, False)

    got, again, other = run(7), run(7), run(8)
    assert torch.equal(got, again)
    assert not torch.allclose(got, other)


def controlnet_conds(prompts, frames):
    import comfy.controlnet
    import nodes

    from tav_core.testing.checkpoints import cached_sd15_controlnet

    control = comfy.controlnet.load_controlnet(str(cached_sd15_controlnet()))
    apply = nodes.NODE_CLASS_MAPPINGS["ControlNetApplyAdvanced"]()
    return apply.apply_controlnet(prompts["a red car on a road"], prompts[""], control, frames, 1.0, 0.0, 1.0)


def short_video(core, model, positive, negative):
    """A cheap text-to-video run (2 steps from seeded noise) for checks that patches take effect."""
    with torch.inference_mode():
        return core.sampling.ddim_sample(model, positive, negative, torch.zeros(FRAMES, 4, 8, 8), 2, CFG,
                                         0.0, 0, from_inversion=False)


@pytest.fixture(scope="module")
def plain_video(core, inflated, prompts):
    return short_video(core, inflated, prompts["a red car on a road"], prompts[""])


def test_controlnet_in_the_conditioning_steers_the_inflated_model(core, inflated, prompts, frames, plain_video):
    controlled = short_video(core, inflated, *controlnet_conds(prompts, frames))
    assert torch.isfinite(controlled).all()
    assert relative_error(controlled, plain_video) > 1e-3


@pytest.fixture
def lora_dir(tmp_path):
    import folder_paths

    folder_paths.add_model_folder_path("loras", str(tmp_path))
    yield tmp_path
    folder_paths.folder_names_and_paths["loras"][0].remove(str(tmp_path))


def test_lora_on_the_inflated_model_changes_the_video(core, inflated, sd15, prompts, lora_dir, plain_video):
    import nodes

    import comfy.lora

    from tav_core.testing.checkpoints import TINY_LORA_TARGETS, write_sd15_lora

    assert set(TINY_LORA_TARGETS) <= set(comfy.lora.model_lora_keys_unet(inflated.model, {}))
    write_sd15_lora(lora_dir / "random.safetensors")
    loader = nodes.NODE_CLASS_MAPPINGS["LoraLoader"]()
    lora_model, _ = loader.load_lora(inflated, sd15[1], "random.safetensors", 1.0, 0.0)
    assert core.inflate.is_inflated(lora_model)
    with_lora = short_video(core, lora_model, prompts["a red car on a road"], prompts[""])
    assert torch.isfinite(with_lora).all()
    assert relative_error(with_lora, plain_video) > 1e-3


def test_the_samplers_call_back_once_per_step(core, exact_model, clip_latents, prompts):
    # The callback contract of ComfyUI's samplers, which its preview and progress bar build on.
    calls = []
    record = lambda step, x0, x, total_steps: calls.append((step, total_steps, x0.shape == x.shape == clip_latents.shape))
    with torch.inference_mode():
        inverted = core.sampling.ddim_invert(exact_model, clip_latents, prompts[""], STEPS, callback=record)
        core.sampling.ddim_sample(exact_model, prompts["a red car on a road"], prompts[""], inverted, STEPS, CFG,
                                  0.0, 0, from_inversion=True, callback=record)
    expected = [(step, STEPS, True) for step in range(STEPS)]
    assert calls == expected * 2  # inversion, then sampling


def test_progress_reaches_the_progress_bar(core, exact_model, clip_latents, prompts, progress_hook):
    # Newer ComfyUIs throttle ProgressBar updates (first and last always pass), so only the ends are certain.
    invert_and_sample(core, exact_model, clip_latents, prompts)
    runs = [[]]
    for value, total in progress_hook:
        if runs[-1] and value < runs[-1][-1][0]:
            runs.append([])
        runs[-1].append((value, total))
    assert len(runs) == 2  # inversion, then sampling
    for run in runs:
        assert run[0] == (1, STEPS) and run[-1] == (STEPS, STEPS)
        assert [v for v, _ in run] == sorted(set(v for v, _ in run))


def test_interrupt_stops_the_run_and_the_next_run_works(core, exact_model, clip_latents, prompts):
    import comfy.model_management

    def interrupt_at_step_1(step, x0, x, total_steps):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)

    with torch.inference_mode():
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            core.sampling.ddim_invert(exact_model, clip_latents, prompts[""], STEPS, callback=interrupt_at_step_1)
        assert torch.isfinite(core.sampling.ddim_invert(exact_model, clip_latents, prompts[""], STEPS)).all()


@pytest.fixture(scope="module")
def sample_nodes(pack):
    return pack.nodes.sample.DDIMInvert, pack.nodes.sample.VideoSample


def test_schemas_have_descriptions_and_tooltips(sample_nodes):
    for node in sample_nodes:
        info = node.GET_NODE_INFO_V1()
        assert info["description"] and info["category"] == "Tune-A-Video"
        assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())
        assert all(info["output_tooltips"])
    assert sample_nodes[0].GET_NODE_INFO_V1()["output"] == ["LATENT", "NOISE"]


def test_nodes_sample_the_inversion_and_refuse_mismatches(core, sample_nodes, exact_model, clip_latents, prompts):
    invert, sample = sample_nodes
    positive, negative = prompts["a red car on a road"], prompts[""]
    with torch.inference_mode():
        latent, noise = invert.execute(exact_model, {"samples": clip_latents}, negative, STEPS).result
        (video,) = sample.execute(exact_model, positive, negative, latent, STEPS, CFG, 0, 0.0).result
        _, expected = invert_and_sample(core, exact_model, clip_latents, prompts)
    assert latent[core.sampling.INVERSION_KEY]["steps"] == STEPS
    assert core.sampling.INVERSION_KEY not in video
    assert torch.equal(video["samples"], expected)
    with pytest.raises(ValueError, match="inverted with 5 steps"):
        sample.execute(exact_model, positive, negative, latent, STEPS + 1, CFG, 0, 0.0)
    with pytest.raises(ValueError, match="inverted as 4 frames"):
        two_frames = {**latent, "samples": latent["samples"][:2]}
        sample.execute(exact_model, positive, negative, two_frames, STEPS, CFG, 0, 0.0)


def test_inversion_noise_starts_core_sampler_custom_advanced_from_the_inversion(core, exact_model, clip_latents,
                                                                                  prompts, comfy_nodes):
    import comfy.samplers

    positive, negative = prompts["a red car on a road"], prompts[""]
    sigmas = core.sampling.ddim_levels(exact_model, STEPS)
    basic = comfy.samplers.calculate_sigmas(exact_model.get_model_object("model_sampling"), "ddim_uniform", STEPS)
    assert torch.allclose(basic[:-1], sigmas[:-1])  # ddim_uniform hits the same levels when steps divides 1000
    with torch.inference_mode():
        inverted = core.sampling.ddim_invert(exact_model, clip_latents, negative, STEPS)
        noise = core.sampling.InversionNoise(exact_model, inverted, STEPS)
        guider = comfy.samplers.CFGGuider(exact_model)
        guider.set_conds(positive, negative)
        guider.set_cfg(CFG)
        sampler = comfy.samplers.sampler_object("euler")  # Euler is deterministic DDIM in ComfyUI's space
        advanced = comfy_nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]
        out, _ = advanced.execute(noise, guider, sampler, sigmas, {"samples": torch.zeros_like(inverted)}).result
        expected = core.sampling.ddim_sample(exact_model, positive, negative, inverted, STEPS, CFG, 0.0, 0, True)
    # Core returns ComfyUI's x at the last level; the reference's x_ddim is sqrt(a[0]) times it.
    last_level = 1 / (1 + sigmas[-1].double() ** 2)
    assert relative_error(out["samples"] * last_level.sqrt().float(), expected) < TOLERANCE
    with pytest.raises(ValueError, match="empty"):
        noise.generate_noise({"samples": torch.ones_like(inverted)})
