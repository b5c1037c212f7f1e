"""DDIM sampling and inversion, reference-exact to the official Tune-A-Video code.

Tune-A-Video samples with diffusers 0.11 ``DDIMScheduler`` configured as Stable
Diffusion ships it (``beta_schedule="scaled_linear"``, ``beta_start=0.00085``,
``beta_end=0.012``, ``num_train_timesteps=1000``, ``steps_offset=1``,
``set_alpha_to_one=False``, ``clip_sample=False``, epsilon prediction) and inverts
with its own ``next_step`` (``tuneavideo/util.py``). This module reproduces both
in pure torch so the ComfyUI nodes do not depend on diffusers.

Notation: ``a_t = alphas_cumprod[t]`` (cumulative product of ``1 - beta``), a noisy
sample is ``x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps``.

Precision: the alpha table is float32, as the diffusers scheduler buffers are.
Every step coefficient (``sqrt(a_t)``, ``sqrt(1 - a_t)``, ...) is computed in the
table's dtype and only then cast to the sample's dtype/device, which makes the
steps bit-identical to diffusers for float32 samples. Pass a float64 table and
float64 samples for high-precision numerics.
"""

from __future__ import annotations

from typing import Callable

import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def scaled_linear_alphas_cumprod(
    num_train_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Stable Diffusion's ``alphas_cumprod`` table, float32, shape ``[num_train_steps]``.

    ``betas = linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2`` ("scaled_linear"),
    ``alphas_cumprod = cumprod(1 - betas)``. Built in float32 with the same torch
    ops as diffusers so the table holds exactly the values the official code used
    (ComfyUI builds its table in float64; the two differ by up to ~1e-6 relative).
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def final_alpha_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Level DDIM sampling ends at: ``alphas_cumprod[0]`` (diffusers ``set_alpha_to_one=False``)."""
    return alphas_cumprod[0]


def ddim_timesteps(steps: int, num_train_steps: int = 1000, steps_offset: int = 1) -> torch.Tensor:
    """Descending int64 DDIM timesteps with "leading" spacing plus ``steps_offset``.

    ``timesteps = arange(steps) * (num_train_steps // steps)``, reversed, ``+ steps_offset``;
    e.g. 50 steps -> 981, 961, ..., 1. As in diffusers, ``steps == num_train_steps``
    would yield the out-of-range timestep ``num_train_steps``.
    """
    step_ratio = num_train_steps // steps
    return torch.arange(steps, dtype=torch.int64).mul(step_ratio).flip(0) + steps_offset


def _alpha_at(alphas_cumprod: torch.Tensor, timestep: int) -> torch.Tensor:
    """``a_t``, or the final level for a negative timestep (one step past t=0)."""
    return alphas_cumprod[timestep] if timestep >= 0 else final_alpha_cumprod(alphas_cumprod)


def _as_alpha(alpha_cumprod_t: torch.Tensor | float) -> torch.Tensor:
    # Python floats stay double so caller-given scalars lose no precision.
    if isinstance(alpha_cumprod_t, torch.Tensor):
        return alpha_cumprod_t
    return torch.tensor(alpha_cumprod_t, dtype=torch.float64)


def _coef(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Coefficients are formed in the table's dtype (as diffusers does) and cast last, so a
    # float32 sample sees exactly diffusers' values and no step ever changes the sample dtype.
    return value.to(device=like.device, dtype=like.dtype)


def eps_to_x0(eps: torch.Tensor, sample: torch.Tensor, alpha_cumprod_t: torch.Tensor | float) -> torch.Tensor:
    """Predicted clean sample: ``x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)``."""
    a = _as_alpha(alpha_cumprod_t)
    return (sample - _coef((1 - a) ** 0.5, sample) * eps) / _coef(a**0.5, sample)


def v_to_eps(v: torch.Tensor, sample: torch.Tensor, alpha_cumprod_t: torch.Tensor | float) -> torch.Tensor:
    """Epsilon from a v-prediction: ``eps = sqrt(a_t) * v + sqrt(1 - a_t) * x_t``.

    Follows from ``v = sqrt(a_t) * eps - sqrt(1 - a_t) * x0`` and
    ``x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps``.
    """
    a = _as_alpha(alpha_cumprod_t)
    return _coef(a**0.5, sample) * v + _coef((1 - a) ** 0.5, sample) * sample


def ddim_step(
    model_output_eps: torch.Tensor,
    timestep: int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    variance_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM denoising step ``x_t -> x_prev`` (diffusers 0.11 ``DDIMScheduler.step``).

    ``prev_t = t - N // steps`` (``N = len(alphas_cumprod)``), ``a_prev = a[prev_t]`` or
    ``final_alpha_cumprod`` if ``prev_t < 0``;
    ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``;
    ``var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)``, ``std = eta * sqrt(var)``;
    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps (+ std * noise if eta > 0)``,
    noise being ``variance_noise`` or ``randn`` drawn from ``generator``.
    """
    timestep = int(timestep)
    prev_timestep = timestep - alphas_cumprod.shape[0] // steps
    alpha_prod_t = alphas_cumprod[timestep]
    alpha_prod_t_prev = _alpha_at(alphas_cumprod, prev_timestep)

    pred_original_sample = eps_to_x0(model_output_eps, sample, alpha_prod_t)
    variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance**0.5
    pred_sample_direction = _coef((1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5, sample) * model_output_eps
    prev_sample = _coef(alpha_prod_t_prev**0.5, sample) * pred_original_sample + pred_sample_direction

    if eta > 0:
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if variance_noise is None:
            variance_noise = torch.randn(
                model_output_eps.shape,
                generator=generator,
                device=model_output_eps.device,
                dtype=model_output_eps.dtype,
            )
        prev_sample = prev_sample + _coef(std_dev_t, sample) * variance_noise
    return prev_sample


def ddim_inversion_step(
    model_output_eps: torch.Tensor,
    timestep: int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """One DDIM inversion step towards noise (Tune-A-Video ``next_step``).

    ``timestep`` is the level being moved *to* (the model was queried there):
    ``cur = min(t - N // steps, N - 1)``, ``a_cur = a[cur]`` or ``final_alpha_cumprod``
    if ``cur < 0``; ``a_next = a[t]``;
    ``x0 = (x - sqrt(1 - a_cur) eps) / sqrt(a_cur)``;
    ``x_next = sqrt(a_next) x0 + sqrt(1 - a_next) eps``.
    (The official code clamps with the literal 999, i.e. ``N - 1`` for SD.)
    """
    next_timestep = int(timestep)
    current_timestep = min(next_timestep - alphas_cumprod.shape[0] // steps, alphas_cumprod.shape[0] - 1)
    alpha_prod_t = _alpha_at(alphas_cumprod, current_timestep)
    alpha_prod_t_next = alphas_cumprod[next_timestep]

    next_original_sample = eps_to_x0(model_output_eps, sample, alpha_prod_t)
    next_sample_direction = _coef((1 - alpha_prod_t_next) ** 0.5, sample) * model_output_eps
    return _coef(alpha_prod_t_next**0.5, sample) * next_original_sample + next_sample_direction


def ddim_sample(
    eps_fn: EpsFn,
    latents: torch.Tensor,
    steps: int,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the full DDIM sampling loop over ``ddim_timesteps(steps)`` (981 -> 1 for 50 steps).

    ``eps_fn(latent, t)`` returns the (already classifier-free-guided) epsilon at integer ``t``.
    The result sits at level ``final_alpha_cumprod`` (= ``a[0]``), exactly as in diffusers.
    """
    latent = latents
    for t in ddim_timesteps(steps, alphas_cumprod.shape[0]).tolist():
        eps = eps_fn(latent, t)
        latent = ddim_step(eps, t, latent, alphas_cumprod, steps, eta=eta, generator=generator)
    return latent


def ddim_invert(
    eps_fn: EpsFn,
    latents: torch.Tensor,
    steps: int,
    alphas_cumprod: torch.Tensor,
    return_all: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """DDIM inversion (Tune-A-Video ``ddim_loop``): clean latents -> noise.

    Walks the sampling timesteps in increasing order (1 -> 981 for 50 steps), querying
    ``eps_fn(latent, t)`` at the level being moved to. Returns the final latent, or with
    ``return_all`` the official ``all_latent`` list ``[latents, x_1, ..., x_final]``.
    """
    latent = latents
    all_latents = [latent]
    for t in ddim_timesteps(steps, alphas_cumprod.shape[0]).flip(0).tolist():
        eps = eps_fn(latent, t)
        latent = ddim_inversion_step(eps, t, latent, alphas_cumprod, steps)
        all_latents.append(latent)
    return all_latents if return_all else latent


def sigma_from_alpha_cumprod(alpha_cumprod: torch.Tensor | float) -> torch.Tensor | float:
    """ComfyUI/k-diffusion noise level of a VP level: ``sigma = sqrt((1 - a) / a)``."""
    return ((1 - alpha_cumprod) / alpha_cumprod) ** 0.5


def alpha_cumprod_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """Inverse of ``sigma_from_alpha_cumprod``: ``a = 1 / (1 + sigma^2)``."""
    return 1 / (1 + sigma**2)


def ddim_sigmas(steps: int, alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """ComfyUI-style sigma schedule (float32, length ``steps + 1``) of the reference DDIM.

    Entries ``0..steps-1`` are ``sigma(a[t])`` for ``t`` in ``ddim_timesteps(steps)``
    (sampling order, descending). The last entry is ``sigma(final_alpha_cumprod)``
    (~0.0292 for SD), *not* 0: the reference sampler stops at level ``a[0]`` rather
    than at the clean sample. Computed in float64 from the (default float32) table.
    """
    if alphas_cumprod is None:
        alphas_cumprod = scaled_linear_alphas_cumprod()
    timesteps = ddim_timesteps(steps, alphas_cumprod.shape[0])
    levels = torch.cat([alphas_cumprod[timesteps], final_alpha_cumprod(alphas_cumprod).reshape(1)])
    return sigma_from_alpha_cumprod(levels.double()).float()


__all__ = [
    "alpha_cumprod_from_sigma",
    "ddim_invert",
    "ddim_inversion_step",
    "ddim_sample",
    "ddim_sigmas",
    "ddim_step",
    "ddim_timesteps",
    "eps_to_x0",
    "final_alpha_cumprod",
    "scaled_linear_alphas_cumprod",
    "sigma_from_alpha_cumprod",
    "v_to_eps",
]
