"""SD2.x (v-prediction) and SDXL checkpoints through a real server: the whole pipeline, then Save and
Load Tuned Weights: the loaded tuning samples the same video as the tuned model it was saved from."""
import pytest
import torch
from safetensors.torch import load_file

from tav_core.testing import sd2_sdxl

CLIP = {"video": "clip.mp4", "frame_count": 4, "start_frame": 0, "frame_stride": 2, "width": 64, "height": 64,
        "resize_mode": "center crop"}
STEPS = 3


@pytest.fixture(scope="module")
def checkpoints(server):
    """The server's names of the SD2 and SDXL test checkpoints."""
    names = {}
    for arch in sd2_sdxl.ARCHITECTURES:
        path = sd2_sdxl.cached_checkpoint(arch)
        link = server.base_dir / "models" / "checkpoints" / path.name
        if not link.exists():
            link.symlink_to(path)
        names[arch] = path.name
    return names


def text(id, words):
    return {id: {"class_type": "CLIPTextEncode", "inputs": {"text": words, "clip": ["1", 1]}}}


def edit_from(model, prefix):
    """Clip latents -> DDIM Invert (empty prompt) -> Video Sample -> the latent saved, and decoded."""
    return {
        **text("7", ""), **text("9", "a red car on a road"),
        "8": {"class_type": "TAVDDIMInvert", "inputs": {"model": model, "latent": ["3", 0], "conditioning": ["7", 0],
                                                        "steps": STEPS}},
        "10": {"class_type": "TAVVideoSample", "inputs": {"model": model, "positive": ["9", 0], "negative": ["7", 0],
                                                          "latent": ["8", 0], "steps": STEPS, "cfg": 12.5, "seed": 0,
                                                          "eta": 0.0}},
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": prefix}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
    }


def base(checkpoint):
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
            "2": {"class_type": "TAVLoadVideo", "inputs": dict(CLIP)},
            "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}}}


def tune_prompt(checkpoint, arch):
    return {
        **base(checkpoint), **text("5", "a ball is rolling"),
        "4": {"class_type": "TAVInflateModel", "inputs": {"model": ["1", 0], "seed": 0, "video_wide_groupnorm": True}},
        "6": {"class_type": "TAVOneShotTune", "inputs": {
            "model": ["4", 0], "positive": ["5", 0], "latent": ["3", 0], "steps": 2, "learning_rate": 1e-3, "seed": 0,
            "trainable": "paper (attn1.to_q, attn2.to_q, attn_temp)", "gradient_checkpointing": True,
            "checkpoint_blocks": "all blocks", "precision": "auto", "optimizer": "AdamW", "cache": False}},
        "14": {"class_type": "TAVSaveTuned", "inputs": {"model": ["6", 0], "filename_prefix": f"tuneavideo/{arch}",
                                                        "source_prompt": "a ball is rolling"}},
        **edit_from(["6", 0], f"latents/{arch}-tuned"),
    }


def load_prompt(checkpoint, arch, weights):
    return {**base(checkpoint),
            "6": {"class_type": "TAVLoadTuned", "inputs": {"model": ["1", 0], "weights": weights}},
            **edit_from(["6", 0], f"latents/{arch}-loaded")}


def saved_latent(server, history):
    [path] = [p for p in server.output_files(history) if p.suffix == ".latent"]
    return load_file(str(path))["latent_tensor"]


@pytest.mark.parametrize("arch", sd2_sdxl.ARCHITECTURES)
def test_pipeline_then_save_and_load_tuned(server, checkpoints, arch):
    losses = []
    tuned = server.run(tune_prompt(checkpoints[arch], arch), timeout=600,
                       on_message=lambda kind, data: losses.append(data["loss"]) if kind == "tuneavideo.loss" else None)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    [saved] = [n["text"][0] for n in tuned["outputs"].values() if "text" in n]
    assert len(tuned["outputs"]["13"]["images"]) == CLIP["frame_count"]
    # The file holds the trained tensors under the official names; attn_temp's output projection
    # starts at exactly zero, so non-zero values there show that tuning changed it.
    weights = load_file(str(server.base_dir / "output" / "tuneavideo" / saved))
    assert any(".attn1.to_q." in k for k in weights) and any(".attn2.to_q." in k for k in weights)
    to_out = [v for k, v in weights.items() if ".attn_temp.to_out." in k]
    assert to_out and all(v.abs().max() > 0 for v in to_out)
    video = saved_latent(server, tuned)
    assert video.shape == (CLIP["frame_count"], 4, 8, 8) and torch.isfinite(video).all()

    loaded = server.run(load_prompt(checkpoints[arch], arch, saved), timeout=600)
    again = saved_latent(server, loaded)
    # The loaded tuning is the tuned model (measured: bit-identical videos).
    difference = ((again - video).abs().max() / video.abs().max()).item()
    print(f"{arch}: loaded vs tuned video, max relative difference {difference:.1e}")
    assert difference < 1e-5
