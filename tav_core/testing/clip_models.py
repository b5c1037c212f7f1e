"""Random-weight transformers CLIPModel folders, laid out as a Hugging Face download, for tests.

The tokenizer is openai CLIP's BPE vocabulary, taken from ComfyUI's own copy (comfy/sd1_tokenizer, the
tokenizer of SD1's CLIP-L text encoder), and the image processor has openai CLIP's settings, so
nothing needs to be downloaded.
"""
from __future__ import annotations

from pathlib import Path

from .server import comfyui_dir

# openai/clip-vit-large-patch14, as its config.json says
VIT_L_14 = dict(
    text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     projection_dim=768),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       patch_size=14, image_size=224, projection_dim=768),
    projection_dim=768,
)
SMALL = dict(
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     projection_dim=32),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       patch_size=32, image_size=224, projection_dim=32),
    projection_dim=32,
)
SIZES = {"vit-l-14": VIT_L_14, "small": SMALL}
# openai CLIP's preprocessing: shortest side to 224 (bicubic), center crop 224, its mean and std
IMAGE_PROCESSOR = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_resize=True,
                       do_center_crop=True, do_normalize=True, resample=3,
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711])


def clip_processor():
    import transformers

    tokenizer_dir = comfyui_dir() / "comfy" / "sd1_tokenizer"
    tokenizer = transformers.CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"),
                                           model_max_length=77)
    return transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(**IMAGE_PROCESSOR),
                                      tokenizer=tokenizer)


def write_clip_model(folder: Path, size: str = "small", seed: int = 0, logit_scale: float | None = None) -> Path:
    """A CLIPModel with PyTorch's initialisation in `folder` (config, safetensors, processor files)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPConfig(**SIZES[size])
    model = transformers.CLIPModel(config)
    if logit_scale is not None:  # PickScore-like models carry their own learned scale
        with torch.no_grad():
            model.logit_scale.fill_(float(torch.tensor(logit_scale).log()))
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    clip_processor().save_pretrained(folder)
    return folder


def cached_clip_model(size: str = "small") -> Path:
    """A random-weight CLIP folder cached under the pack's .cache/ (ViT-L/14 is 1.7 GB: made once)."""
    folder = Path(__file__).resolve().parents[2] / ".cache" / f"clip-scoring-{size}"
    if not (folder / "model.safetensors").exists():
        partial = folder.with_name(folder.name + ".partial")
        write_clip_model(partial, size)
        partial.rename(folder)
    return folder
