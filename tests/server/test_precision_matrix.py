"""The paper pipeline through a real server under each launch option that GPU users run.

On this CPU, --bf16-unet, --fp16-unet and --fp8_e4m3fn-unet make ComfyUI store the UNet in that dtype
and compute in fp32 through manual casting: the path of fp8 weights, or of bf16 on cards without it.
Each option gets its own server; the fp32 server is the reference.

Tolerance. Rounding a weight to a storage dtype with unit roundoff u changes it by at most u
relative. tests/comfy/test_precision.py checks that one forward pass of the base UNet then moves by
at most 1.5 u relative (measured: 1.2-1.4 u for bf16, fp16-tuned and fp8), and that the pipeline
stays within the linear-accumulation bound below. The pipeline chains N model evaluations (the VAE
encoder, which --bf16-vae and --fp16-vae store in half precision, then the inversion steps and the
sampling steps); errors that add up linearly over the chain stay below
2 * N * 1.5 u = 3 N u (the factor 2 is a margin; measured: 0.36 of the bound for bf16, 0.13 for
fp16, 0.32 for fp8). With fp8 (3 mantissa bits) the bound is above 100%: there it only says that the
run did not go wrong, which is the most fp8 storage permits.

With --supports-fp8-compute and --fast fp8_matrix_mult, this CPU takes the path of a GPU with fp8 compute:
fp8 matrix multiplication (torch._scaled_mm runs on a CPU too), which training has to go around.

Sage attention and flash attention need CUDA and their packages: here the packages are stand-ins
(tests/stand_ins) with their interfaces, exact attention, and their autograd behaviour, so these runs
check that training gets a backward pass through ComfyUI's own dispatch of them, and sampling uses them.

The attention backends (and channels-last convolutions) compute the same fp32 math in another
order. Reordering a sum of K terms changes it by at most gamma_K ~ K u (Higham, Accuracy and
Stability of Numerical Algorithms, 3.1); the longest sums an attention backend reorders run over
the keys, K = 2 h w at the first level (sparse-causal: frame 0 and frame i-1). Guidance multiplies
a difference between the cond and uncond predictions by cfg, so each sampling step moves by at most
(1 + cfg) gamma_K: the bound is N (1 + cfg) K u.
"""
import math
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tav_core.testing.server import ComfyServer

# CI time: ten servers; tests/comfy/test_precision.py covers the same code paths on both ComfyUIs.
pytestmark = pytest.mark.pinned_comfyui_only

SERVER_CLIP = "clip.mp4"
FRAMES = 4
INVERT_STEPS = SAMPLE_STEPS = 3
PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"
# The first goes on to inversion and sampling: fp32 training, so that the comparison with the fp32
# server measures storage and compute alone (training precision: tests/comfy/test_precision.py).
PRECISIONS = ("fp32", "auto", "bf16", "fp16")

TORCH_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp8_e4m3fn": "float8_e4m3fn"}
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "bf16": 2.0 ** -9, "fp16": 2.0 ** -11, "fp8_e4m3fn": 2.0 ** -4}

CFG = 12.5
LATENT_SIZE = 64 // 8
KEYS = 2 * LATENT_SIZE * LATENT_SIZE  # the longest sum that an attention backend reorders

# (launch options, the storage dtypes they bring in, whether every precision choice is tuned)
CONFIGS = {
    "bf16-unet+bf16-vae": (("--bf16-unet", "--bf16-vae"), ("bf16",), True),
    "fp16-unet+fp16-vae": (("--fp16-unet", "--fp16-vae"), ("fp16",), True),
    "fp8_e4m3fn-unet": (("--fp8_e4m3fn-unet",), ("fp8_e4m3fn",), True),
    # What a GPU with fp8 compute runs with --fast: comfy.ops.fp8_ops, fp8 matrix multiplication in sampling.
    "fp8_e4m3fn-unet+fast-fp8-matrix-mult": (("--fp8_e4m3fn-unet", "--fast", "fp8_matrix_mult",
                                              "--supports-fp8-compute"), ("fp8_e4m3fn",), False),
    "pytorch-cross-attention": (("--use-pytorch-cross-attention",), ("fp32",), False),
    "split-cross-attention": (("--use-split-cross-attention",), ("fp32",), False),
    "quad-cross-attention+channels-last": (("--use-quad-cross-attention", "--force-channels-last"), ("fp32",),
                                           False),
    "sage-attention": (("--use-sage-attention",), ("fp32",), False),
    "flash-attention": (("--use-flash-attention",), ("fp32",), False),
}
# What ComfyUI logs when the option took effect.
ATTENTION_LOG = {"--use-sage-attention": "Using sage attention", "--use-flash-attention": "Using Flash Attention"}
STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"


def tolerance(storages) -> float:
    evaluations = 1 + INVERT_STEPS + SAMPLE_STEPS  # VAE encoder, then the UNet
    u = max(UNIT_ROUNDOFF[s] for s in storages)
    if storages == ("fp32",):  # the same weights, the same math in another order
        return evaluations * (1 + CFG) * KEYS * u
    return 3 * evaluations * u


def pipeline_prompt(checkpoint: str, precisions) -> dict:
    """Load Video -> Inflate -> One-Shot Tune (one per precision, each saved) -> Invert -> Sample -> latent."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "TAVLoadVideo", "inputs": {"video": SERVER_CLIP, "frame_count": FRAMES, "start_frame": 0,
                                                       "frame_stride": 2, "width": 8 * LATENT_SIZE,
                                                       "height": 8 * LATENT_SIZE, "resize_mode": "center crop"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "TAVInflateModel", "inputs": {"model": ["1", 0], "seed": 0, "video_wide_groupnorm": True}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a ball is rolling", "clip": ["1", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "7": {"class_type": "TAVSaveTuned", "inputs": {"model": ["4", 0], "filename_prefix": "tuneavideo/untuned"}},
    }
    for i, precision in enumerate(precisions):
        tune, save = f"t{i}", f"s{i}"
        prompt[tune] = {"class_type": "TAVOneShotTune", "inputs": {
            "model": ["4", 0], "positive": ["5", 0], "latent": ["3", 0], "steps": 2, "learning_rate": 1e-3,
            "seed": 0, "trainable": PAPER, "gradient_checkpointing": True, "checkpoint_blocks": "all blocks",
            "precision": precision, "optimizer": "AdamW", "cache": False}}
        prompt[save] = {"class_type": "TAVSaveTuned",
                        "inputs": {"model": [tune, 0], "filename_prefix": f"tuneavideo/{precision}"}}
    tuned = ["t0", 0]
    prompt |= {
        "8": {"class_type": "TAVDDIMInvert", "inputs": {"model": tuned, "latent": ["3", 0], "conditioning": ["6", 0],
                                                        "steps": INVERT_STEPS}},
        "9": {"class_type": "TAVVideoSample", "inputs": {"model": tuned, "positive": ["5", 0], "negative": ["6", 0],
                                                         "latent": ["8", 0], "steps": SAMPLE_STEPS, "cfg": CFG,
                                                         "seed": 0, "eta": 0.0}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "latents/edit"}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    return prompt


def run_pipeline(tmp_path_factory, checkpoint, clip, launch_options, precisions):
    base = tmp_path_factory.mktemp("precision-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
    (base / "input").mkdir()
    shutil.copy(clip, base / "input" / SERVER_CLIP)  # Load Video refuses links out of input/
    stand_ins = {"PYTHONPATH": str(STAND_INS)} if set(launch_options) & set(ATTENTION_LOG) else {}
    with ComfyServer(base, extra_args=launch_options, extra_env=stand_ins) as server:
        history = server.run(pipeline_prompt(checkpoint.name, precisions), timeout=600)
        assert history["status"]["status_str"] == "success"
        log = server.log_tail(400)
    latent = safetensors.torch.load_file(str(next((base / "output" / "latents").glob("edit_*.latent"))))
    saved = {p: safetensors.torch.load_file(str(next((base / "output" / "tuneavideo").glob(f"{p}_*.safetensors"))))
             for p in ("untuned", *precisions)}
    return latent["latent_tensor"].float(), saved, log


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_checkpoint, synthetic_clip):
    """The fp32 run: the default launch options of a CPU server."""
    latent, saved, _ = run_pipeline(tmp_path_factory, tiny_checkpoint, synthetic_clip, (), PRECISIONS[:1])
    return latent, saved


@pytest.fixture(scope="module")
def base_weights(tiny_checkpoint):
    """The checkpoint's UNet tensors by official (diffusers) name."""
    from tav_core.testing.checkpoints import sd15_unet_config
    from tav_core.testing.comfy_inprocess import bootstrap_comfyui

    bootstrap_comfyui()
    import comfy.utils

    state = safetensors.torch.load_file(str(tiny_checkpoint))
    return {official: state[f"model.diffusion_model.{ours}"]
            for official, ours in comfy.utils.unet_to_diffusers(sd15_unet_config("tiny")).items()
            if official.endswith(".to_q.weight")}


def assert_every_chosen_tensor_trained(saved: dict, untuned: dict, base: dict) -> None:
    to_q = [k for k in saved if k.endswith(("attn1.to_q.weight", "attn2.to_q.weight"))]
    temporal = [k for k in saved if ".attn_temp." in k]
    assert to_q and temporal and set(saved) == set(to_q) | set(temporal) | {k for k in saved if ".norm_temp." in k}
    for name in to_q:
        assert not torch.equal(saved[name].float(), base[name].float()), f"{name} did not train"
    for name in temporal:
        assert not torch.equal(saved[name], untuned[name]), f"{name} did not train"
    for name in (k for k in saved if ".norm_temp." in k):  # not chosen: unchanged
        assert torch.equal(saved[name], untuned[name]), f"{name} changed but is not trained"
    assert all(torch.isfinite(v).all() for v in saved.values())


@pytest.mark.parametrize("config", list(CONFIGS))
def test_pipeline_under_launch_option(config, reference, base_weights, tmp_path_factory, tiny_checkpoint,
                                      synthetic_clip):
    launch_options, storages, every_precision = CONFIGS[config]
    precisions = PRECISIONS if every_precision else PRECISIONS[:1]
    latent, saved, log = run_pipeline(tmp_path_factory, tiny_checkpoint, synthetic_clip, launch_options, precisions)
    if "fp32" not in storages:  # the option took effect: ComfyUI logs the UNet's storage dtype
        assert f"model weight dtype torch.{TORCH_NAMES[storages[0]]}" in log
    for precision in precisions:
        assert_every_chosen_tensor_trained(saved[precision], saved["untuned"], base_weights)
    for option in set(launch_options) & set(ATTENTION_LOG):  # it took effect, and training stood in for it
        assert ATTENTION_LOG[option] in log and "has no backward pass" in log
    if "fp8_matrix_mult" in launch_options:  # training cast per operation; sampling multiplied in fp8
        assert "fp8 matrix multiplication has no backward pass" in log and "Exception during fp8 op" not in log
    expected = reference[0]
    assert torch.isfinite(latent).all()
    error = ((latent - expected).norm() / expected.norm()).item()
    bound = tolerance(storages)
    assert error <= bound, f"{config}: relative error {error:.3e} against fp32 exceeds {bound:.3e}"
    margin = math.log2(bound / max(error, 1e-30))
    print(f"{config}: relative error against fp32 {error:.3e} (bound {bound:.3e}, {margin:.1f} bits of margin)")
