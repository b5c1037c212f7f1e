"""Null-text inversion (tav_core/null_text.py) and sampling with its embeddings.

References: an analytic model whose eps depends on the text only, for which DDIM inversion without
guidance is exact and null-text inversion can make CFG exact too; a naive plain-torch null-text
optimisation (direct UNet calls at integer timesteps, diffusers' alphas, torch Adam) on the tiny
random SD1.5 model.
"""
import contextlib
import math

import pytest
import torch

from tav_core.testing.comfy_inprocess import (clip_images, encode_prompts, inflate_with_active_temporal_layers,
                                              pack_core)

FRAMES = 4
UNET_FRAMES = 2  # the tests that run the real (tiny) UNet backward use fewer frames: they cost per frame
STEPS = 5
CFG = 7.5
SCALE = 0.18215
SOURCE = "a red car on a road"


def relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def nt(pack):
    return pack_core("null_text").null_text


@pytest.fixture(scope="module")
def clip_latents(sd15, synthetic_clip):
    with torch.inference_mode():  # as ComfyUI runs nodes
        return sd15[2].encode(clip_images(synthetic_clip, FRAMES))  # raw VAE latents [F, 4, 8, 8]


@pytest.fixture(scope="module")
def short_clip(clip_latents):
    return clip_latents[:UNET_FRAMES]


@pytest.fixture(scope="module")
def prompts(sd15):
    return encode_prompts(sd15[1], "", SOURCE)


@pytest.fixture(scope="module")
def inflated(sd15, core):
    return inflate_with_active_temporal_layers(core.inflate, sd15[0])


def text_model(model, seed=0):
    """A clone whose eps depends only on the text: eps = 0.3 tanh(M mean_tokens(context)), the same for every
    x and sigma (M: random, 0.3 / sqrt(width) per entry). DDIM inversion without guidance is then exact (every step's eps is the same both ways), and
    CFG from it is exact once the uncond embedding gives the cond's eps."""
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(4 * 8 * 8, 768, generator=g) * (0.3 / math.sqrt(768))

    def eps_of_text(executor, x, timesteps, context, *args, **kwargs):
        eps = 0.3 * torch.tanh(context.float().mean(1) @ matrix.T.to(context.device))
        return eps.view(x.shape).to(x.dtype)

    patched = model.clone()
    patched.add_wrapper_with_key("diffusion_model", "test_text_model", eps_of_text)
    return patched


@pytest.fixture(scope="module")
def analytic(sd15):
    return text_model(sd15[0])


def reconstruct(core, nt, model, raw, prompts, steps, null=None):
    """Video Sample's path: the source prompt at CFG from a plain (null is None) or null-text inversion."""
    positive, negative = prompts[SOURCE], prompts[""]
    with torch.inference_mode():
        if null is None:
            inverted = core.sampling.ddim_invert(model, raw, positive, steps)
            sample_model, cfg = model, CFG
        else:
            inverted, result = nt.null_text_invert(model, raw, positive, negative, steps, CFG, **null)
            sample_model, cfg = nt.for_sampling(model, result, steps, CFG)
        return inverted, core.sampling.ddim_sample(sample_model, positive, negative, inverted, steps, cfg, 0.0, 0,
                                                   from_inversion=True)


def test_analytic_model_null_text_reconstructs_ten_times_better_than_plain_inversion(core, nt, analytic,
                                                                                      clip_latents, prompts):
    latents = clip_latents / (clip_latents.std() * SCALE)
    steps = 50
    with torch.inference_mode():  # the model's premise: without guidance, inversion is exact
        inverted = core.sampling.ddim_invert(analytic, latents, prompts[SOURCE], steps)
        unguided = core.sampling.ddim_sample(analytic, prompts[SOURCE], prompts[""], inverted, steps, 1.0, 0.0, 0, True)
    assert relative_error(unguided, latents) < 1e-4
    _, plain = reconstruct(core, nt, analytic, latents, prompts, steps)
    _, null = reconstruct(core, nt, analytic, latents, prompts, steps, dict(inner_steps=10, epsilon=1e-5))
    errors = relative_error(plain, latents), relative_error(null, latents)
    print(f"analytic model, CFG {CFG}, {steps} steps: relative error plain {errors[0]:.2e}, null-text {errors[1]:.2e}"
          f" ({errors[0] / errors[1]:.0f}x smaller)")
    assert errors[0] > 0.05  # CFG really spoils plain inversion here
    assert errors[1] * 10 < errors[0], errors


def parameters(patcher, core):
    named = dict(patcher.model.diffusion_model.named_parameters())
    named.update({f"temporal.{k}": v for k, v in core.inflate.temporal_layers(patcher).named_parameters()})
    return named


def test_tiny_sd15_null_text_beats_plain_inversion_and_trains_only_the_embedding(core, nt, inflated, short_clip,
                                                                                 prompts):
    own = parameters(inflated, core)
    before = {k: v.detach().clone() for k, v in own.items()}
    inverted_plain, plain = reconstruct(core, nt, inflated, short_clip, prompts, STEPS)
    inverted, null = reconstruct(core, nt, inflated, short_clip, prompts, STEPS, dict(inner_steps=3, epsilon=1e-5))
    errors = relative_error(plain, short_clip), relative_error(null, short_clip)
    rms = [((x - short_clip).pow(2).mean() / short_clip.pow(2).mean()).sqrt().item() for x in (plain, null)]
    print(f"tiny random SD1.5, CFG {CFG}, {STEPS} steps, 3 inner steps: relative error plain {errors[0]:.3e}, "
          f"null-text {errors[1]:.3e} ({100 * (1 - errors[1] / errors[0]):.0f}% lower); relative RMS error "
          f"{rms[0]:.3e} and {rms[1]:.3e} ({100 * (1 - rms[1] / rms[0]):.0f}% lower)")
    assert errors[1] < errors[0], errors
    assert torch.equal(inverted, inverted_plain)  # the inversion is DDIM Invert's under the source prompt
    assert nt.WRAPPER_KEY not in inflated.wrappers.get("apply_model", {})  # the input patcher is untouched
    assert "input_block_patch_after_skip" not in inflated.model_options["transformer_options"].get("patches", {})
    after = parameters(inflated, core)
    assert after.keys() == before.keys()
    for name, value in after.items():
        assert value.grad is None, name
        assert torch.equal(value, before[name]), name
        assert value is own[name], name  # no ordinary stand-in left from the backward pass


@contextlib.contextmanager
def ordinary_copies(patcher, core):
    """Plain copies of the UNet's and temporal layers' inference-tensor weights, which autograd can save."""
    modules = [patcher.model, core.inflate.temporal_layers(patcher)]
    originals = [(m, name, p) for module in modules for m in module.modules()
                 for name, p in m.named_parameters(recurse=False) if p.is_inference()]
    for m, name, p in originals:
        setattr(m, name, torch.nn.Parameter(p.clone(), requires_grad=False))
    try:
        yield
    finally:
        for m, name, p in originals:
            setattr(m, name, p)


class NaiveNullText:
    """Video-P2P's null_optimization in plain torch: the UNet called directly at integer timesteps, the
    reference DDIM formulas (tav_core.schedule, diffusers' float32 alphas), the embedding trained by torch Adam."""

    def __init__(self, core, patcher):
        self.core, self.patcher = core, patcher
        self.alphas = core.schedule.scaled_linear_alphas_cumprod()

    def eps(self, x, t, context):
        unet = self.patcher.model.diffusion_model
        options = self.core.inflate.call_options(self.patcher, x.shape[0])
        return unet(x, torch.full((x.shape[0],), float(t)), context=context.expand(x.shape[0], -1, -1),
                    transformer_options=options).float()

    def run(self, raw, cond, uncond, steps, cfg, inner_steps, epsilon):
        schedule = self.core.schedule
        self.core.inflate.load(self.patcher)
        with torch.inference_mode(False), torch.enable_grad(), ordinary_copies(self.patcher, self.core):
            cond, uncond = cond.clone(), uncond.clone()
            with torch.no_grad():
                trajectory = schedule.ddim_invert(lambda x, t: self.eps(x, t, cond), raw.clone() * SCALE, steps,
                                                  self.alphas, return_all=True)
            latent, embeddings, losses = trajectory[-1], [], []
            for i, t in enumerate(schedule.ddim_timesteps(steps).tolist()):
                uncond = uncond.detach().clone().requires_grad_(True)
                optimizer = torch.optim.Adam([uncond], lr=1e-2 * (1 - i / 100))
                with torch.no_grad():
                    eps_cond = self.eps(latent, t, cond)
                losses.append([])
                for _ in range(inner_steps):
                    eps_uncond = self.eps(latent, t, uncond)
                    guided = eps_uncond + cfg * (eps_cond - eps_uncond)
                    previous = schedule.ddim_step(guided, t, latent, self.alphas, steps)
                    loss = torch.nn.functional.mse_loss(previous, trajectory[len(trajectory) - i - 2])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses[-1].append(loss.item())
                    if loss.item() < epsilon + i * 2e-5:
                        break
                embeddings.append(uncond.detach()[0])
                with torch.no_grad():
                    eps_uncond = self.eps(latent, t, uncond)
                    latent = schedule.ddim_step(eps_uncond + cfg * (eps_cond - eps_uncond), t, latent, self.alphas,
                                                steps)
        return torch.stack(embeddings), losses


def test_optimisation_matches_a_naive_plain_torch_null_text_loop(core, nt, inflated, short_clip, prompts):
    steps, inner = 2, 2
    with torch.inference_mode():
        _, got = nt.null_text_invert(inflated, short_clip, prompts[SOURCE], prompts[""], steps, CFG, inner, 0.0)
    expected, losses = NaiveNullText(core, inflated).run(short_clip, prompts[SOURCE][0][0], prompts[""][0][0],
                                                         steps, CFG, inner, 0.0)
    got_losses = [list(step) for step in got.losses]
    print(f"losses: got {got_losses}, naive {losses}")
    assert [len(s) for s in got_losses] == [len(s) for s in losses] == [inner] * steps
    for got_step, naive_step in zip(got_losses, losses):
        for a, b in zip(got_step, naive_step):
            assert a == pytest.approx(b, rel=1e-4)
    start = prompts[""][0][0][0]
    moved, differ = (expected - start).abs(), (got.uncond - expected).abs()
    print(f"embeddings: moved by {moved.mean():.3e} on average, differ by {differ.mean():.3e} "
          f"(max {differ.max():.3e}); {(differ > 1e-3 * moved.max()).sum().item()} of {differ.numel()} entries differ")
    assert moved.mean() > 1e-3  # the embeddings did train
    assert differ.mean() < 1e-3 * moved.mean()
    assert got.uncond.shape == (steps, 77, 768) and got.uncond.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_embeddings(nt, inflated, short_clip, prompts):
    args = (inflated, short_clip, prompts[SOURCE], prompts[""], 1, CFG, 2, 0.0)
    with torch.inference_mode():
        _, plain = nt.null_text_invert(*args)
        _, checkpointed = nt.null_text_invert(*args, gradient_checkpointing=True)
    assert torch.allclose(checkpointed.uncond, plain.uncond, rtol=0, atol=1e-5)
    assert checkpointed.losses[0] == pytest.approx(plain.losses[0], rel=1e-4)
    assert (checkpointed.uncond - prompts[""][0][0][0]).abs().mean() > 1e-3  # it did train


def recording_model(model):
    """A clone that records each call's (cond_or_uncond, context) and predicts eps = 0."""
    calls = []

    def record(executor, x, timesteps, context, y=None, control=None, transformer_options=None, **kwargs):
        calls.append((list(transformer_options["cond_or_uncond"]), context.detach().clone()))
        return torch.zeros_like(x)

    patched = model.clone()
    patched.add_wrapper_with_key("diffusion_model", "test_recording", record)
    return patched, calls


def test_with_null_text_swaps_only_the_chosen_videos_uncond_rows(core, nt, sd15, prompts):
    steps, tokens = 3, 77
    table = torch.stack([torch.full((tokens, 768), float(k + 1)) for k in range(steps)])
    null = nt.NullText(table, CFG, False, steps)
    model, calls = recording_model(sd15[0])
    positive, negative = prompts[SOURCE], prompts[""]
    with torch.inference_mode():
        swapped = nt.with_null_text(model, null, steps, videos=2, null_videos=[0])
        core.sampling.ddim_sample(swapped, positive, negative, torch.zeros(2 * FRAMES, 4, 8, 8), steps, CFG, 0.0, 0,
                                  from_inversion=True)
    assert len(calls) == steps
    for step, (rows, context) in enumerate(calls):
        chunks = dict(zip(rows, context.chunk(len(rows))))
        assert torch.equal(chunks[0], positive[0][0].expand(2 * FRAMES, -1, -1))  # cond rows untouched
        assert torch.equal(chunks[1][:FRAMES], table[step].expand(FRAMES, -1, -1))  # the source's uncond swapped
        assert torch.equal(chunks[1][FRAMES:], negative[0][0].expand(FRAMES, -1, -1))  # the edit's left alone
    assert nt.WRAPPER_KEY not in model.wrappers.get("apply_model", {})  # the input model is unchanged


def test_two_videos_sample_as_each_alone(core, nt, analytic, clip_latents, prompts):
    # The analytic model's eps ignores the other rows, so [null-text video; plain video] must give each
    # video's single-video result: null videos per the NullText (also in fast mode), others plain CFG.
    positive, negative = prompts[SOURCE], prompts[""]
    latents = clip_latents / (clip_latents.std() * SCALE)
    for fast in (False, True):
        with torch.inference_mode():
            inverted, null = nt.null_text_invert(analytic, latents, positive, negative, STEPS, CFG, 2, 1e-5, fast)
            alone_model, alone_cfg = nt.for_sampling(analytic, null, STEPS, CFG)
            alone = core.sampling.ddim_sample(alone_model, positive, negative, inverted, STEPS, alone_cfg, 0.0, 0, True)
            plain = core.sampling.ddim_sample(analytic, positive, negative, inverted, STEPS, CFG, 0.0, 0, True)
            both = core.sampling.ddim_sample(nt.with_null_text(analytic, null, STEPS, 2, [0]), positive, negative,
                                             torch.cat([inverted, inverted]), STEPS, CFG, 0.0, 0, True)
        assert relative_error(both[:FRAMES], alone) < 1e-5, fast
        assert relative_error(both[FRAMES:], plain) < 1e-5, fast
        assert relative_error(alone, plain) > 1e-3, fast


def test_interrupt_during_the_optimisation_stops_and_the_next_run_works(nt, analytic, clip_latents, prompts):
    import comfy.model_management

    def interrupt_in_the_optimisation(step, x0, x, total_steps):
        if step == STEPS + 1:
            comfy.model_management.interrupt_current_processing(True)

    args = (analytic, clip_latents, prompts[SOURCE], prompts[""], STEPS, CFG, 2, 1e-5)
    with torch.inference_mode():
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            nt.null_text_invert(*args, callback=interrupt_in_the_optimisation)
        calls = []
        _, null = nt.null_text_invert(*args, callback=lambda *a: calls.append((a[0], a[3])))
    assert calls == [(step, 2 * STEPS) for step in range(2 * STEPS)]
    assert torch.isfinite(null.uncond).all()


def test_bad_inputs_and_bad_null_text_entries_are_refused(nt, analytic, clip_latents, prompts):
    positive, negative = prompts[SOURCE], prompts[""]
    with torch.inference_mode():
        with pytest.raises(nt.NullTextError, match="one prompt"):
            nt.null_text_invert(analytic, clip_latents, positive, negative + negative, STEPS, CFG, 2, 1e-5)
        with pytest.raises(nt.NullTextError, match="inner_steps"):
            nt.null_text_invert(analytic, clip_latents, positive, negative, STEPS, CFG, 0, 1e-5)
    good = torch.zeros(STEPS, 77, 768)
    bad = {
        "not a Null-Text": {"uncond": good},
        "6 steps": nt.NullText(torch.zeros(6, 77, 768), CFG, False, 6),
        r"\[5, tokens, 768\]": nt.NullText(torch.zeros(STEPS, 77, 1024), CFG, False, STEPS),
        "float32": nt.NullText(good.half(), CFG, False, STEPS),
        "NaN": nt.NullText(torch.full_like(good, float("nan")), CFG, False, STEPS),
        "cfg": nt.NullText(good, float("inf"), False, STEPS),
        "no embeddings": nt.NullText(good, CFG, True, STEPS),
    }
    for message, entry in bad.items():
        with pytest.raises(nt.NullTextError, match=message):
            nt.check_null_text(entry, STEPS, 768)
    with pytest.raises(nt.NullTextError, match="null_videos"):
        nt.with_null_text(analytic, nt.NullText(good, CFG, False, STEPS), STEPS, videos=2, null_videos=[2])
    with pytest.raises(nt.NullTextError, match="cfg 7.5"):
        nt.for_sampling(analytic, nt.NullText(good, CFG, False, STEPS), STEPS, 12.5)


def test_a_sampler_off_the_ddim_levels_is_refused(core, nt, analytic, prompts):
    null = nt.NullText(torch.zeros(STEPS, 77, 768), CFG, False, STEPS)
    with torch.inference_mode(), pytest.raises(nt.NullTextError, match="none of the 5-step DDIM levels"):
        core.sampling.ddim_sample(nt.with_null_text(analytic, null, STEPS), prompts[SOURCE], prompts[""],
                                  torch.zeros(FRAMES, 4, 8, 8), STEPS + 1, CFG, 0.0, 0, from_inversion=True)


@pytest.fixture(scope="module")
def nodes_(pack):
    return pack.nodes.null_text.NullTextInvert, pack.nodes.sample.VideoSample


def test_node_output_feeds_video_sample_and_bad_entries_get_clear_errors(core, nt, nodes_, analytic, clip_latents,
                                                                         prompts):
    invert, sample = nodes_
    info = invert.GET_NODE_INFO_V1()
    assert info["description"] and info["category"] == "Tune-A-Video" and all(info["output_tooltips"])
    assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())
    positive, negative = prompts[SOURCE], prompts[""]
    with torch.inference_mode():
        (latent,) = invert.execute(analytic, {"samples": clip_latents}, positive, negative, STEPS, CFG, 2, 1e-5,
                                   False).result
        (video,) = sample.execute(analytic, positive, negative, latent, STEPS, CFG, 0, 0.0).result
        _, expected = reconstruct(core, nt, analytic, clip_latents, prompts, STEPS, dict(inner_steps=2, epsilon=1e-5))
        assert torch.equal(video["samples"], expected)
        assert nt.NULL_TEXT_KEY not in video and core.sampling.INVERSION_KEY not in video
        assert latent[nt.NULL_TEXT_KEY].uncond.shape == (STEPS, 77, 768)
        for broken, message in (({**latent, nt.NULL_TEXT_KEY: "junk"}, "not a Null-Text"),
                                ({k: v for k, v in latent.items() if k != core.sampling.INVERSION_KEY},
                                 "no inversion marker")):
            with pytest.raises(ValueError, match=message):
                sample.execute(analytic, positive, negative, broken, STEPS, CFG, 0, 0.0)
        with pytest.raises(ValueError, match="optimised for cfg 7.5"):
            sample.execute(analytic, positive, negative, latent, STEPS, 12.5, 0, 0.0)
        with pytest.raises(ValueError, match=r"^Null-Text Inversion \(Tune-A-Video\): .*16 channels"):
            invert.execute(analytic, {"samples": torch.zeros(FRAMES, 16, 8, 8)}, positive, negative, STEPS, CFG, 2,
                           1e-5, False)
        with pytest.raises(ValueError, match="noise_mask"):
            invert.execute(analytic, {"samples": clip_latents, "noise_mask": torch.ones(1, 8, 8)}, positive,
                           negative, STEPS, CFG, 2, 1e-5, False)
        with pytest.raises(ValueError, match="whole clip"):
            sample.execute(analytic, positive, negative, latent, STEPS, CFG, 0, 0.0, window_frames=2,
                           window_overlap=1)


def test_controlnet_in_the_conditioning_works(nt, inflated, short_clip, prompts, synthetic_clip):
    import comfy.controlnet
    import nodes

    from tav_core.testing.checkpoints import cached_sd15_controlnet

    images = clip_images(synthetic_clip, UNET_FRAMES)
    control = comfy.controlnet.load_controlnet(str(cached_sd15_controlnet()))
    apply = nodes.NODE_CLASS_MAPPINGS["ControlNetApplyAdvanced"]()
    with torch.inference_mode():
        positive, negative = apply.apply_controlnet(prompts[SOURCE], prompts[""], control,
                                                    images, 1.0, 0.0, 1.0)
        # ControlNet adds to the UNet's skip tensors in place, which autograd would refuse (_separate_skip).
        _, controlled = nt.null_text_invert(inflated, short_clip, positive, negative, 1, CFG, 1, 1e-5)
        _, plain = nt.null_text_invert(inflated, short_clip, prompts[SOURCE], prompts[""], 1, CFG, 1, 1e-5)
    assert torch.isfinite(controlled.uncond).all()
    assert controlled.losses != plain.losses  # the control reached the model
