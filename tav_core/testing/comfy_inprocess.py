"""ComfyUI imported in-process with the pack loaded by ComfyUI's own custom-node loader.

For level-2 tests and for scripts that need ComfyUI's node definitions without a server.
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import torch

from .server import PACK_LINK_NAME, PACK_ROOT, comfyui_dir

_loaded = None


def bootstrap_comfyui() -> None:
    """Make ComfyUI (env COMFYUI_DIR or <pack>/.comfyui) importable in this process; idempotent.

    Call it before anything imports `comfy`: comfy.model_management probes CUDA at import time and
    fails on machines without a GPU unless ComfyUI's --cpu flag is already set.
    """
    root = str(comfyui_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options

    # ComfyUI would parse sys.argv at import time; the host program's arguments are not ComfyUI's.
    comfy.options.enable_args_parsing(False)
    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        import comfy.cli_args

        comfy.cli_args.args.cpu = True


def load_comfy_with_pack():
    """Import ComfyUI (no argv parsing; CPU without CUDA), load its nodes and the pack; returns `nodes`."""
    global _loaded
    if _loaded is not None:
        return _loaded
    bootstrap_comfyui()
    import nodes

    link = Path(tempfile.mkdtemp(prefix="tav-custom-nodes-")) / PACK_LINK_NAME
    link.symlink_to(PACK_ROOT, target_is_directory=True)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(link))):
        raise RuntimeError("ComfyUI failed to load the pack; see the log above")
    _loaded = nodes
    return nodes


def pack_module():
    """The pack's package module, as ComfyUI imported it."""
    load_comfy_with_pack()
    for name, module in sys.modules.items():
        if name.endswith(PACK_LINK_NAME) and hasattr(module, "comfy_entrypoint"):
            return module
    raise LookupError("the pack module is not in sys.modules")


def pack_core(*names: str):
    """The pack's tav_core modules as ComfyUI imported them (so class identities match the nodes')."""
    import importlib
    import types

    package = pack_module().__name__
    return types.SimpleNamespace(**{n: importlib.import_module(f"{package}.tav_core.{n}") for n in names})


def with_v_prediction(model):
    """A clone of `model` with v-prediction sampling, patched in as core ModelSamplingDiscrete does."""
    import comfy.model_sampling

    class VPrediction(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    patched = model.clone()
    patched.add_object_patch("model_sampling", VPrediction(model.model.model_config))
    return patched


def perturb_temporal_outputs(temporal_layers, seed: int = 1, scale: float = 0.05) -> None:
    """Give an inflated model's temporal layers trained-looking output projections, in place.

    Inflation zeroes them (the layers start as identity), so without this a test could not see what
    the temporal attention does. `temporal_layers`: `inflate.temporal_layers(model)`.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in temporal_layers.named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)


def inflate_with_active_temporal_layers(inflate, model, seed: int = 0):
    """`model` inflated by the pack's `inflate` module, its temporal layers made to contribute.

    Inflation zeroes their outputs, so a test of the temporal path would see nothing (perturb_temporal_outputs)."""
    inflated = inflate.inflate(model, seed=seed)
    perturb_temporal_outputs(inflate.temporal_layers(inflated))
    return inflated


def clip_images(path, frames: int, size: int = 64) -> torch.Tensor:
    """IMAGE [frames, size, size, 3] of the clip at `path`: every 2nd frame from the first, centre-cropped."""
    from ..video import read_clip

    images, _ = read_clip(str(path), frames, 0, 2, size, size, "center crop")
    return torch.from_numpy(images)


def encode_prompts(clip, *texts: str) -> dict:
    """{text: conditioning} as CLIP Text Encode makes it, in inference mode as ComfyUI runs nodes."""
    with torch.inference_mode():
        return {text: clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in texts}
