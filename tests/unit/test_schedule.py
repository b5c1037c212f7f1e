"""Tests for tav_core.schedule against independent references.

References used (never the module's own output):
- closed-form float64 alpha table built with Python floats,
- naive per-element Python-float transcriptions of the DDIM / inversion formulas,
- verbatim transcriptions of the diffusers 0.11 / Tune-A-Video tensor code (bit-exactness),
- analytic models whose DDIM trajectories / ODE flows are known in closed form.
"""

import math

import pytest
import torch

from tav_core import schedule as S

SHAPE = (1, 4, 3, 4, 5)  # [batch, channels, frames, height, width] video latents


def ref_alphas_cumprod(n=1000, beta_start=0.00085, beta_end=0.012):
    """Closed-form scaled-linear alphas_cumprod in float64 Python floats."""
    lo, hi = math.sqrt(beta_start), math.sqrt(beta_end)
    prod, out = 1.0, []
    for i in range(n):
        beta = (lo + (hi - lo) * i / (n - 1)) ** 2
        prod *= 1.0 - beta
        out.append(prod)
    return out


REF_AC = ref_alphas_cumprod()
REF_AC_T = torch.tensor(REF_AC, dtype=torch.float64)


def randn(seed, dtype=torch.float64):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- naive scalar references, transcribed from the formulas -------------------------------


def naive_ddim_step(eps, t, x, ac, steps, eta=0.0, noise=None):
    prev_t = t - len(ac) // steps
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else ac[0]
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * math.sqrt(variance)
    noise_flat = noise.flatten().tolist() if noise is not None else None
    out = []
    for i, (e, xi) in enumerate(zip(eps.flatten().tolist(), x.flatten().tolist())):
        x0 = (xi - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        value = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - std**2) * e
        if eta > 0:
            value += std * noise_flat[i]
        out.append(value)
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


def naive_inversion_step(eps, t, x, ac, steps):
    cur_t = min(t - len(ac) // steps, 999)
    a_cur = ac[cur_t] if cur_t >= 0 else ac[0]
    a_next = ac[t]
    out = []
    for e, xi in zip(eps.flatten().tolist(), x.flatten().tolist()):
        x0 = (xi - math.sqrt(1 - a_cur) * e) / math.sqrt(a_cur)
        out.append(math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * e)
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


# --- verbatim transcriptions of the reference tensor code (for bit-exactness) ---------------


def diffusers_step(model_output, timestep, sample, alphas_cumprod, num_inference_steps, eta, variance_noise):
    """diffusers 0.11 DDIMScheduler.step body (epsilon, clip_sample=False, set_alpha_to_one=False)."""
    final_alpha_cumprod = alphas_cumprod[0]
    prev_timestep = timestep - 1000 // num_inference_steps
    alpha_prod_t = alphas_cumprod[timestep]
    alpha_prod_t_prev = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else final_alpha_cumprod
    beta_prod_t = 1 - alpha_prod_t
    pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance ** (0.5)
    pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * model_output
    prev_sample = alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction
    if eta > 0:
        prev_sample = prev_sample + variance ** (0.5) * eta * variance_noise
    return prev_sample


def tav_next_step(model_output, timestep, sample, alphas_cumprod, num_inference_steps):
    """Tune-A-Video tuneavideo/util.py next_step body."""
    timestep, next_timestep = min(timestep - 1000 // num_inference_steps, 999), timestep
    alpha_prod_t = alphas_cumprod[timestep] if timestep >= 0 else alphas_cumprod[0]
    alpha_prod_t_next = alphas_cumprod[next_timestep]
    beta_prod_t = 1 - alpha_prod_t
    next_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
    next_sample_direction = (1 - alpha_prod_t_next) ** 0.5 * model_output
    return alpha_prod_t_next**0.5 * next_original_sample + next_sample_direction


# --- schedule tables ------------------------------------------------------------------------


def test_timesteps_leading_spacing_with_offset():
    assert S.ddim_timesteps(50).tolist() == list(range(981, 0, -20))
    assert S.ddim_timesteps(10).tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    # 1000 // 7 = 142: spacing truncates, so the top timestep is well below 999.
    assert S.ddim_timesteps(7).tolist() == [853, 711, 569, 427, 285, 143, 1]
    assert S.ddim_timesteps(50).dtype == torch.int64


def test_alphas_cumprod_matches_closed_form():
    ac = S.scaled_linear_alphas_cumprod()
    assert ac.shape == (1000,) and ac.dtype == torch.float32
    assert ac[0].item() == pytest.approx(1 - 0.00085, rel=1e-7)
    beta1 = (math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
    assert ac[1].item() == pytest.approx((1 - 0.00085) * (1 - beta1), rel=1e-6)
    for t in (0, 1, 20, 500, 981, 999):
        # float32 cumprod over up to 1000 factors stays within ~1e-6 relative of float64.
        assert ac[t].item() == pytest.approx(REF_AC[t], rel=5e-6)
    assert S.final_alpha_cumprod(ac).item() == ac[0].item()


def test_alphas_cumprod_bit_identical_to_diffusers_construction():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    assert torch.equal(S.scaled_linear_alphas_cumprod(), torch.cumprod(1.0 - betas, dim=0))


def test_sigma_conversions_and_ddim_sigmas():
    # k-diffusion / ComfyUI SD1 sigma range: sigma_min ~ 0.0292, sigma_max ~ 14.6146.
    assert S.sigma_from_alpha_cumprod(REF_AC[0]) == pytest.approx(math.sqrt(0.00085 / 0.99915), rel=1e-12)
    assert S.sigma_from_alpha_cumprod(REF_AC[999]) == pytest.approx(14.6146, abs=1e-4)
    for a in (REF_AC[0], 0.5, REF_AC[999]):
        assert S.alpha_cumprod_from_sigma(S.sigma_from_alpha_cumprod(a)) == pytest.approx(a, rel=1e-12)

    sig = S.ddim_sigmas(50)
    assert sig.shape == (51,) and sig.dtype == torch.float32
    expected = [math.sqrt((1 - REF_AC[t]) / REF_AC[t]) for t in range(981, 0, -20)]
    expected.append(math.sqrt((1 - REF_AC[0]) / REF_AC[0]))
    assert sig.tolist() == pytest.approx(expected, rel=5e-5)
    assert bool((sig[1:] < sig[:-1]).all())


# --- single steps vs naive references ------------------------------------------------------


@pytest.mark.parametrize("steps,t", [(50, 981), (50, 501), (50, 21), (50, 1), (10, 901), (10, 1), (7, 853)])
def test_ddim_step_matches_naive(steps, t):
    eps, x = randn(1), randn(2)
    got = S.ddim_step(eps, t, x, REF_AC_T, steps)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, naive_ddim_step(eps, t, x, REF_AC, steps), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps,t", [(50, 1), (50, 21), (50, 501), (50, 981), (10, 1), (10, 901)])
def test_inversion_step_matches_naive(steps, t):
    eps, x = randn(3), randn(4)
    got = S.ddim_inversion_step(eps, t, x, REF_AC_T, steps)
    torch.testing.assert_close(got, naive_inversion_step(eps, t, x, REF_AC, steps), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [981, 1])
def test_float32_steps_match_naive_within_float32_tolerance(t):
    ac32 = S.scaled_linear_alphas_cumprod()
    eps, x = randn(5, torch.float32), randn(6, torch.float32)
    got = S.ddim_step(eps, t, x, ac32, 50)
    assert got.dtype == torch.float32
    ref = naive_ddim_step(eps, t, x, ac32.tolist(), 50)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    got_inv = S.ddim_inversion_step(eps, t, x, ac32, 50)
    ref_inv = naive_inversion_step(eps, t, x, ac32.tolist(), 50)
    torch.testing.assert_close(got_inv.double(), ref_inv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("t", [981, 501, 1])
def test_float32_bit_identical_to_reference_code(eta, t):
    ac32 = S.scaled_linear_alphas_cumprod()
    eps, x, noise = randn(7, torch.float32), randn(8, torch.float32), randn(9, torch.float32)
    got = S.ddim_step(eps, t, x, ac32, 50, eta=eta, variance_noise=noise if eta > 0 else None)
    assert torch.equal(got, diffusers_step(eps, t, x, ac32, 50, eta, noise))
    assert torch.equal(S.ddim_inversion_step(eps, t, x, ac32, 50), tav_next_step(eps, t, x, ac32, 50))


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("t", [981, 501, 1])
def test_eta_step_with_variance_noise_matches_naive(eta, t):
    eps, x, noise = randn(10), randn(11), randn(12)
    got = S.ddim_step(eps, t, x, REF_AC_T, 50, eta=eta, variance_noise=noise)
    ref = naive_ddim_step(eps, t, x, REF_AC, 50, eta=eta, noise=noise)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_eta_step_draws_noise_like_diffusers():
    # diffusers draws randn(model_output.shape, generator, device, dtype) once per step.
    eps, x = randn(13), randn(14)
    got = S.ddim_step(eps, 501, x, REF_AC_T, 50, eta=1.0, generator=torch.Generator().manual_seed(42))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    torch.testing.assert_close(got, naive_ddim_step(eps, 501, x, REF_AC, 50, eta=1.0, noise=noise))
    with pytest.raises(ValueError):
        S.ddim_step(eps, 501, x, REF_AC_T, 50, eta=1.0, generator=torch.Generator(), variance_noise=noise)


def test_step_keeps_sample_dtype():
    ac32 = S.scaled_linear_alphas_cumprod()
    eps, x = randn(15, torch.float16), randn(16, torch.float16)
    assert S.ddim_step(eps, 981, x, ac32, 50).dtype == torch.float16
    assert S.ddim_inversion_step(eps, 1, x, ac32, 50).dtype == torch.float16
    assert S.ddim_step(eps.float(), 981, x.float(), REF_AC_T, 50).dtype == torch.float32


# --- parameterisation conversions ----------------------------------------------------------


@pytest.mark.parametrize("a", [REF_AC[0], 0.5, REF_AC[999], torch.tensor(0.3, dtype=torch.float64)])
def test_v_to_eps_and_eps_to_x0_against_definitions(a):
    x0, eps = randn(17), randn(18)
    af = float(a)
    x_t = math.sqrt(af) * x0 + math.sqrt(1 - af) * eps
    v = math.sqrt(af) * eps - math.sqrt(1 - af) * x0
    torch.testing.assert_close(S.v_to_eps(v, x_t, a), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S.eps_to_x0(eps, x_t, a), x0, rtol=1e-10, atol=1e-10)


# --- full loops against analytic models ----------------------------------------------------


@pytest.mark.parametrize("steps", [7, 10, 50])
def test_known_noise_trajectory_is_exact(steps):
    # If the model always returns the true noise e of x = sqrt(a) mu + sqrt(1-a) e, every DDIM
    # step (either direction) stays on that line: the intermediates are known in closed form.
    mu, e = randn(19), randn(20)

    def on_line(a):
        return math.sqrt(a) * mu + math.sqrt(1 - a) * e

    start = on_line(REF_AC[0])  # inversion treats clean latents as the final level a[0]
    inverted = S.ddim_invert(lambda x, t: e, start, steps, REF_AC_T, return_all=True)
    increasing = [1 + k * (1000 // steps) for k in range(steps)]
    assert len(inverted) == steps + 1
    for latent, t in zip(inverted[1:], increasing):
        torch.testing.assert_close(latent, on_line(REF_AC[t]), rtol=1e-10, atol=1e-10)

    sampled = S.ddim_sample(lambda x, t: e, inverted[-1], steps, REF_AC_T)
    torch.testing.assert_close(sampled, start, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps", [10, 50, 200])
def test_round_trip_exact_for_state_independent_model(steps):
    # Inversion into t and sampling out of t use the same eps(t) and the same pair of levels,
    # so for a model that ignores x the round trip is an exact affine inverse at any step count.
    base = randn(21)
    x = randn(22)

    def eps_fn(latent, t):
        return base * math.cos(t / 150.0) + 0.01 * t

    noise = S.ddim_invert(eps_fn, x, steps, REF_AC_T)
    torch.testing.assert_close(S.ddim_sample(eps_fn, noise, steps, REF_AC_T), x, rtol=1e-9, atol=1e-9)


GAUSS_S = 0.5  # data ~ N(0, s^2 I)


def gaussian_eps(latent, t):
    # Ideal eps for Gaussian data: E[eps | x_t] = sqrt(1-a) x / (a s^2 + 1 - a).
    a = REF_AC[t]
    return math.sqrt(1 - a) * latent / (a * GAUSS_S**2 + 1 - a)


def gaussian_flow_scale(a_from, a_to):
    # DDIM ODE in (x/sqrt(a), sigma) is d xbar/d sigma = sigma xbar / (s^2 + sigma^2), whose
    # solution is x proportional to sqrt(a s^2 + 1 - a).
    return math.sqrt(a_to * GAUSS_S**2 + 1 - a_to) / math.sqrt(a_from * GAUSS_S**2 + 1 - a_from)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_gaussian_inversion_converges_to_ode_flow():
    x = randn(23) * GAUSS_S
    errs = []
    for steps in (50, 200, 500):
        t_last = (steps - 1) * (1000 // steps) + 1
        expected = x * gaussian_flow_scale(REF_AC[0], REF_AC[t_last])
        errs.append(rel_err(S.ddim_invert(gaussian_eps, x, steps, REF_AC_T), expected))
    # First-order convergence (~1/steps). Coarser grids are left out on purpose: the local
    # errors change sign along the path, so e.g. 10 steps lands close to the flow by luck.
    assert errs[0] > 2 * errs[1] and errs[1] > errs[2]
    assert errs[2] < 2e-3


def test_gaussian_round_trip_approaches_identity():
    x = randn(23) * GAUSS_S
    errs = []
    for steps in (10, 50, 200):
        noise = S.ddim_invert(gaussian_eps, x, steps, REF_AC_T)
        errs.append(rel_err(S.ddim_sample(gaussian_eps, noise, steps, REF_AC_T), x))
    # The error falls roughly as 1/steps (~20%, ~4%, ~1% here).
    assert errs[0] > 3 * errs[1] > 9 * errs[2]
    assert errs[2] < 1.5e-2


def test_single_point_data_round_trip_error_shrinks_with_steps():
    # Data is the single point mu (the clip latents); ideal eps(x, t) = (x - sqrt(a_t) mu) / sqrt(1-a_t).
    # Sampling with it is exact, but inversion queries eps at the level it moves to, so the
    # round trip is only approximately the identity and must improve with more steps.
    mu = randn(24)

    def eps_fn(latent, t):
        a = REF_AC[t]
        return (latent - math.sqrt(a) * mu) / math.sqrt(1 - a)

    errs = []
    for steps in (10, 50, 200):
        noise = S.ddim_invert(eps_fn, mu, steps, REF_AC_T)
        errs.append(rel_err(S.ddim_sample(eps_fn, noise, steps, REF_AC_T), mu))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-2
