"""Runs the official Video-P2P code (dvlab-research/Video-P2P) on shared random weights: reference side.

Started by bench/compare_videop2p.py, which writes the shared inputs and compares; not run by hand
except to reproduce. Runs inside the official code's own environment (diffusers 0.11.1), with a
checkout of Video-P2P and one of showlab/Tune-A-Video:

    <official venv>/bin/python bench/videop2p_official.py <spec.json>

Prints one line `RESULT:<json>` and saves every tensor it compares to the spec's `out` (.pt).
Nothing of the official code is in this repository; this file only calls it:

- Model: showlab's Tune-A-Video `UNet3DConditionModel` (sparse-causal attn1, frames 0 and i-1, as
  ours), not Video-P2P's own copy (its `FrameAttention` attends to frame 0 only). Built as its
  `from_pretrained_2d` does, `from_config` with the 2D config's block types made 3D, except that
  `from_pretrained_2d` hard-codes SD1.5's four levels (the tiny model has two) and keeps the
  temporal tensors at their init: here every tensor, temporal ones included, is loaded from the
  shared file, strictly (no tensor missing or left over).
- Text: transformers' `CLIPTextModel` with the shared random CLIP-L weights, the SD1 CLIP tokenizer
  files that ComfyUI ships. Each side encodes its prompts itself.
- Scheduler: `DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
  clip_sample=False, set_alpha_to_one=False, steps_offset=1)`. run_videop2p.py builds it without
  steps_offset, but the TuneAVideoPipeline constructor rewrites steps_offset to 1 on that same
  object (pipeline_tuneavideo.py, the "steps_offset!=1" deprecation), so the official run uses 1
  too: timesteps 981, 781, ..., 1 at 5 steps, as ours.
- Code: Video-P2P's `NullInversion`, `LocalBlend`, the controllers, `get_equalizer` and
  `make_controller` are nested in `main()` of run_videop2p.py and read main's locals. They are taken
  from the source with `ast` and exec'd in the module's globals plus those locals (see `_official`).
  Changed text, each checked to occur exactly once: in LocalBlend,
  `attention_store["down_cross"][2:4] + attention_store["up_cross"][:3]` (SD1.5 at 512 px: the
  five maps at latent/4, 16x16) becomes the spec's slices `BLEND_DOWN`/`BLEND_UP`, and the map
  size `16, 16` becomes `BLEND_RES, BLEND_RES`. The `8` beside them is the head count (the maps are
  [(frames heads), pixels, words], frames outer), which SD1.5 and the tiny model share, so it
  stays; the frame count is the `-1`. Main's locals given: tokenizer, device (cpu), x_t (the
  inverted latent), blend_word, mask_th, weight_dtype (float32); module constants replaced:
  NUM_DDIM_STEPS (spec steps; 50 in the script), GUIDANCE_SCALE (spec cfg). Nothing else changes.
- Runs as the script does after its image loading: `init_prompt`, `register_attention_control(model,
  None)`, `ddim_loop`, `null_optimization` (`invert`; the fast mode is `invert_`, no optimisation),
  then `make_controller`, `register_attention_control(model, controller)` and Video-P2P's
  TuneAVideoPipeline with `latents=x_t`, `uncond_embeddings_pre`, `controller`, `fast`. The
  pipeline decodes with a VAE at the end; a small random AutoencoderKL (scale factor 8) stands in,
  its output unused: every latent is taken from the pipeline's step callback.
"""
from __future__ import annotations

import ast
import json
import sys
import time
import types
from pathlib import Path

import torch

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)
NESTED = ("LocalBlend", "EmptyControl", "AttentionControl", "SpatialReplace", "AttentionStore",
          "AttentionControlEdit", "AttentionReplace", "AttentionRefine", "AttentionReweight",
          "get_equalizer", "make_controller", "NullInversion")
BLEND_SOURCE = ('attention_store["down_cross"][2:4] + attention_store["up_cross"][:3]',
                'attention_store["down_cross"][BLEND_DOWN] + attention_store["up_cross"][BLEND_UP]')
BLEND_SIZE = ("8, 16, 16, MAX_NUM_WORDS", "8, BLEND_RES, BLEND_RES, MAX_NUM_WORDS")


def _showlab_unet_class(showlab: Path):
    """showlab's UNet3DConditionModel, imported as package `showlab_tuneavideo` (Video-P2P's own
    `tuneavideo` package takes the plain name)."""
    package = types.ModuleType("showlab_tuneavideo")  # a namespace package, as in the checkout
    package.__path__ = [str(showlab / "tuneavideo")]
    sys.modules["showlab_tuneavideo"] = package
    from showlab_tuneavideo.models.unet import UNet3DConditionModel
    return UNet3DConditionModel


def _official(videop2p: Path, names: dict) -> dict:
    """Video-P2P's nested classes and functions, exec'd with main()'s locals in `names`."""
    import run_videop2p

    source = (videop2p / "run_videop2p.py").read_text()
    main = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    namespace = dict(vars(run_videop2p))
    namespace.update(names)
    found = []
    for node in main.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in NESTED:
            text = ast.get_source_segment(source, node)
            # main's body is indented by 4: dedent so the definition stands at module level.
            text = "\n".join(line[4:] if line.startswith("    ") else line for line in text.splitlines())
            if node.name == "LocalBlend":
                for old, new in (BLEND_SOURCE, BLEND_SIZE):
                    if text.count(old) != 1:
                        raise RuntimeError(f"LocalBlend no longer reads {old!r}: the substitution needs review")
                    text = text.replace(old, new)
            exec(compile(text, f"run_videop2p.py:{node.name}", "exec"), namespace)
            found.append(node.name)
    if sorted(found) != sorted(NESTED):
        raise RuntimeError(f"run_videop2p.main defines {found}, expected {NESTED}")
    return namespace


def _pipeline(spec, folder: Path, unet_class):
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer
    from tuneavideo.pipelines.pipeline_tuneavideo import TuneAVideoPipeline  # Video-P2P's pipeline

    # from_pretrained_2d, with the block types of the folder's config (it hard-codes SD1.5's four
    # levels), and the temporal tensors loaded too (it keeps their init).
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["_class_name"] = unet_class.__name__
    for key in ("down_block_types", "up_block_types"):
        config[key] = [t.replace("2D", "3D") for t in config[key]]
    unet = unet_class.from_config(config)
    state = torch.load(folder / "unet" / "diffusion_pytorch_model.bin", map_location="cpu")
    unet.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[32] * 4, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=32)
    pipe = TuneAVideoPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(str(folder / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(spec["tokenizer"], model_max_length=77),
        unet=unet, scheduler=DDIMScheduler(**SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, prompts, x_t, spec, uncond, controller, fast):
    """Video-P2P's pipeline call from run_videop2p.main; every step's latents from its callback."""
    steps = []
    pipe(prompts, video_length=spec["frames"], height=spec["size"], width=spec["size"],
         num_inference_steps=spec["steps"], guidance_scale=spec["cfg"], latents=x_t,
         uncond_embeddings_pre=uncond, controller=controller, fast=fast,
         callback=lambda i, t, latents: steps.append(latents.clone()), callback_steps=1)
    return torch.stack(steps)  # [steps, batch, 4, frames, h, w]


def _synthetic_blend(ns, data, spec):
    """The official replace controller with LocalBlend, fed given attention maps instead of a UNet's.

    Per step, every layer's map goes through the controller as ca_forward hands it over (the whole
    CFG batch, [(batch frames heads), pixels, words], uncond half first), in the UNet's order; then
    step_callback blends the given x_t. Returns the blended x_t per step."""
    blend = data["blend"]
    ns["blend_word"] = ((blend[0],), (blend[1],))
    controller = ns["make_controller"](data["prompts"], True, {"default_": data["cross"]}, data["self"],
                                       blend_words=blend, equilizer_params=None, mask_th=tuple(spec["mask_th"]))
    controller.num_att_layers = len(data["places"])
    blended = []
    for step, layers in enumerate(data["maps"]):
        for attn, place in zip(layers, data["places"]):
            controller(attn.clone(), True, place)
        blended.append(controller.step_callback(data["x"][step].clone()))
    return {"x": torch.stack(blended)}


def main():
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec.get("threads", 1))
    videop2p, showlab, folder = Path(spec["videop2p"]), Path(spec["showlab"]), Path(spec["folder"])
    sys.path.insert(0, str(videop2p))  # run_videop2p, ptp_utils, seq_aligner, tuneavideo (Video-P2P's)
    unet_class = _showlab_unet_class(showlab)
    import ptp_utils

    pipe = _pipeline(spec, folder, unet_class)
    latent = torch.load(folder / spec.get("latent", "latent.pt"))  # [1, 4, frames, h, w], the UNet's space
    names = {"tokenizer": pipe.tokenizer, "device": torch.device("cpu"), "weight_dtype": torch.float32,
             "NUM_DDIM_STEPS": spec["steps"], "GUIDANCE_SCALE": spec["cfg"], "x_t": None,
             "mask_th": tuple(spec["mask_th"]), "blend_word": None,
             "BLEND_DOWN": slice(*spec["blend_down"]), "BLEND_UP": slice(*spec["blend_up"]),
             "BLEND_RES": spec["blend_res"]}
    ns = _official(videop2p, names)
    out, timing = {"latent": latent}, {}

    # NullInversion.invert, after its image loading and VAE encoding.
    t0 = time.perf_counter()
    null_inversion = ns["NullInversion"](pipe)
    null_inversion.init_prompt(spec["source"])
    ptp_utils.register_attention_control(pipe, None)
    ddim_latents = null_inversion.ddim_loop(latent)
    timing["ddim_loop_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    uncond = null_inversion.null_optimization(ddim_latents, spec["inner_steps"], spec["epsilon"])
    timing["null_optimization_s"] = time.perf_counter() - t0
    x_t = ddim_latents[-1]
    ns["x_t"] = x_t
    out.update(ddim_latents=torch.stack(ddim_latents), uncond=torch.cat(uncond), x_t=x_t,
               context=null_inversion.context)

    # Reconstruction under the source prompt, CFG spec cfg: null-text, plain DDIM inversion, fast.
    out["rec_nulltext"] = _sample(pipe, [spec["source"]], x_t, spec, uncond, None, False)
    out["rec_plain"] = _sample(pipe, [spec["source"]], x_t, spec, None, None, False)
    out["rec_fast"] = _sample(pipe, [spec["source"]], x_t, spec, None, None, True)
    error = {k: float((out[k][-1] - latent).norm() / latent.norm()) for k in ("rec_nulltext", "rec_plain", "rec_fast")}

    for case in spec["cases"]:
        blend = case.get("blend")
        ns["blend_word"] = ((blend[0],), (blend[1],)) if blend else None  # as main() rewrites blend_word
        controller = ns["make_controller"](
            case["prompts"], case["is_word_swap"], {"default_": case["cross"]}, case["self"],
            blend_words=blend, equilizer_params=case.get("eq"), mask_th=tuple(spec["mask_th"]))
        ptp_utils.register_attention_control(pipe, controller)
        t0 = time.perf_counter()
        out["edit_" + case["name"]] = _sample(pipe, case["prompts"], x_t, spec,
                                              None if case.get("fast") else uncond, controller,
                                              bool(case.get("fast")))
        timing["edit_" + case["name"] + "_s"] = time.perf_counter() - t0
        base = getattr(controller, "prev_controller", None) or controller  # reweight wraps replace/refine
        out["mapper_" + case["name"]] = base.mapper
        if hasattr(base, "alphas"):
            out["alphas_" + case["name"]] = base.alphas
        if hasattr(controller, "equalizer"):
            out["equalizer_" + case["name"]] = controller.equalizer
    synthetic = folder / "synthetic_blend.pt"
    if spec.get("synthetic_blend", True) and synthetic.exists():
        out["synthetic_blend"] = _synthetic_blend(ns, torch.load(synthetic), spec)
    torch.save(out, spec["out"])
    import diffusers
    import transformers
    print("RESULT:" + json.dumps({
        "reconstruction_error": error, "null_vs_plain": error["rec_nulltext"] / error["rec_plain"],
        "timing": timing, "threads": torch.get_num_threads(), "out": spec["out"],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__}}), flush=True)


if __name__ == "__main__":
    main()
