"""Times the official Tune-A-Video code (showlab/Tune-A-Video) for the side-by-side comparison.

Runs inside the official code's own environment (diffusers 0.11.1), from its checkout:

    cd <official checkout> && <its python> <this repo>/bench/official.py '<json spec>'

Prints one line `RESULT:<json>`. Nothing of the official code is part of this repository: this file
only calls it. Tuning runs the official `train_tuneavideo.main` unchanged; the timing comes from
torch's global optimizer-step and module-forward hooks. Sampling and inversion call the official
`TuneAVideoPipeline` and `tuneavideo.util.ddim_inversion`. Models are random, in the SD1.5
architecture, written once as a diffusers folder (see `pretrained_folder`).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from profiling import StepProfile, summary  # bench/ is this script's own folder, first on sys.path
from rss import RssPeak, status_bytes

SEED = 33


# ------------------------------------------------------------------------------- random SD1.5
UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
)
# Stable Diffusion 1.5's scheduler_config.json: the official script reads it as DDPM and DDIM.
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.11.1", "num_train_timesteps": 1000,
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "trained_betas": None,
    "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
}


def pretrained_folder(root: Path, tokenizer_dir: Path) -> Path:
    """A diffusers SD1.5 folder with PyTorch-default random weights (built once, then reused)."""
    folder = root / "sd15-random-diffusers"
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tmp = folder.with_suffix(".tmp")
    UNet2DConditionModel(**UNET_CONFIG).save_pretrained(tmp / "unet")
    # As SD1.5's own unet/config.json: no mid_block_type, which the official from_pretrained_2d keeps as it
    # finds it, and a 2D name there is unknown to its UNet3DConditionModel.
    unet_config = json.loads((tmp / "unet" / "config.json").read_text())
    unet_config.pop("mid_block_type", None)
    (tmp / "unet" / "config.json").write_text(json.dumps(unet_config, indent=2))
    AutoencoderKL(**VAE_CONFIG).save_pretrained(tmp / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                 num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                 hidden_act="quick_gelu", projection_dim=768)).save_pretrained(tmp / "text_encoder")
    CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77).save_pretrained(tmp / "tokenizer")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG))
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "TuneAVideoPipeline", "_diffusers_version": "0.11.1",
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["unet", "UNet3DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    tmp.rename(folder)
    return folder


# ------------------------------------------------------------------------------------------ tasks
class StopTraining(Exception):
    pass


def task_tune(spec, folder: Path):
    """Official training script, unchanged, for 1 warm-up + N timed steps (+ its own setup)."""
    import train_tuneavideo
    from omegaconf import OmegaConf

    total = 1 + spec["steps"]
    marks, memory = [], RssPeak()

    def first_forward(module, args):
        # The first module call of the first training step: the models are loaded by then.
        memory.reset()
        hook.remove()

    def after_step(optimizer, args, kwargs):
        marks.append(time.perf_counter())
        if len(marks) == total:
            raise StopTraining

    hook = torch.nn.modules.module.register_module_forward_pre_hook(first_forward)
    step_hook = register_optimizer_step_post_hook(after_step)
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            train_tuneavideo.main(
                pretrained_model_path=str(folder), output_dir=out_dir,
                train_data=dict(video_path=spec["clip"], prompt="a man is skiing", n_sample_frames=spec["frames"],
                                width=spec["size"], height=spec["size"], sample_start_idx=0,
                                sample_frame_rate=2),
                validation_data=OmegaConf.create(dict(  # the script reads it as its YAML config
                    prompts=["spider man is skiing"], video_length=spec["frames"], width=spec["size"],
                    height=spec["size"], num_inference_steps=2, guidance_scale=12.5, use_inv_latent=False,
                    num_inv_steps=2)),
                validation_steps=10**9, checkpointing_steps=10**9, max_train_steps=total,
                learning_rate=3e-5, gradient_checkpointing=spec["gc"], mixed_precision="no",
                enable_xformers_memory_efficient_attention=False, use_8bit_adam=False, seed=SEED)
        except StopTraining:
            pass
        finally:
            step_hook.remove()
    times = [b - a for a, b in zip(marks, marks[1:])]
    return {"step_seconds": times, "median_s": statistics.median(times), "peak_mb": memory.growth_mb(),
            "memory_method": "VmHWM after clear_refs, reset at the first module call of step 1",
            "rss_at_reset_mb": memory.base / 2**20, "vm_hwm_mb": status_bytes("VmHWM") / 2**20}


def _pipeline(folder: Path):
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer
    from tuneavideo.models.unet import UNet3DConditionModel
    from tuneavideo.pipelines.pipeline_tuneavideo import TuneAVideoPipeline

    unet = UNet3DConditionModel.from_pretrained_2d(str(folder), subfolder="unet")
    with torch.no_grad():  # non-zero temporal output projections, so the temporal path counts
        g = torch.Generator().manual_seed(1)
        for name, p in unet.named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pipe = TuneAVideoPipeline(
        vae=AutoencoderKL.from_pretrained(str(folder), subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"),
        unet=unet, scheduler=DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def task_sample(spec, folder: Path):
    """CFG sampling step (official pipeline) and DDIM inversion step (official ddim_inversion)."""
    from tuneavideo.util import ddim_inversion

    pipe = _pipeline(folder)
    steps, frames, size = spec["steps"], spec["frames"], spec["size"]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, frames, size // 8, size // 8, generator=g)
    memory, out = RssPeak(), {}

    marks = []
    memory.reset()
    with torch.no_grad():
        pipe("spider man is skiing", video_length=frames, height=size, width=size,
             num_inference_steps=steps + 1, guidance_scale=12.5, latents=latents.clone(),
             callback=lambda i, t, x: marks.append(time.perf_counter()), callback_steps=1)
    times = [b - a for a, b in zip(marks, marks[1:])]
    out["cfg_fp32"] = {"step_seconds": times, "median_s": statistics.median(times), "peak_mb": memory.growth_mb()}
    if spec.get("profile_table"):  # one more CFG step, its second, under torch.profiler
        step = StepProfile(first_step=0)
        with torch.no_grad():
            pipe("spider man is skiing", video_length=frames, height=size, width=size, num_inference_steps=2,
                 guidance_scale=12.5, latents=latents.clone(), callback=lambda i, t, x: step.mark(i),
                 callback_steps=1)
        out["cfg_fp32"]["profile"] = summary(step.prof, Path(spec["profile_table"]))

    starts = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: starts.append(time.perf_counter()))
    memory.reset()
    pipe.scheduler.set_timesteps(steps + 1)
    with torch.no_grad():
        ddim_inversion(pipe, pipe.scheduler, video_latent=latents.clone(), num_inv_steps=steps + 1, prompt="")
    end = time.perf_counter()
    hook.remove()
    times = [b - a for a, b in zip(starts[1:], starts[2:] + [end])]
    out["invert"] = {"step_seconds": times, "median_s": statistics.median(times), "peak_mb": memory.growth_mb(),
                     "note": "between UNet calls; the last step runs to the end of ddim_inversion"}
    out["memory_method"] = "VmHWM after clear_refs, reset before each call; one process, in sequence"
    return out


TASKS = {"tune": task_tune, "sample": task_sample}


def main():
    sys.path.insert(0, os.getcwd())  # the official checkout: train_tuneavideo, tuneavideo
    spec = json.loads(sys.argv[1])
    torch.manual_seed(SEED)
    folder = pretrained_folder(Path(spec["cache"]), Path(spec["tokenizer"]))
    t = time.perf_counter()
    result = TASKS[spec["task"]](spec, folder)
    result["wall_s"] = time.perf_counter() - t
    result["threads"] = torch.get_num_threads()
    result["versions"] = {m: __import__(m).__version__ for m in ("torch", "diffusers", "transformers", "accelerate")}
    print("RESULT:" + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
