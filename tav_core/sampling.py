"""Tune-A-Video's DDIM inversion and sampling, run by ComfyUI's own sampling machinery.

Both loops are KSAMPLER sampler functions driven by a CFGGuider, so everything core sampling
supports applies: ControlNet/T2I-Adapter and area/masked conds (cond batching), LoRA and other model
patches, the inflated model's wrappers, latent previews, the progress bar and interrupts.

Spaces. The reference works on x_ddim = sqrt(a) x0 + sqrt(1 - a) eps at alphas_cumprod level a;
ComfyUI on x = x_ddim / sqrt(a) at sigma = sqrt((1 - a) / a), calling the model as model(x, sigma)
and reading eps = (x - denoised) / sigma. Deterministic DDIM is Euler in ComfyUI's space. The
levels are the model's own sigma table at the reference timesteps (981, 961, ..., 1 for 50 steps),
so ComfyUI's sigma -> timestep lookup hits the same integer timesteps.

Ends of the schedule. The reference treats the clip's latent as x_ddim at level a[0] (where
inversion starts and sampling ends, set_alpha_to_one=False) rather than as a clean x0; at that level
ComfyUI's x differs from x_ddim by 1/sqrt(a[0]), which `_rescale` applies on the way in and out.

Inverted LATENTs hold ComfyUI's noisy-latent convention (x at the last inversion level, in raw VAE
units), like KSamplerAdvanced's "return_with_leftover_noise" output.
"""
from __future__ import annotations

import hashlib
import math

import torch
from tqdm.auto import trange

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview
from comfy.k_diffusion.sampling import default_noise_sampler

from . import checks, schedule

INVERSION_KEY = "tav_inversion"
SCHEDULE = "ddim-leading-offset1"


class SamplingError(ValueError):
    pass


def ddim_levels(model, steps: int) -> torch.Tensor:
    """The reference DDIM schedule as ComfyUI sigmas, sampling order, length steps + 1.

    sigma of timesteps 981, 961, ..., 1 (for 50 steps), then sigma of the final level a[0].
    """
    table = getattr(model.get_model_object("model_sampling"), "sigmas", None)
    if table is None:
        raise SamplingError("DDIM needs a discrete-time model (SD1.x, SD2.x, SDXL).")
    if not 1 <= steps < len(table):
        raise SamplingError(f"steps must be between 1 and {len(table) - 1}, not {steps}.")
    table = table.detach().cpu().float()
    return torch.cat([table[schedule.ddim_timesteps(steps, len(table))], table[:1]])


def _predict_eps(model, x, sigma, extra_args):
    """(eps, denoised) of the guided model at noise level `sigma` for ComfyUI-space `x`."""
    denoised = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
    return (x - denoised) / sigma, denoised


def _ddim_step(x, eps, sigma: float, sigma_next: float, eta: float, noise_sampler):
    """diffusers' DDIMScheduler.step on x_ddim = sqrt(a) x, written in ComfyUI's space (divided by sqrt(a_next))."""
    a, a_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    std = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
    x_next = (x - sigma * eps) + math.sqrt((1 - a_next - std**2) / a_next) * eps
    if std > 0:
        x_next = x_next + std / math.sqrt(a_next) * noise_sampler(sigma, sigma_next).to(x)
    return x_next


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0, noise_sampler=None,
                after_step=None):
    """DDIM sampler function for KSAMPLER (decreasing sigmas); eta 0 is deterministic DDIM.

    `after_step(i, x)`, when given, returns the latent that step i hands on (attention control's local blend).
    """
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps, denoised = _predict_eps(model, x, sigma, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = _ddim_step(x, eps, float(sigma), float(sigma_next), eta, noise_sampler)
        if after_step is not None:
            x = after_step(i, x)
    return x


@torch.no_grad()
def sample_ddim_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Tune-A-Video's DDIM inversion as a KSAMPLER sampler function (increasing sigmas).

    As the official `next_step`, each step queries the model at the level it moves to, with the
    current latent, and moves along that eps: x0 = x - sigma eps, x_next = x0 + sigma_next eps.
    """
    extra_args = {} if extra_args is None else extra_args
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # The current x_ddim expressed in ComfyUI's scaling at sigma_next, so the UNet's input is
        # exactly the reference's (ComfyUI feeds x / sqrt(1 + sigma^2) to the UNet).
        query = x * ((1 + sigma_next**2) / (1 + sigma**2)).sqrt()
        eps, _ = _predict_eps(model, query, sigma_next, extra_args)
        x0 = x - sigma * eps
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
        x = x0 + sigma_next * eps
    return x


def _rescale(model, raw: torch.Tensor, factor: float) -> torch.Tensor:
    """The raw LATENT whose model-space latent is `factor` times `raw`'s (latent formats are affine)."""
    inner = model.model
    return inner.process_latent_out(inner.process_latent_in(raw) * factor)


def _run(model, guider, sampler, sigmas, start_raw, callback, seed):
    if callback is None:
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    # Zero noise: the run starts at the given latent, as core KSamplerAdvanced with add_noise off.
    noise = torch.zeros_like(start_raw)
    samples = guider.sample(noise, start_raw, sampler, sigmas, callback=callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())


def ddim_invert(model, latent_raw: torch.Tensor, conditioning, steps: int, callback=None) -> torch.Tensor:
    """DDIM-invert the clip's raw latents [F, C, h, w]; returns ComfyUI's x at the last level, raw.

    The model is guided with cfg 1 on `conditioning` (the paper inverts with the empty prompt).
    `callback(step, x0, x, total_steps)` defaults to ComfyUI's preview + progress bar callback.
    """
    unet = model.model.diffusion_model
    checks.check_latents(unet, latent_raw, SamplingError)
    checks.check_conditioning(unet, conditioning, SamplingError)
    sigmas = ddim_levels(model, steps).flip(0)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    start = _rescale(model, latent_raw, math.sqrt(1 + float(sigmas[0]) ** 2))
    sampler = comfy.samplers.KSAMPLER(sample_ddim_inversion)
    return _run(model, guider, sampler, sigmas, start, callback, seed=0)


def ddim_sample(model, positive, negative, latent_raw: torch.Tensor, steps: int, cfg: float, eta: float,
                seed: int, from_inversion: bool, callback=None) -> torch.Tensor:
    """DDIM-sample with classifier-free guidance; returns the raw latent at the final level a[0].

    `from_inversion`: `latent_raw` is a `ddim_invert` result and is sampled as is. Otherwise only its
    shape counts and the run starts from seeded Gaussian noise x_T ~ N(0, I) in the reference's
    space (text-to-video, the paper's ablation). eta > 0 draws its noise from the same seeded
    stream after x_T, as the official pipeline's generator does.
    """
    unet = model.model.diffusion_model
    checks.check_latents(unet, latent_raw, SamplingError)
    checks.check_conditioning(unet, positive, SamplingError, "positive conditioning")
    checks.check_conditioning(unet, negative, SamplingError, "negative conditioning")
    checks.check_finite("cfg", cfg, SamplingError, 0.0, 100.0)
    checks.check_finite("eta", eta, SamplingError, 0.0, 1.0)
    sigmas = ddim_levels(model, steps)
    generator = torch.Generator().manual_seed(seed)
    if from_inversion:
        start = latent_raw
    else:
        x_t = torch.randn(latent_raw.shape, generator=generator)
        start = model.model.process_latent_out(x_t * math.sqrt(1 + float(sigmas[0]) ** 2))

    def noise_sampler(sigma, sigma_next):
        return torch.randn(start.shape, generator=generator)

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sampler = comfy.samplers.KSAMPLER(sample_ddim, extra_options={"eta": eta, "noise_sampler": noise_sampler})
    samples = _run(model, guider, sampler, sigmas, start, callback, seed)
    return _rescale(model, samples, 1 / math.sqrt(1 + float(sigmas[-1]) ** 2))


def latent_fingerprint(samples: torch.Tensor) -> str:
    """A cheap hash of a latent's values, to tell the inversion from an edited copy of it."""
    tensor = samples.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{tensor.dtype}{tuple(tensor.shape)}".encode(), digest_size=16)
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def inversion_marker(model, steps: int, inverted: torch.Tensor) -> dict:
    """What an inverted LATENT carries under INVERSION_KEY, for `check_inversion`."""
    return {"steps": steps, "schedule": SCHEDULE, "frames": int(inverted.shape[0]),
            "sigma": float(ddim_levels(model, steps)[0]), "fingerprint": latent_fingerprint(inverted)}


def check_inversion(latent: dict, steps: int) -> bool:
    """True if `latent` is a DDIM Invert result that sampling with `steps` can start from.

    Raises SamplingError for a mismatch: a latent at another noise level than the sampler's first
    cannot be sampled correctly, so a silent fallback would only produce a worse video.
    """
    marker = latent.get(INVERSION_KEY)
    if marker is None:
        return False
    if marker.get("schedule") != SCHEDULE:
        raise SamplingError(f"the latent was inverted with schedule {marker.get('schedule')!r}, not {SCHEDULE!r}.")
    if marker["steps"] != steps:
        raise SamplingError(f"the latent was inverted with {marker['steps']} steps; sample it with the same "
                            f"number of steps (got {steps}), or invert again with {steps} steps.")
    frames = latent["samples"].shape[0]
    if marker["frames"] != frames:
        raise SamplingError(f"the latent was inverted as {marker['frames']} frames but now holds {frames}; "
                            "sample the inversion's latent unchanged.")
    if marker.get("fingerprint") != latent_fingerprint(latent["samples"]):
        raise SamplingError("the latent was changed after DDIM Invert (by LatentUpscale, LatentMultiply or another "
                            "latent node), so it is no longer the inversion and sampling it as one would give a "
                            "wrong video. Connect DDIM Invert's LATENT to Video Sample directly; to edit the size, "
                            "change Load Video's and invert again.")
    return True


def _first_sigma_scale(sigma: float, sigma_max: float) -> float:
    # KSAMPLER's noise_scaling at the first sigma: noise * sigma, or noise * sqrt(1 + sigma^2) when
    # it counts as a full denoise (its Sampler.max_denoise test).
    if math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max:
        return math.sqrt(1 + sigma**2)
    return sigma


class InversionNoise:
    """A NOISE that makes core SamplerCustomAdvanced start from a DDIM inversion.

    KSAMPLER starts at x = noise_scaling(sigma_0, noise, latent) = noise * sigma_0 + latent. With an
    empty latent and noise = x_T / sigma_0 (x_T: ComfyUI's x of the inversion), it starts at x_T.
    Wire it with an empty latent of the clip's size (batch = frames) and sigmas whose first entry
    is the inversion's last level: BasicScheduler "ddim_uniform" with the same steps does that
    when steps divides 1000 (e.g. 50); it then ends at sigma 0, not at the reference's level a[0].
    """

    def __init__(self, model, inverted_raw: torch.Tensor, steps: int):
        self.seed = 0  # seeds only the sampler's own noise (eta, ancestral samplers)
        sigma = float(ddim_levels(model, steps)[0])
        sigma_max = float(model.get_model_object("model_sampling").sigma_max)
        self.noise = model.model.process_latent_in(inverted_raw).cpu() / _first_sigma_scale(sigma, sigma_max)

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        latent = input_latent["samples"]
        if latent.shape != self.noise.shape:
            raise SamplingError(f"the latent is {list(latent.shape)} but the inversion is {list(self.noise.shape)}; "
                                "connect an empty latent of the clip's size (batch = frames).")
        if torch.count_nonzero(latent):
            raise SamplingError("the inversion noise must be sampled from an empty (all-zero) latent.")
        return self.noise.to(latent.dtype)
