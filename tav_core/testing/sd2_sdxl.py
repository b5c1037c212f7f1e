"""Random-weight SD2.x (v-prediction) and SDXL checkpoints that ComfyUI's stock loader detects as such.

The same recipe as the SD1.5 test checkpoint (checkpoints.py): ComfyUI's own module classes, every
tensor initialised as PyTorch's defaults, saved in the original single-file layouts through
ComfyUI's own saving maps, TAESD as the VAE. What ComfyUI's detection needs decides the UNet's size:

- SD2.x (`SD20`): model_channels 320, OpenCLIP-H context (1024), linear transformer projections,
  64-channel heads. ComfyUI tells the v-prediction SD2 (768-v) from the eps one (512-base) only by
  the spread of one trained bias, `output_blocks.11.1.transformer_blocks.0.norm1.bias` (std >
  0.09), so the UNet keeps SD2's 12 output blocks (4 levels of 2 res blocks; all at 320 channels
  here) with a transformer in output block 11, and that bias is drawn with std V_MARKER_STD instead
  of PyTorch's zeros. Transformers: the first down block, the middle, output block 11 (79M params).
- SDXL (`SDXL`): context 2048 (CLIP-L + OpenCLIP-bigG), pooled-text + size conditioning (adm 2816),
  and exactly SDXL's input transformer depths [0, 0, 2, 2, 10, 10], which is what ComfyUI matches;
  the levels stay at 320 channels and the middle and up path carry one transformer each where SDXL
  has attention (146M params). eps prediction, as SDXL base.
- Text encoders at full size (OpenCLIP-H 354M params; CLIP-L 123M + bigG 695M), because ComfyUI
  builds them from fixed configs and leaves any layer missing from the file uninitialised.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from filelock import FileLock

from tav_core.testing import checkpoints
from tav_core.testing.server import PACK_ROOT

ARCHITECTURES = ("sd2", "sdxl")

V_MARKER_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_MARKER_STD = 0.2  # ComfyUI's threshold is 0.09

_COMMON = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_linear_in_transformer": True,
    "transformer_depth_middle": 1,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
# transformer_depth_output lists the output blocks in reverse order (ComfyUI pops it from the end):
# its first entry is the last (highest-resolution) output block.
_UNETS = {
    "sd2": ("SD20", {
        **_COMMON, "adm_in_channels": None, "context_dim": 1024,
        "channel_mult": [1, 1, 1, 1], "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 0, 0, 0, 0, 0, 0, 0],
        "transformer_depth_output": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    }),
    "sdxl": ("SDXL", {
        **_COMMON, "adm_in_channels": 2816, "num_classes": "sequential", "context_dim": 2048,
        "channel_mult": [1, 1, 1], "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 0, 0, 1, 0, 0, 1],
    }),
}


def unet_config(arch: str) -> dict:
    """The UNet config of the generated checkpoint, as ComfyUI detects it."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, not {arch!r}")
    return dict(_UNETS[arch][1])


def model_config_name(arch: str) -> str:
    """The comfy.supported_models class that ComfyUI picks for the checkpoint."""
    unet_config(arch)
    return _UNETS[arch][0]


def write_checkpoint(path, arch: str, seed: int = 0) -> Path:
    """Write a deterministic random-weight `arch` checkpoint (.safetensors) to `path`, atomically."""
    path = Path(path)
    comfy = checkpoints._import_comfy()
    import comfy.sdxl_clip
    import comfy.text_encoders.sd2_clip

    model_config = getattr(comfy.supported_models, model_config_name(arch))(unet_config(arch))
    unet = checkpoints._unet_weights(comfy, model_config, seed)
    if arch == "sd2":
        unet[V_MARKER_KEY] = (torch.randn(unet[V_MARKER_KEY].shape, generator=checkpoints._generator(seed, 0))
                              * V_MARKER_STD).to(checkpoints.STORAGE_DTYPE)
    text_encoder = {"sd2": comfy.text_encoders.sd2_clip.SD2ClipModel,
                    "sdxl": comfy.sdxl_clip.SDXLClipModel}[arch](
        device="cpu", dtype=torch.float32, model_options={"custom_operations": comfy.ops.disable_weight_init})
    clip = checkpoints.initialised_weights(text_encoder, checkpoints._generator(seed, 1))
    del text_encoder
    tensors = {
        **model_config.process_unet_state_dict_for_saving(unet),
        **model_config.process_clip_state_dict_for_saving(clip),
        **model_config.process_vae_state_dict_for_saving(checkpoints._vae_weights(comfy, seed)),
    }
    # ComfyUI's SDXL saving map adds CLIP-L's position ids as int64; keep them, as real files do.
    metadata = {"format": "pt", "generator": f"tav_core.testing.sd2_sdxl {generator_tag()}",
                "architecture": arch, "seed": str(seed)}
    checkpoints._save_atomically({k: v.contiguous() for k, v in tensors.items()}, path, metadata)
    return path


def cached_checkpoint(arch: str, cache_dir=None) -> Path:
    """The `arch` checkpoint (seed 0) in the test-model cache, generated on first use (see checkpoints.py)."""
    unet_config(arch)
    default = os.environ.get("TAV_TEST_MODELS") or PACK_ROOT / ".cache" / "test-models"
    cache_dir = Path(cache_dir or default)
    path = cache_dir / f"{arch}-tiny-{generator_tag()}.safetensors"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                write_checkpoint(path, arch)
    return path


def generator_tag() -> str:
    """checkpoints.generator_tag() extended by this file."""
    digest = hashlib.sha256(checkpoints.generator_tag().encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:12]
