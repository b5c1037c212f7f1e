"""Random-weight SD1.5 checkpoints that real ComfyUI loads like a downloaded one.

No weights can be downloaded in CI, so tests, the demo and the benchmarks run on a checkpoint
generated here: the SD1.x single-file layout (`model.diffusion_model.*`,
`cond_stage_model.transformer.text_model.*`, `first_stage_model.*`) built from ComfyUI's own module
classes, so ComfyUI detects it as SD15 and every key lands in a real layer.

- UNet: SD1.5's (model_channels 320, context_dim 768, 8 heads, conv proj_in/out). "tiny" keeps two
  levels with one res block each, but a transformer in the down, middle and up path, so every kind
  of block Tune-A-Video patches is present (107M params); "full" is the real SD1.5 UNet (860M).
- Text encoder: the full CLIP-L, because ComfyUI always builds it at full size and leaves any layer
  missing from the file as uninitialised memory.
- VAE: TAESD, which ComfyUI detects from its `taesd_encoder` / `taesd_decoder` keys (2.4M params,
  same 8x downscale and 4 latent channels as the SD VAE, whose size ComfyUI fixes).

ComfyUI's layers skip weight init, so every tensor is initialised here as PyTorch's own defaults do.
Tiny constant-std weights would make activations bias-dominated and hide frame-dependent behaviour.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
from filelock import FileLock  # a dependency of torch, so always installed
from safetensors.torch import load_file, save_file

from tav_core.testing.comfy_inprocess import bootstrap_comfyui
from tav_core.testing.server import PACK_ROOT, comfyui_dir

SIZES = ("tiny", "full")

# Distributed SD1.5 checkpoints are fp16 too; ComfyUI upcasts on load where it computes in fp32.
STORAGE_DTYPE = torch.float16

# HF's CLIP init; the only embeddings in the checkpoint are CLIP's token and position tables.
CLIP_EMBEDDING_STD = 0.02

# The UNet config exactly as comfy.model_detection.detect_unet_config reads it back from the keys.
_SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "transformer_depth_middle": 1,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}
# transformer_depth lists one entry per input res block, transformer_depth_output one per output
# block in reverse order (ComfyUI pops it from the end while building the up path).
_LEVELS = {
    "tiny": {
        "channel_mult": [1, 2],
        "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1],
    },
    "full": {
        "channel_mult": [1, 2, 4, 4],
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    },
}
# Parameters that ComfyUI's constructors fill with real values: TAESD's latent scale and shift,
# CLIP's logit scale (which the SD1 layout does not store).
_CONSTRUCTOR_INITIALISED = ("vae_scale", "vae_shift", "logit_scale")
_CONTROLNET_STREAM = 1 << 40
_UNET_KEY_PREFIX = "model.diffusion_model."


def sd15_unet_config(size: str = "tiny") -> dict:
    """The UNet config of a generated checkpoint, as ComfyUI detects it."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    return {**_SD15_UNET, **_LEVELS[size]}


def write_sd15_checkpoint(path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a deterministic random-weight SD1.5 checkpoint (.safetensors) to `path`, atomically."""
    path = Path(path)
    comfy = _import_comfy()
    model_config = comfy.supported_models.SD15(sd15_unet_config(size))
    tensors = {
        **model_config.process_unet_state_dict_for_saving(_unet_weights(comfy, model_config, seed)),
        **model_config.process_clip_state_dict_for_saving(_clip_weights(comfy, seed)),
        **model_config.process_vae_state_dict_for_saving(_vae_weights(comfy, seed)),
    }
    metadata = {"format": "pt", "generator": f"tav_core.testing.checkpoints {generator_tag()}",
                "size": size, "seed": str(seed)}
    _save_atomically(tensors, path, metadata)
    return path


def cached_sd15_checkpoint(cache_dir=None, size: str = "tiny") -> Path:
    """The checkpoint of `size` (seed 0) in the cache, generated on first use.

    The cache is <pack>/.cache/test-models unless `cache_dir` or env TAV_TEST_MODELS says otherwise.
    The name carries generator_tag(), so any change to the generator produces a fresh file.
    """
    sd15_unet_config(size)  # validate before touching the disk
    default = os.environ.get("TAV_TEST_MODELS") or PACK_ROOT / ".cache" / "test-models"
    cache_dir = Path(cache_dir or default)
    path = cache_dir / f"sd15-{size}-{generator_tag()}.safetensors"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Concurrent test processes wait for one writer instead of each generating the file.
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                write_sd15_checkpoint(path, size=size)
    return path


FP8_MAX = 448.0  # the largest float8_e4m3fn


def write_scaled_fp8_checkpoints(source, quantised_path, reference_path,
                                 fp8_matrix_mult: bool = False) -> tuple[Path, Path]:
    """Quantise every linear layer of `source`'s UNet to float8_e4m3fn with a per-tensor scale, in ComfyUI's scaled
    fp8 layout (a `scale_weight` per layer and a `scaled_fp8` marker, as fp8 checkpoints come: ComfyUI 0.3 builds
    `comfy.ops.scaled_fp8_ops` for it, 0.33 converts it to QuantizedTensor weights). Beside it goes the reference:
    the same checkpoint with those layers' dequantised values in fp32, what the quantised one computes with. The
    layers' biases are rounded to fp8 values in both, as ComfyUI 0.3's scaled_fp8_ops stores them in fp8.

    `fp8_matrix_mult`: mark the file for fp8 matrix multiplication, which ComfyUI then uses where the device has
    fp8 compute (with unit input scales, so that it computes the same)."""
    tensors = load_file(str(source))
    quantised, reference = dict(tensors), dict(tensors)
    for key, weight in tensors.items():
        if not (key.startswith(_UNET_KEY_PREFIX) and key.endswith(".weight") and weight.ndim == 2):
            continue
        layer = key[:-len(".weight")]
        scale = weight.float().abs().max() / FP8_MAX
        fp8 = (weight.float() / scale).to(torch.float8_e4m3fn)
        quantised[key], reference[key] = fp8, fp8.float() * scale
        quantised[f"{layer}.scale_weight"] = scale.reshape(())
        if fp8_matrix_mult:
            quantised[f"{layer}.scale_input"] = torch.ones(())
        if f"{layer}.bias" in tensors:
            bias = tensors[f"{layer}.bias"]
            quantised[f"{layer}.bias"] = reference[f"{layer}.bias"] = bias.to(torch.float8_e4m3fn).to(bias.dtype)
    # The marker's size is the switch: empty for fp8 matrix multiplication, two elements for weight-only fp8.
    quantised[_UNET_KEY_PREFIX + "scaled_fp8"] = torch.zeros(0 if fp8_matrix_mult else 2, dtype=torch.float8_e4m3fn)
    metadata = {"format": "pt", "generator": f"tav_core.testing.checkpoints {generator_tag()}"}
    _save_atomically(quantised, Path(quantised_path), metadata)
    _save_atomically(reference, Path(reference_path), metadata)
    return Path(quantised_path), Path(reference_path)


def write_sd15_controlnet(path, seed: int = 0) -> Path:
    """Write a random-weight ControlNet for the tiny UNet in the original SD1.5 ControlNet layout.

    Keys are `control_model.*` as in lllyasviel's `control_sd15_*.pth`, with an RGB hint. Real
    ControlNets start with zero convs, which would make the control invisible in tests, so every
    tensor (zero convs included) gets PyTorch's default init.
    """
    path = Path(path)
    _import_comfy()
    import comfy.cldm.cldm

    unet_config = comfy.supported_models.SD15(sd15_unet_config("tiny")).unet_config
    control = comfy.cldm.cldm.ControlNet(
        **{k: v for k, v in unet_config.items() if k != "out_channels"}, hint_channels=3,
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    # A stream of its own, apart from every checkpoint seed's UNet, CLIP and VAE streams.
    weights = initialised_weights(control, torch.Generator().manual_seed(_CONTROLNET_STREAM + seed))
    _save_atomically({f"control_model.{k}": v for k, v in weights.items()}, path,
                     {"format": "pt", "generator": f"tav_core.testing.checkpoints {generator_tag()}"})
    return path


def cached_sd15_controlnet(cache_dir=None) -> Path:
    """The tiny ControlNet (seed 0) in the checkpoint cache, generated on first use."""
    default = os.environ.get("TAV_TEST_MODELS") or PACK_ROOT / ".cache" / "test-models"
    path = Path(cache_dir or default) / f"controlnet-sd15-tiny-{generator_tag()}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                write_sd15_controlnet(path)
    return path


def _save_atomically(tensors: dict, path: Path, metadata: dict) -> None:
    # A unique temporary name in the same directory, so readers never see a partial file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors creates it owner-only; a shared cache must be readable
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def generator_tag() -> str:
    """Short hash of what determines the generated weights: this file, torch's RNG, ComfyUI's layout."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(torch.__version__.encode())
    version_file = comfyui_dir() / "comfyui_version.py"
    if version_file.exists():
        digest.update(version_file.read_bytes())
    return digest.hexdigest()[:12]


def _import_comfy():
    bootstrap_comfyui()
    import comfy.ldm.modules.diffusionmodules.openaimodel
    import comfy.ops
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    return comfy


def _unet_weights(comfy, model_config, seed: int) -> dict:
    # model_config.unet_config adds SD15's head layout (8 heads) to the detected config.
    unet = comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel(
        **model_config.unet_config, dtype=torch.float32, device="cpu",
        operations=comfy.ops.disable_weight_init)
    return initialised_weights(unet, _generator(seed, 0))


def _clip_weights(comfy, seed: int) -> dict:
    # The class ComfyUI instantiates for SD15's text encoder, so its keys ("clip_l.transformer...")
    # are exactly what SD15.process_clip_state_dict maps the file's keys back to.
    clip = comfy.sd1_clip.SD1ClipModel(
        device="cpu", dtype=torch.float32,
        model_options={"custom_operations": comfy.ops.disable_weight_init})
    return initialised_weights(clip, _generator(seed, 1))


def _vae_weights(comfy, seed: int) -> dict:
    return initialised_weights(comfy.taesd.taesd.TAESD(), _generator(seed, 2))


def _generator(seed: int, part: int) -> torch.Generator:
    # One stream per part: the CLIP and VAE weights are the same for every UNet size.
    return torch.Generator().manual_seed(seed * 3 + part)


def initialised_weights(module: torch.nn.Module, generator: torch.Generator) -> dict:
    """Initialise every parameter as PyTorch's default reset_parameters would; return a state dict."""
    done = set()
    with torch.no_grad():
        for layer in module.modules():
            if _init_layer(layer, generator):
                done.update(id(p) for p in layer.parameters(recurse=False))
    missed = [name for name, p in module.named_parameters()
              if id(p) not in done and name.rsplit(".", 1)[-1] not in _CONSTRUCTOR_INITIALISED]
    if missed:
        raise RuntimeError(f"no initialiser for {len(missed)} parameters, e.g. {missed[:5]}")
    return {k: v.to(STORAGE_DTYPE).contiguous() for k, v in module.state_dict().items()}


def _init_layer(layer: torch.nn.Module, generator: torch.Generator) -> bool:
    """Initialise `layer`'s own parameters; False if it is not a layer type this knows."""
    if isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        if layer.bias is not None:
            bound = 1 / math.sqrt(layer.weight[0].numel())  # fan_in, also for grouped convs
            layer.bias.uniform_(-bound, bound, generator=generator)
    elif isinstance(layer, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        if layer.weight is not None:
            layer.weight.fill_(1.0)
        if layer.bias is not None:
            layer.bias.zero_()
    elif isinstance(layer, torch.nn.Embedding):
        layer.weight.normal_(0.0, CLIP_EMBEDDING_STD, generator=generator)
    else:
        return False
    return True


# A kohya-style LoRA for the tiny UNet: attention projections in down and mid blocks,
# (out_features, in_features) each.
TINY_LORA_TARGETS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v": (320, 768),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k": (640, 640),
}


def write_sd15_lora(path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA for the tiny checkpoint, in the `lora_unet_...` format that LoraLoader reads."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out_features, in_features) in TINY_LORA_TARGETS.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=g) / in_features ** 0.5
        tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=g)
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    path = Path(path)
    _save_atomically(tensors, path, {"format": "pt"})
    return path
