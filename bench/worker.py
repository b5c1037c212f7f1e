"""One benchmark configuration per process (so peak-memory numbers belong to that configuration).

Run by bench/run.py as `python bench/worker.py '<json spec>'`; prints one JSON line prefixed with
RESULT: on stdout. Never a test. Nothing here changes tav_core: alternative code paths (naive
attention, single GroupNorm, another attention backend) are bench-only patches or settings.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import machine  # bench/, this script's folder, is first on sys.path
from profiling import StepProfile, summary
from rss import RssPeak, status_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CFG = 7.5


# ----------------------------------------------------------------------------------------- setup
def load_comfy(attention: str | None = None):
    """ComfyUI with the pack loaded by its own loader (CPU only when there is no CUDA device).

    attention="pytorch" selects ComfyUI's PyTorch SDPA backend, as `--use-pytorch-cross-attention`
    does (ComfyUI's default on NVIDIA; on CPUs its default is sub-quadratic attention)."""
    from tav_core.testing.comfy_inprocess import bootstrap_comfyui, load_comfy_with_pack, pack_core

    bootstrap_comfyui()
    if attention == "pytorch":
        import comfy.cli_args

        comfy.cli_args.args.use_pytorch_cross_attention = True
    elif attention is not None:
        raise ValueError(f"unknown attention backend {attention!r}")
    load_comfy_with_pack()
    return pack_core("attention", "checkpointing", "inflate", "sampling", "tuned", "tuning")


def load_model(size: str):
    import comfy.sd
    from tav_core.testing.checkpoints import cached_sd15_checkpoint

    path = cached_sd15_checkpoint(size=size)
    with torch.inference_mode():  # as ComfyUI's loader node runs
        model, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)
    return model


def conditioning(seed: int):
    """Random CLIP-L-shaped text conditioning [1, 77, 768]: the text encoder is not benchmarked."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 768, generator=g), {}]]


def device():
    import comfy.model_management

    return comfy.model_management.get_torch_device()


def attention_backend() -> str:
    import comfy.ldm.modules.attention as comfy_attention

    return comfy_attention.optimized_attention.__name__


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory growth from `reset()`: CUDA max_memory_allocated, or the process's peak RSS."""

    def reset(self):
        sync()
        if device().type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "cuda max_memory_allocated"
            return
        self.rss = RssPeak()
        self.rss.reset()
        self.base, self.method = self.rss.base, self.rss.method

    def growth_mb(self) -> float:
        sync()
        if device().type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return self.rss.growth_mb()


# ------------------------------------------------------------------------------------------ FLOPs
def flop_counter():
    from torch.utils import flop_counter as fc

    # CPU SDPA kernels have no formula in torch's table; give them the generic SDPA ones.
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", fc.sdpa_flop_count),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", None)):
        op = getattr(torch.ops.aten, name, None)
        if op is None or op in fc.flop_registry:
            continue
        if formula is not None:
            fc.register_flop_formula(op)(lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
        else:
            fc.register_flop_formula(op)(
                lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))
    return fc.FlopCounterMode(display=False)


def flops_by_op(mode) -> dict:
    counts = mode.get_flop_counts().get("Global", {})
    return {str(k).split(".")[-1] if "." in str(k) else str(k): int(v) for k, v in counts.items()}


# --------------------------------------------------------------------------------------- patches
class FullSpatioTemporalAttn1:
    """Naive baseline attn1: every frame's queries attend to the keys of all F frames of its video.

    O((F N)^2) instead of sparse-causal O(2 F N^2). Done as one attention over [B, F*N, C].
    """

    def __init__(self, frames_option):
        self.frames_option = frames_option

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as comfy_attention

        frames = extra_options[self.frames_option]
        rows, tokens, channels = q.shape
        videos = rows // frames
        q, k, v = (t.reshape(videos, frames * tokens, channels) for t in (q, k, v))
        out = comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                                  attn_precision=extra_options.get("attn_precision"))
        return out.reshape(rows, tokens, channels)


def naive_model(core, inflated):
    model = inflated.clone()
    patch = FullSpatioTemporalAttn1(core.inflate.FRAMES_OPTION)
    for _, _, key in core.inflate.transformer_blocks(model.model.diffusion_model):
        model.set_model_attn1_replace(patch, *key)
    return model


def randomise_temporal(core, inflated, seed=1):
    """Non-zero temporal output projections (they start at zero), so the temporal path counts."""
    layers = core.inflate.temporal_layers(inflated)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layers.named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p))


@contextlib.contextmanager
def single_group_norm(core, model):
    """Bench-only: the hooked GroupNorms skip their own (discarded) computation; the video hook
    then computes the only GroupNorm. Equivalent output; measures the cost of the double compute."""
    norms = core.inflate.video_norms(model.model.diffusion_model)
    for norm in norms:
        norm.forward = lambda x: x
    try:
        yield len(norms)
    finally:
        for norm in norms:
            del norm.forward


# ----------------------------------------------------------------------------------------- timing
def median(xs):
    return statistics.median(xs) if xs else None


def timed_tune(core, inflated, latents, positive, steps, gc, flop_step=False, precision=None, memory=None):
    """Run tune() for 1 warm-up + `steps` timed (+1 FLOP-counted) steps.

    Returns per-step seconds, the FLOP counter, the result, and the peak memory growth of the timed
    steps (taken before the FLOP-counted step, whose tensor tracking is not part of the work)."""
    marks, peak = [], {}
    mode = flop_counter() if flop_step else None
    total = 1 + steps + (1 if flop_step else 0)

    def on_step(step, _total, _loss):
        sync()
        marks.append(time.perf_counter())
        if step == 1 + steps and memory is not None:
            peak["mb"] = memory.growth_mb()
        if mode is not None and step == 1 + steps:
            mode.__enter__()
        if mode is not None and step == total:
            mode.__exit__(None, None, None)

    # gc: True (every block), False, or "highest" (only the highest-resolution blocks)
    blocks = core.checkpointing.HIGHEST_RESOLUTION if gc == "highest" else core.checkpointing.ALL_BLOCKS
    settings = core.tuning.TuneSettings(steps=total, gradient_checkpointing=bool(gc), checkpoint_blocks=blocks,
                                        precision=precision or ("fp32" if device().type == "cpu" else "auto"))
    with torch.inference_mode():
        result = core.tuning.tune(inflated, positive, {"samples": latents}, settings, on_step)
    times = [b - a for a, b in zip(marks, marks[1:])][:steps]
    return times, mode, result, peak.get("mb")


def timed_sampler(fn, steps):
    """Run a sampling function for 1 warm-up + `steps` steps; per-step seconds (between callbacks)."""
    marks = []

    def callback(step, x0, x, total):
        sync()
        marks.append(time.perf_counter())

    out = fn(steps + 1, callback)
    return [b - a for a, b in zip(marks, marks[1:])], out


def relative_error(got, ref):
    got, ref = got.float(), ref.float()
    return float((got - ref).norm() / ref.norm())


# ------------------------------------------------------------------------------------------ tasks
def task_peak(spec):
    from tav_core.testing.comfy_inprocess import bootstrap_comfyui

    bootstrap_comfyui()
    dev = device()
    n = spec.get("matmul", 4096)
    out = {"device": str(dev), "matmul": n}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        times = []
        for i in range(spec.get("repeats", 5) + 1):
            sync()
            t = time.perf_counter()
            torch.mm(a, b)
            sync()
            if i:
                times.append(time.perf_counter() - t)
        out[str(dtype).split(".")[-1]] = {"seconds": times, "tflops": 2 * n**3 / median(times) / 1e12}
    return out


def common(spec):
    core = load_comfy(spec.get("attention"))
    torch.manual_seed(0)
    model = load_model(spec.get("model_size", "full"))
    latent_hw = spec["size"] // 8
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(spec["frames"], 4, latent_hw, latent_hw, generator=g)
    with torch.inference_mode():
        inflated = core.inflate.inflate(model, seed=0)
    return core, model, inflated, latents


def task_tune(spec):
    core, _, inflated, latents = common(spec)
    memory = PeakMemory()
    memory.reset()
    count_flops = spec.get("flops", True)  # the FLOP-counted step is one more step: skip it for huge configs
    times, mode, result, peak_mb = timed_tune(core, inflated, latents, conditioning(0), spec["steps"], spec["gc"],
                                              flop_step=count_flops, precision=spec.get("precision"),
                                              memory=memory)
    out = {"step_seconds": times, "median_s": median(times), "peak_mb": peak_mb,
           "peak_mb_incl_flop_step": memory.growth_mb(),
           "memory_method": memory.method,
           "rss_at_reset_mb": memory.base / 2**20, "vm_hwm_mb": status_bytes("VmHWM") / 2**20,
           "attention_backend": attention_backend(), "losses": result.losses}
    if count_flops:
        out.update(flops=mode.get_total_flops(), flops_by_op=flops_by_op(mode))
    return out


def _sample(core, model, latents, positive, negative):
    def run(steps, callback):
        return core.sampling.ddim_sample(model, positive, negative, latents, steps, CFG, 0.0, 0, False, callback)
    return run


def _invert(core, model, latents, negative):
    def run(steps, callback):
        return core.sampling.ddim_invert(model, latents, negative, steps, callback)
    return run


def sampling_setup(spec):
    """The common setup plus non-zero temporal layers and cond/uncond: (core, inflated, latents, +, -)."""
    core, _, inflated, latents = common(spec)
    with torch.inference_mode():
        randomise_temporal(core, inflated)
    return core, inflated, latents, conditioning(0), conditioning(1)


def task_sample(spec):
    core, inflated, latents, positive, negative = sampling_setup(spec)
    steps = spec["steps"]
    memory = PeakMemory()
    out = {}

    def measure(name, model, autocast=None):
        memory.reset()
        ctx = torch.autocast(device().type, dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            times, samples = timed_sampler(_sample(core, model, latents, positive, negative), steps)
        out[name] = {"step_seconds": times, "median_s": median(times), "peak_mb": memory.growth_mb()}
        return samples

    reference = measure("cfg_fp32", inflated)
    # FLOPs of one CFG step (cond + uncond of F frames in one batch)
    mode = flop_counter()
    with mode:
        _sample(core, inflated, latents, positive, negative)(1, None)
    out["cfg_fp32"]["flops"] = mode.get_total_flops()
    out["cfg_fp32"]["flops_by_op"] = flops_by_op(mode)
    if spec.get("profile_table"):  # one more fp32 CFG step, its second, under torch.profiler
        step = StepProfile(first_step=0, cuda=device().type == "cuda")
        _sample(core, inflated, latents, positive, negative)(2, lambda i, *_: step.mark(i))
        out["cfg_fp32"]["profile"] = summary(step.prof, Path(spec["profile_table"]))

    memory.reset()
    times, _ = timed_sampler(_invert(core, inflated, latents, negative), steps)
    out["invert"] = {"step_seconds": times, "median_s": median(times), "peak_mb": memory.growth_mb()}

    if spec.get("bf16", True):
        samples = measure("cfg_bf16", inflated, torch.bfloat16)
        out["cfg_bf16"]["rel_error"] = relative_error(samples, reference)
        out["cfg_bf16"]["rel_error_note"] = f"||bf16 - fp32|| / ||fp32|| of the latent after {steps + 1} DDIM steps"
    if spec.get("naive", True):
        naive = naive_model(core, inflated)
        measure("cfg_naive_full_attention", naive)
        mode = flop_counter()
        with mode:
            _sample(core, naive, latents, positive, negative)(1, None)
        out["cfg_naive_full_attention"]["flops"] = mode.get_total_flops()
    out["attention_backend"] = attention_backend()
    out["memory_method"] = memory.method
    out["memory_note"] = "one process, modes in sequence; peak reset before each"
    return out


def task_profile(spec):
    core, model, inflated, latents = common(spec)
    positive, negative = conditioning(0), conditioning(1)
    cuda = device().type == "cuda"
    out = {}
    results_dir = Path(spec["results_dir"])

    # 1. one tune step (gradient checkpointing on: the default), after a warm-up step
    step = StepProfile(first_step=1, cuda=cuda)
    settings = core.tuning.TuneSettings(steps=2, gradient_checkpointing=True, precision="auto" if cuda else "fp32")
    with torch.inference_mode():
        core.tuning.tune(inflated, positive, {"samples": latents}, settings, lambda i, total, loss: step.mark(i))
    out["tune_step"] = summary(step.prof, results_dir / "profile_tune.txt")

    # 2. one CFG sampling step
    with torch.inference_mode():
        randomise_temporal(core, inflated)
    step = StepProfile(first_step=0, cuda=cuda)
    core.sampling.ddim_sample(inflated, positive, negative, latents, 2, CFG, 0.0, 0, False,
                              lambda i, *_: step.mark(i))
    out["sample_step"] = summary(step.prof, results_dir / "profile_sample.txt")

    # 3. video GroupNorm: hooked GroupNorms compute their own output, which the hook discards
    invert = _invert(core, inflated, latents, negative)
    base_t, base_out = timed_sampler(invert, spec["steps"])
    with single_group_norm(core, inflated) as count:
        single_t, single_out = timed_sampler(invert, spec["steps"])
    out["video_groupnorm_forward"] = {
        "double_s": median(base_t), "single_s": median(single_t), "double_all": base_t, "single_all": single_t,
        "hooked_norms": count, "same_output_rel_error": relative_error(single_out, base_out)}
    return out


def task_ab(spec):
    """Ordering check: sparse-causal and naive CFG sampling steps interleaved in one process."""
    core, inflated, latents, positive, negative = sampling_setup(spec)
    naive = naive_model(core, inflated)
    out = {"order": [], "sparse": [], "naive": []}
    for name in ("sparse", "naive", "sparse", "naive"):
        times, _ = timed_sampler(_sample(core, inflated if name == "sparse" else naive, latents, positive, negative),
                                 spec["steps"])
        out["order"].append(name)
        out[name].append(times)
    return out



TASKS = {"peak": task_peak, "tune": task_tune, "sample": task_sample, "profile": task_profile, "ab": task_ab}


def main():
    spec = json.loads(sys.argv[1])
    torch.set_grad_enabled(True)
    t = time.perf_counter()
    result = TASKS[spec["task"]](spec)
    result["wall_s"] = time.perf_counter() - t
    result["threads"] = torch.get_num_threads()
    result["machine"] = machine.capability()
    if torch.cuda.is_available():
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT:" + json.dumps(result), flush=True)



if __name__ == "__main__":
    main()
