"""The SD2.x and SDXL test checkpoints load in real ComfyUI as those models, and DDIM inversion,
sampling and the tuning loss on them agree with an independent reference (v-prediction on SD2,
pooled and size conditioning on SDXL).

The reference below is written from the DDIM formulas alone (its own float64 alpha table, the UNet
called directly at integer timesteps, CFG by hand): it shares no code with tav_core.schedule or
tav_core.sampling. For v-prediction it converts the UNet's v to eps at the level the UNet was told,
eps = sqrt(a_t) v + sqrt(1 - a_t) x: then a v-model and an eps-model of the same denoiser invert
identically. The official code's inversion (its issue #85) uses v as if it were eps; the test shows
that this gives a different inversion, so the comparison can tell the two apart.
"""
import pytest
import torch
from safetensors import safe_open

from tav_core.testing import sd2_sdxl
from tav_core.testing.comfy_inprocess import clip_images, encode_prompts, inflate_with_active_temporal_layers

FRAMES = 4
STEPS = 3
CFG = 7.5
TOLERANCE = 1e-4
EXPECTED = {  # model config class, prediction, context width, pooled width
    "sd2": ("SD20", "V_PREDICTION", 1024, 1024),
    "sdxl": ("SDXL", "EPS", 2048, 1280),
}


@pytest.fixture(scope="module", params=sd2_sdxl.ARCHITECTURES)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(arch):
    return sd2_sdxl.cached_checkpoint(arch)


@pytest.fixture(scope="module")
def loaded(comfy_nodes, checkpoint):
    """(model patcher, CLIP, VAE) as ComfyUI's CheckpointLoaderSimple returns them."""
    import comfy.sd

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True,
                                                                     output_clip=True)
    yield model, clip, vae
    # Free the 2-5 GB of each model before the next architecture (and the rest of the session) runs:
    # ComfyUI's list of loaded models would keep it alive.
    import gc

    import comfy.model_management

    del model, clip, vae
    comfy.model_management.unload_all_models()
    gc.collect()


@pytest.fixture(scope="module")
def prompts(loaded):
    return encode_prompts(loaded[1], "", "a red car on a road")


def test_detected_with_its_prediction_and_unet(arch, loaded, checkpoint):
    import comfy.model_base

    base_model = loaded[0].model
    config_name, prediction, _, _ = EXPECTED[arch]
    assert type(base_model.model_config).__name__ == config_name
    assert base_model.model_type == getattr(comfy.model_base.ModelType, prediction)
    detected = base_model.model_config.unet_config
    expected = sd2_sdxl.unet_config(arch)
    assert {k: detected[k] for k in expected} == expected
    if arch == "sd2":
        with safe_open(str(checkpoint), "pt") as f:
            marker = f.get_tensor("model.diffusion_model." + sd2_sdxl.V_MARKER_KEY).float()
        assert marker.std(unbiased=False) > 0.09  # ComfyUI's v-prediction test


def test_file_holds_every_weight_of_unet_clip_and_vae(arch, loaded, checkpoint):
    model, clip, vae = loaded
    model_config = model.model.model_config
    with safe_open(str(checkpoint), "pt") as f:
        file_keys = set(f.keys())
    unet = {"model.diffusion_model." + k for k in model.model.diffusion_model.state_dict()}
    clip_saved = set(model_config.process_clip_state_dict_for_saving(clip.cond_stage_model.state_dict()))
    vae_saved = {"first_stage_model." + k for k in vae.first_stage_model.state_dict()}
    assert file_keys == unet | clip_saved | vae_saved
    # Loading the file's text-encoder part leaves no tensor that ComfyUI built unset but CLIP-L's
    # logit scale and text projection: the SDXL layout (like SD1's) has no slot for them, and SDXL
    # reads only bigG's pooled output. CLIP-L's position ids are in the file, as in real SDXL files.
    with safe_open(str(checkpoint), "pt") as f:
        text = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("cond_stage_model.", "conditioner."))}
    with torch.inference_mode():
        missing, unexpected = clip.load_sd(model_config.process_clip_state_dict(text), full_model=True)
    del text
    sdxl = arch == "sdxl"
    assert set(missing) == ({"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"} if sdxl else set())
    assert set(unexpected) == ({"clip_l.transformer.text_model.embeddings.position_ids"} if sdxl else set())
    # What the file does not set, ComfyUI may leave uninitialised (0.33 does): check only what it set.
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if name not in missing:
                assert torch.isfinite(p).all(), name


def test_text_encoders_give_context_and_pooled_output(arch, loaded):
    _, _, context_width, pooled_width = EXPECTED[arch]
    clip = loaded[1]
    with torch.inference_mode():
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a man is skiing"), return_pooled=True)
    assert cond.shape == (1, 77, context_width) and pooled.shape == (1, pooled_width)
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all()


@pytest.fixture(scope="module")
def clip_latents(loaded, synthetic_clip):
    with torch.inference_mode():
        return loaded[2].encode(clip_images(synthetic_clip, FRAMES))


@pytest.fixture(scope="module")
def inflated(core, loaded):
    return inflate_with_active_temporal_layers(core.inflate, loaded[0])


class Reference:
    """DDIM inversion (Tune-A-Video's next_step) and CFG sampling, from the formulas."""

    def __init__(self, core, patcher, treat_v_as_eps=False):
        self.core, self.patcher = core, patcher
        base = patcher.model
        self.v_prediction = base.model_type.name == "V_PREDICTION" and not treat_v_as_eps
        self.scale = base.latent_format.scale_factor
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas = torch.cumprod(1 - betas, 0)
        self.stride = 1000 // STEPS
        self.timesteps = [i * self.stride + 1 for i in range(STEPS)]  # "leading" spacing, offset 1

    def level(self, t):
        return self.alphas[t] if t >= 0 else self.alphas[0]  # set_alpha_to_one=False

    def _inputs(self, conditioning, frames):
        cond, options = conditioning[0]
        y = None
        if self.patcher.model.adm_channels:  # SDXL: pooled text + size embedding, as ComfyUI builds it
            # A cond without sizes (plain CLIP Text Encode) gets the latent's size in pixels, as in ComfyUI.
            sizes = {"width": self.latent_size[1] * 8, "height": self.latent_size[0] * 8}
            y = self.patcher.model.encode_adm(**{**sizes, **options}).expand(frames, -1)
        return cond.expand(frames, -1, -1), y

    def eps(self, x, t, conditionings, cfg=1.0):
        unet = self.patcher.model.diffusion_model
        outputs = []
        for conditioning in conditionings:
            context, y = self._inputs(conditioning, x.shape[0])
            out = unet(x.float(), torch.full((x.shape[0],), float(t)), context=context, y=y,
                       transformer_options=self.core.inflate.call_options(self.patcher, FRAMES)).double()
            a = self.alphas[t]
            outputs.append(a.sqrt() * out + (1 - a).sqrt() * x if self.v_prediction else out)
        if len(outputs) == 1:
            return outputs[0]
        cond, uncond = outputs
        return uncond + cfg * (cond - uncond)

    def invert(self, raw, conditioning):
        self.latent_size = raw.shape[-2:]
        self.core.inflate.load(self.patcher)
        x = raw.double() * self.scale
        for t in self.timesteps:
            a_cur, a_next = self.level(t - self.stride), self.alphas[t]
            eps = self.eps(x, t, [conditioning])
            x0 = (x - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x

    def sample(self, x, positive, negative):
        self.latent_size = x.shape[-2:]
        self.core.inflate.load(self.patcher)
        for t in reversed(self.timesteps):
            a, a_prev = self.alphas[t], self.level(t - self.stride)
            eps = self.eps(x, t, [positive, negative], CFG)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x / self.scale


def relative_error(got, expected):
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


def test_invert_and_sample_match_the_independent_reference(arch, core, inflated, clip_latents, prompts):
    empty, edit = prompts[""], prompts["a red car on a road"]
    reference = Reference(core, inflated)
    with torch.inference_mode():
        inverted = core.sampling.ddim_invert(inflated, clip_latents, empty, STEPS)
        sampled = core.sampling.ddim_sample(inflated, edit, empty, inverted, STEPS, CFG, 0.0, 0,
                                            from_inversion=True)
        expected_inverted = reference.invert(clip_latents, empty)
        expected = reference.sample(expected_inverted, edit, empty)
    # The inverted LATENT is ComfyUI's x = x_ddim / sqrt(a_T), in raw VAE units.
    got_inverted = inverted.double() * reference.scale * reference.alphas[reference.timesteps[-1]].sqrt()
    errors = relative_error(got_inverted, expected_inverted), relative_error(sampled, expected)
    print(f"{arch}: max relative error vs the reference: invert {errors[0]:.2e}, sample {errors[1]:.2e}")
    assert max(errors) < TOLERANCE, errors
    assert (sampled - clip_latents).abs().max() > 1e-2  # the prompt changed the video
    if reference.v_prediction:
        with torch.inference_mode():
            official = Reference(core, inflated, treat_v_as_eps=True).invert(clip_latents, empty)
        wrong = relative_error(got_inverted, official)
        print(f"{arch}: the official code's v-as-eps inversion differs by {wrong:.2e}")
        assert wrong > 100 * TOLERANCE


def test_the_tuning_loss_is_the_papers_objective_in_the_models_parameterisation(arch, core, loaded, clip_latents,
                                                                              prompts):
    """Step 1's loss equals the reference's: v-target MSE on SD2 v, noise MSE on SDXL (with its adm)."""
    model = core.inflate.inflate(loaded[0], seed=0)
    positive = prompts["a red car on a road"]
    settings = core.tuning.TuneSettings(steps=1, learning_rate=1e-3, seed=5, precision="fp32")
    with torch.inference_mode():
        losses = core.tuning.tune(model, positive, {"samples": clip_latents}, settings).losses
    reference = Reference(core, model)
    reference.latent_size = clip_latents.shape[-2:]
    # The tuning loop's draws: timestep, then noise, from a CPU generator seeded with `seed`.
    g = torch.Generator().manual_seed(5)
    t = int(torch.randint(0, 1000, (1,), generator=g))
    noise = torch.randn(clip_latents.shape, generator=g).double()
    a = reference.alphas[t]
    x0 = clip_latents.double() * reference.scale
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.inference_mode():
        core.inflate.load(model)
        context, y = reference._inputs(positive, FRAMES)
        out = model.model.diffusion_model(x_t.float(), torch.full((FRAMES,), float(t)), context=context, y=y,
                                          transformer_options=core.inflate.call_options(model, FRAMES)).double()
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if reference.v_prediction else noise
    assert losses[0] == pytest.approx(torch.nn.functional.mse_loss(out, target).item(), rel=1e-4)
