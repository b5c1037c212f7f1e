"""Null-text inversion and attention control against the official Video-P2P code, same random weights.

Setup, once (outside this repository; nothing of the official code comes into it):

    mkdir -p /work/official
    git -C <Video-P2P snapshot> archive HEAD | tar -x -C /work/official/Video-P2P      # dvlab-research/Video-P2P
    git -C <Tune-A-Video snapshot> archive HEAD | tar -x -C /work/official/Tune-A-Video  # showlab/Tune-A-Video
    python3.11 -m venv /work/official/venv          # the same python as .venv
    echo "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
        > /work/official/venv/lib/python3.11/site-packages/_base_venv.pth   # this project's torch, reused
    /work/official/venv/bin/pip install diffusers==0.11.1 'huggingface_hub<0.26' transformers==4.30.2 \
        accelerate==0.20.3 'setuptools<70' einops omegaconf opencv-python-headless ipython

Run (about 8 minutes on this machine, one thread each side; --ratio-seeds adds about 45 s per seed):

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/compare_videop2p.py \
        --official-python /work/official/venv/bin/python \
        --videop2p /work/official/Video-P2P --showlab /work/official/Tune-A-Video --official-runs 2 --ratio-seeds 4

What it does:
- Model: the pack's tiny random SD1.5 checkpoint (tav_core.testing.checkpoints, 107M UNet), loaded
  by ComfyUI as the loader node does, with CLIP computed in fp32 (`--fp32-text-enc`; ComfyUI's CPU
  default is fp16, which alone differs from an fp32 encoder by ~1e-3). Random temporal weights (every
  attn_temp/norm_temp tensor, PyTorch-default init) written as an official-named file and loaded
  through Load Tuned Weights' code (`weights.load_tuned`). The effective weights of the inflated model
  are exported under the official diffusers names (ComfyUI's key map, weights.official_to_comfy) as
  a diffusers folder: unet/ (config + every tensor), text_encoder/ (the checkpoint's CLIP-L, HF
  names), latent.pt. bench/videop2p_official.py runs Video-P2P on it (see its docstring).
- Work: 4 frames at 64x64 px, 5 DDIM steps, 3 inner steps, CFG 7.5, one thread on each side
  (`torch.set_num_threads(1)`). The clip's latent is seeded Gaussian noise in the UNet's space.
- Compares: the text embeddings, Video-P2P's DDIM inversion trajectory, the null-text embeddings
  per step, the inverted latent, the reconstruction, and each controller (replace, refine,
  reweight) with and without local blend, as relative differences ||ours - official|| / ||official||.
Writes bench/results/videop2p-<timestamp>.{json,md} (git-ignored) and the official tensors (.pt).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import machine  # bench/, this script's folder, is first on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT))

SOURCE = "a rabbit is eating a watermelon"
# Video-P2P's own settings where the tiny run allows: mask_th, inner-step epsilon; fractions chosen
# so that each switch (cross and self replace, local blend start) falls inside the 5 steps.
CROSS, SELF = 0.8, 0.6
MASK_TH = (0.3, 0.3)
EDITED = {"replace": "a cat is eating a watermelon", "refine": "a origami rabbit is eating a watermelon"}
# name: (edited prompt, official is_word_swap, official eq_params, our controller, our reweight words,
# local-blend words). Video-P2P's reweight always wraps a replace or refine controller
# (make_controller); ours stacks reweight words on replace/refine, or reweights alone (prompts of
# equal token count), which is the official replace + equaliser on identical prompts.
EQ_ORIGAMI = {"words": ["origami"], "values": [2.0]}
EQ_WATERMELON = {"words": ["watermelon"], "values": [2.0]}
CASES = {
    "replace": (EDITED["replace"], True, None, "replace", (), None),
    "replace_blend": (EDITED["replace"], True, None, "replace", (), ("rabbit", "cat")),
    "refine": (EDITED["refine"], False, None, "refine", (), None),
    "refine_blend": (EDITED["refine"], False, None, "refine", (), ("rabbit", "rabbit")),
    "refine_reweight": (EDITED["refine"], False, EQ_ORIGAMI, "refine", (("origami", 2.0),), None),
    "refine_reweight_blend": (EDITED["refine"], False, EQ_ORIGAMI, "refine", (("origami", 2.0),), ("rabbit", "rabbit")),
    "reweight": (SOURCE, True, EQ_WATERMELON, "reweight", (("watermelon", 2.0),), None),
    "reweight_blend": (SOURCE, True, EQ_WATERMELON, "reweight", (("watermelon", 2.0),), ("rabbit", "rabbit")),
}
FAST_CASES = ("replace", "replace_blend")  # also run in fast mode (no null-text embeddings, source unguided)


def tiny_diffusers_unet_config(unet_config: dict) -> dict:
    """The diffusers UNet2DConditionModel config of a ComfyUI SD1.x UNet config (one transformer per
    res block on every level, as the pack's tiny checkpoint has)."""
    levels = len(unet_config["channel_mult"])
    blocks = unet_config["num_res_blocks"]
    if len(set(blocks)) != 1:
        raise ValueError("levels with different res block counts have no diffusers config")
    return {
        "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.11.1", "sample_size": 8,
        "in_channels": 4, "out_channels": 4, "layers_per_block": blocks[0],
        "block_out_channels": [unet_config["model_channels"] * m for m in unet_config["channel_mult"]],
        "down_block_types": ["CrossAttnDownBlock2D"] * levels, "up_block_types": ["CrossAttnUpBlock2D"] * levels,
        "cross_attention_dim": unet_config["context_dim"], "attention_head_dim": unet_config["num_heads"],
        "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5,
        "use_linear_projection": False, "center_input_sample": False, "act_fn": "silu",
        "mid_block_scale_factor": 1, "downsample_padding": 1,
    }


class Ours:
    """This pack in ComfyUI: the tiny checkpoint, inflated with random temporal weights."""

    def __init__(self, seed: int = 0):
        from tav_core.testing.comfy_inprocess import bootstrap_comfyui, load_comfy_with_pack, pack_core

        bootstrap_comfyui()
        import comfy.cli_args

        comfy.cli_args.args.fp32_text_enc = True  # see the docstring
        load_comfy_with_pack()
        import comfy.sd
        from tav_core.testing.checkpoints import cached_sd15_checkpoint

        self.core = pack_core("inflate", "sampling", "tuned", "weights")
        try:
            parts = pack_core("attention_edit", "attention_control")
            self.edit, self.control = parts.attention_edit, parts.attention_control
        except ImportError:
            self.edit = self.control = None
        self.checkpoint = cached_sd15_checkpoint(size="tiny")
        with torch.inference_mode():  # as ComfyUI's loader node runs
            base, self.clip, _, _ = comfy.sd.load_checkpoint_guess_config(
                str(self.checkpoint), output_vae=False, output_clip=True)
        self.base = base
        self.seed = seed

    def temporal_file(self, path: Path) -> Path:
        """Random temporal weights (PyTorch-default init, output projections included), official names."""
        import copy

        from safetensors.torch import save_file
        from tav_core.testing.checkpoints import initialised_weights

        inflate, weights, tuned = self.core.inflate, self.core.weights, self.core.tuned
        inflated = inflate.inflate(self.base)
        layers = copy.deepcopy(inflate.temporal_layers(inflated))
        state = initialised_weights(layers, torch.Generator().manual_seed(1000 + self.seed))
        to_official = {o: official for official, o in
                       weights.official_to_comfy(self.base.model.model_config.unet_config).items()}
        save_file({to_official[tuned.UNET_PREFIX + k]: v for k, v in state.items()}, str(path))
        return path

    def load(self, temporal: Path):
        self.model = self.core.weights.load_tuned(self.base, temporal)
        return self.model

    def export(self, folder: Path) -> None:
        """The inflated model's effective weights as a diffusers folder for the official side."""
        tuned, weights = self.core.tuned, self.core.weights
        unet_config = self.model.model.model_config.unet_config
        to_official = {o: official for official, o in weights.official_to_comfy(unet_config).items()}
        names = tuned.every_name(self.model)
        missing = [n for n in names if n not in to_official]
        if missing:
            raise RuntimeError(f"no official name for {missing[:5]}")
        values = tuned.effective_weights(self.model, names)
        (folder / "unet").mkdir(parents=True, exist_ok=True)
        torch.save({to_official[n]: v.detach().to(torch.float32).cpu().contiguous() for n, v in values.items()},
                   folder / "unet" / "diffusion_pytorch_model.bin")
        (folder / "unet" / "config.json").write_text(json.dumps(tiny_diffusers_unet_config(unet_config), indent=1))

        from safetensors import safe_open
        prefix = "cond_stage_model.transformer."
        with safe_open(str(self.checkpoint), "pt") as f:
            text = {k[len(prefix):]: f.get_tensor(k).to(torch.float32) for k in f.keys() if k.startswith(prefix)}
        (folder / "text_encoder").mkdir(exist_ok=True)
        torch.save(text, folder / "text_encoder" / "pytorch_model.bin")
        shutil.copy(self.comfy_dir() / "comfy" / "sd1_clip_config.json", folder / "text_encoder" / "config.json")

    @staticmethod
    def comfy_dir() -> Path:
        from tav_core.testing.server import comfyui_dir
        return Path(comfyui_dir())

    # The tiny UNet's cross-attention layers in the order Video-P2P's store lists them (block, the
    # map's side as a fraction of the latent's): down levels 0 and 1, the mid block, up level 0 (the
    # coarse one, two transformers) and up level 1.
    SYNTHETIC_LAYERS = ((("input", 1), 1), (("input", 4), 2), (("middle", 0), 2), (("output", 3), 2),
                        (("output", 4), 2), (("output", 6), 1), (("output", 7), 1))

    def synthetic_blend_inputs(self, path: Path, spec: dict) -> None:
        """Given attention maps for a check of local blend with a mask that selects a region.

        On random weights the blend words' maps are nearly flat and every pixel clears LocalBlend's
        threshold: the end-to-end blend cases run with an all-ones mask. Here q and k are made so
        that the blend word's maps peak on a blob per frame (elsewhere at another place per layer
        resolution, so a wrong choice of maps gives another mask). Both sides get the same maps."""
        frames, heads, d, steps = spec["frames"], 8, 40, spec["steps"]
        latent = spec["size"] // 8
        pair = self.edit.tokenize_pair(self.clip, SOURCE, EDITED["replace"])
        plan = self.edit.plan_edit(self.clip, pair, steps, CROSS, SELF, "replace", (), ("rabbit", "cat"))
        word = int(plan.blend_tokens[0].nonzero()[0])
        g = torch.Generator().manual_seed(11)
        inputs, maps = [], []
        for step in range(steps):
            step_inputs, step_maps = [], []
            for layer, (block, div) in enumerate(self.SYNTHETIC_LAYERS):
                side = latent // div
                ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
                centres = torch.rand(frames, 2, generator=torch.Generator().manual_seed(100 * div)) * side
                blob = torch.exp(-((ys - centres[:, :1, None]) ** 2 + (xs - centres[:, 1:, None]) ** 2)
                                 / (0.15 * side**2)).reshape(frames, side * side)
                k = torch.randn(4 * frames, 77, heads * d, generator=g)
                q = torch.randn(4 * frames, side * side, heads * d, generator=g)
                rows = blob.repeat(4, 1)[:, :, None]  # every video and CFG half: the same blob per frame
                q = q + 6.0 * rows * k[:, word:word + 1] / d**0.5 * 4
                v = torch.randn(4 * frames, 77, heads * d, generator=g)
                step_inputs.append((q, k, v, block, (side, side)))
                qh = q.reshape(4 * frames, -1, heads, d).transpose(1, 2)
                kh = k.reshape(4 * frames, 77, heads, d).transpose(1, 2)
                attention = torch.softmax(qh @ kh.transpose(-1, -2) * d**-0.5, dim=-1)
                step_maps.append(attention.reshape(4 * frames * heads, side * side, 77))
            inputs.append(step_inputs)
            maps.append(step_maps)
        x = torch.randn(steps, 2, 4, frames, latent, latent, generator=g)
        places = {"input": "down", "middle": "mid", "output": "up"}
        torch.save({"prompts": [SOURCE, EDITED["replace"]], "blend": ["rabbit", "cat"], "cross": CROSS,
                    "self": SELF, "maps": maps, "places": [places[b[0]] for (b, _) in self.SYNTHETIC_LAYERS],
                    "x": x}, path)
        self.synthetic = {"inputs": inputs, "x": x, "plan": plan}

    def synthetic_blend_ours(self, spec: dict) -> dict:
        """Our controller on the same q, k, v: cross_attention per layer, then end_step per step."""
        frames, steps = spec["frames"], spec["steps"]
        sigmas = self.core.sampling.ddim_levels(self.model, steps)
        control = self.control.AttentionController(self.synthetic["plan"], sigmas, frames,
                                                   self.edit._default_attention)
        blended, masks = [], []
        for step, layers in enumerate(self.synthetic["inputs"]):
            for q, k, v, block, shape in layers:
                options = {"sigmas": sigmas[step:step + 1], "n_heads": 8, "block": block, "cond_or_uncond": [1, 0],
                           "activations_shape": (4 * frames, 320, *shape), "block_index": 0}
                control.cross_attention(q, k, v, options)
            x = self.synthetic["x"][step]  # official [2, 4, F, h, w] -> our rows [2F, 4, h, w]
            rows = x.permute(0, 2, 1, 3, 4).reshape(2 * frames, *x.shape[1:2], *x.shape[3:])
            out = control.end_step(step, rows)
            blended.append(out.reshape(2, frames, *out.shape[1:]).permute(0, 2, 1, 3, 4))
            masks.append(control.last_mask)
        return {"x": torch.stack(blended), "masks": masks}

    def encode(self, text: str):
        with torch.inference_mode():
            return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def to_official(self, raw: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """Raw LATENT [F, 4, h, w] at level sigma -> the official x [1, 4, F, h, w] (DDIM's sqrt(a) scaling)."""
        x = self.model.model.process_latent_in(raw.to(torch.float32)) / math.sqrt(1 + sigma**2)
        return x.permute(1, 0, 2, 3).unsqueeze(0).contiguous()

    def from_official(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.model.process_latent_out(x[0].permute(1, 0, 2, 3).contiguous())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to(torch.float64).cpu(), b.detach().to(torch.float64).cpu()
    return float((a - b).norm() / b.norm())


def run_official(args, spec: dict, tag: str) -> dict:
    path = Path(spec["folder"]) / f"spec-{tag}.json"
    path.write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([args.official_python, str(HERE / "videop2p_official.py"), str(path)],
                          capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT:")]
    if proc.returncode or not lines:
        raise RuntimeError(f"official run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT:"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-python")
    parser.add_argument("--videop2p", type=Path)
    parser.add_argument("--showlab", type=Path)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=1e-5)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--official-runs", type=int, default=2, help="official repeats (bitwise reproducibility)")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--ratio-seeds", type=int, default=0,
                        help="also run the official null-text vs plain reconstruction for this many more latent seeds")
    parser.add_argument("--reuse", type=Path, help="a results/videop2p-* folder: compare ours against its official run")
    args = parser.parse_args()
    torch.set_num_threads(1)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    ours = Ours()
    if args.reuse:  # the shared folder and official outputs of an earlier run: ours only
        share = args.reuse.resolve()
        ours.load(share / "temporal.safetensors")
        spec = json.loads((share / "spec-0.json").read_text())
        official = [json.loads(p.read_text()) for p in sorted(share.glob("official-[0-9]*.json"))]
    else:
        share = RESULTS / f"videop2p-{stamp}"
        share.mkdir()
        ours.load(ours.temporal_file(share / "temporal.safetensors"))
        ours.export(share)
        latent_size = args.size // 8
        g = torch.Generator().manual_seed(3)
        x0 = torch.randn(1, 4, args.frames, latent_size, latent_size, generator=g)  # the UNet's space
        torch.save(x0, share / "latent.pt")
        # The tiny UNet has two levels, so its down and up maps are at latent/1 and latent/2.
        # LocalBlend's SD1.5 rule (the down and up maps at latent/4, the lowest resolution of the
        # down/up path that 512 px reaches with 16x16 maps) is, in the tiny model, every down/up
        # cross-attention at latent/2: down level 1 (one transformer) and up level 0 (two), i.e.
        # down_cross[1:2] and up_cross[0:2] of Video-P2P's attention store.
        spec = {"videop2p": str(args.videop2p), "showlab": str(args.showlab), "folder": str(share),
                "tokenizer": str(ours.comfy_dir() / "comfy" / "sd1_tokenizer"), "frames": args.frames,
                "size": args.size, "steps": args.steps, "inner_steps": args.inner_steps,
                "epsilon": args.epsilon, "cfg": args.cfg, "threads": 1, "source": SOURCE,
                "mask_th": list(MASK_TH), "blend_down": [1, 2], "blend_up": [0, 2], "blend_res": latent_size // 2,
                "cases": [{"name": n, "prompts": [SOURCE, c[0]], "is_word_swap": c[1], "cross": CROSS, "self": SELF,
                           "blend": list(c[5]) if c[5] else None, "eq": c[2]} for n, c in CASES.items()]}
        spec["cases"] += [dict(case, name=case["name"] + "_fast", fast=True)
                          for case in spec["cases"] if case["name"] in FAST_CASES]
        ours.synthetic_blend_inputs(share / "synthetic_blend.pt", spec)
        official = []
        for run in range(args.official_runs):
            spec["out"] = str(share / f"official-{run}.pt")
            official.append(run_official(args, spec, str(run)))
            (share / f"official-{run}.json").write_text(json.dumps(official[-1]))
    tensors = [torch.load(p) for p in sorted(share.glob("official-[0-9]*.pt"))]
    reference = tensors[0]
    latent_raw = ours.from_official(reference["latent"])
    flat = [_flatten(t) for t in tensors]
    repeat = {k: rel(flat[-1][k], v) if v.is_floating_point() else None for k, v in flat[0].items()}
    bitwise = {k: bool(torch.equal(flat[-1][k], v)) for k, v in flat[0].items()}

    ratios = official_ratio_spread(args, spec, share) if args.ratio_seeds else None
    report = {"date": stamp, "machine": machine.capability(), "spec": spec, "official": official,
              "official_repeat_rel": repeat,
              "official_repeat_bitwise": bitwise, "official_runs": len(tensors),
              "official_ratio_spread": ratios}
    report["rows"] = compare_ours(ours, reference, latent_raw, spec)
    (RESULTS / f"videop2p-{stamp}.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / f"videop2p-{stamp}.md").write_text(markdown(report))
    print(json.dumps({"official": official[0], "repeat": repeat, "rows": report["rows"]}, indent=1, default=str))


def markdown(report: dict) -> str:
    spec, official = report["spec"], report["official"][0]
    lines = [f"# Video-P2P side by side, {report['date']}", "",
             f"Machine: {machine.describe(report['machine'])}. {spec['frames']} frames at {spec['size']} px, "
             f"{spec['steps']} steps, {spec['inner_steps']} inner steps, CFG {spec['cfg']}, one thread per side.",
             f"Official repeated {report['official_runs']}x: bitwise identical: "
             f"{all(report['official_repeat_bitwise'].values())}.",
             "Official reconstruction error (relative to the clip's latent): "
             f"{json.dumps(official['reconstruction_error'])}; "
             f"null-text / plain = {official['null_vs_plain']:.3f}.", ""]
    if report.get("official_ratio_spread"):
        lines += ["More latents (official): " + ", ".join(f"seed {r['latent_seed']}: {r['null_vs_plain']:.3f}"
                                                      for r in report["official_ratio_spread"]), ""]
    lines += ["| quantity | ours vs official (relative) | note |", "|---|---|---|"]
    for row in report["rows"] or []:
        value = "—" if row["rel"] is None else f"{row['rel']:.2e}"
        lines.append(f"| {row['what']} | {value} | {row['note']} |")
    return "\n".join(lines) + "\n"


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[prefix + key] = value
    return out


def official_ratio_spread(args, spec, share: Path) -> list[dict]:
    """The official reconstruction errors (null-text and plain DDIM inversion) for more clip latents."""
    out = []
    for seed in range(4, 4 + args.ratio_seeds):
        x0 = torch.randn(1, 4, spec["frames"], spec["size"] // 8, spec["size"] // 8,
                         generator=torch.Generator().manual_seed(seed))
        torch.save(x0, share / f"latent-{seed}.pt")
        run = dict(spec, latent=f"latent-{seed}.pt", cases=[], synthetic_blend=False,
                   out=str(share / f"official-ratio-{seed}.pt"))
        result = run_official(args, run, f"ratio-{seed}")
        out.append({"latent_seed": seed, **result["reconstruction_error"], "null_vs_plain": result["null_vs_plain"]})
    return out


def compare_ours(ours: Ours, ref: dict, latent_raw: torch.Tensor, spec: dict) -> list[dict]:
    """Our side on the same inputs; one row per compared quantity (relative difference to the official)."""
    from tav_core.testing.comfy_inprocess import pack_core

    null_text = pack_core("null_text").null_text
    sampling = ours.core.sampling
    model, steps, cfg = ours.model, spec["steps"], spec["cfg"]
    rows = []

    def row(what, mine, theirs, note=""):
        rows.append({"what": what, "rel": rel(mine, theirs), "note": note})

    positive, negative = ours.encode(spec["source"]), ours.encode("")
    row("text embedding, source prompt", positive[0][0], ref["context"][1:])
    row("text embedding, empty prompt", negative[0][0], ref["context"][:1])
    sigma_t = float(sampling.ddim_levels(model, steps)[0])

    t0 = time.perf_counter()
    inverted, nt = null_text.null_text_invert(model, latent_raw, positive, negative, steps, cfg,
                                              spec["inner_steps"], spec["epsilon"], callback=_quiet)
    seconds = time.perf_counter() - t0
    plain = sampling.ddim_invert(model, latent_raw, positive, steps, callback=_quiet)
    row("DDIM inversion under the source prompt (x_T)", ours.to_official(plain, sigma_t), ref["x_t"])
    row("null-text inversion's inverted latent (x_T)", ours.to_official(inverted, sigma_t), ref["x_t"])
    for i in range(steps):
        row(f"null-text embedding, step {i}", nt.uncond[i], ref["uncond"][i],
            f"loss per inner step {', '.join(f'{l:.4e}' for l in nt.losses[i])}")
    row("null-text embeddings, all steps", nt.uncond, ref["uncond"], f"ours {seconds:.1f} s")

    def sample(null, pos, neg, start, cfg_):
        m, c = null_text.for_sampling(model, null, steps, cfg_) if null is not None else (model, cfg_)
        out = sampling.ddim_sample(m, pos, neg, start, steps, c, 0.0, 0, True, callback=_quiet)
        return ours.to_official(out)

    rec = sample(nt, positive, negative, inverted, cfg)
    row("reconstruction, null-text (final latent)", rec, ref["rec_nulltext"][-1])
    rec_plain = sample(None, positive, negative, plain, cfg)
    row("reconstruction, plain DDIM inversion (final latent)", rec_plain, ref["rec_plain"][-1])
    inverted_fast, nt_fast = null_text.null_text_invert(model, latent_raw, positive, negative, steps, cfg,
                                                        spec["inner_steps"], spec["epsilon"], fast=True,
                                                        callback=_quiet)
    rec_fast = sample(nt_fast, positive, negative, inverted_fast, cfg)
    row("reconstruction, fast mode (final latent)", rec_fast, ref["rec_fast"][-1])
    x0 = ref["latent"]
    errors = {k: rel(v, x0) for k, v in (("null-text", rec), ("plain", rec_plain), ("fast", rec_fast))}
    rows.append({"what": "reconstruction error ours: null-text / plain", "rel": errors["null-text"] / errors["plain"],
                 "note": json.dumps(errors)})
    rows.extend(official_effects(ref))
    rows.extend(compare_synthetic_blend(ours, ref, spec))
    rows.extend(compare_edits(ours, ref, spec, inverted, nt, inverted_fast, nt_fast))
    return rows


def compare_edits(ours, ref, spec, inverted, nt, inverted_fast, nt_fast) -> list[dict]:
    from tav_core.testing.comfy_inprocess import pack_core

    try:
        edit = pack_core("attention_edit").attention_edit
    except ImportError as e:
        return [{"what": "controllers", "rel": None, "note": f"tav_core.attention_edit not available ({e})"}]
    null_text, sampling = pack_core("null_text").null_text, ours.core.sampling
    model, steps, frames = ours.model, spec["steps"], spec["frames"]
    sigmas = sampling.ddim_levels(model, steps)
    rows = []
    for case in spec["cases"]:
        name = case["name"]
        fast = bool(case.get("fast"))
        edited_prompt, _, _, controller, reweight, blend = CASES[name.removesuffix("_fast")]
        start, null = (inverted_fast, nt_fast) if fast else (inverted, nt)
        latent = {"samples": start, sampling.INVERSION_KEY: sampling.inversion_marker(model, steps, start),
                  null_text.NULL_TEXT_KEY: null}
        trace = []

        def record(step, x0, x, total):
            # x: the model-space x at level `step` before that step; DDIM's x is x / sqrt(1 + sigma^2).
            trace.append(x.detach().clone() / math.sqrt(1 + float(sigmas[step]) ** 2))

        # The latent carries the null text (or the fast-mode entry): edit_sample gives the source
        # video's uncond rows the per-step embeddings, or samples the source unguided, as Video-P2P.
        t0 = time.perf_counter()
        try:
            edited, source, run = edit.edit_sample(model, ours.clip, spec["source"], edited_prompt, latent, steps,
                                                   spec["cfg"], case["cross"], case["self"], controller, reweight,
                                                   blend, blend_threshold=spec["mask_th"][0], callback=record)
        except Exception as e:  # report the failure and go on with the other cases
            rows.append({"what": f"{name}: edit_sample", "rel": None, "note": f"{type(e).__name__}: {e}"})
            continue
        seconds = time.perf_counter() - t0
        theirs = ref["edit_" + name]  # [steps, 2, 4, F, h, w]: after each step (and local blend)
        rows.append({"what": f"{name}: edited video, final latent",
                     "rel": rel(ours.to_official(edited), theirs[-1][1:]), "note": f"ours {seconds:.1f} s"})
        rows.append({"what": f"{name}: source video, final latent",
                     "rel": rel(ours.to_official(source), theirs[-1][:1]), "note": ""})
        per_step = []
        for i, x in enumerate(trace[1:]):  # our x before step i+1 = the official result of step i
            pair = torch.stack([x[:frames], x[frames:]]).permute(0, 2, 1, 3, 4)
            per_step.append(f"{rel(pair[1:], theirs[i][1:]):.1e}")
        rows[-2]["note"] += f"; edited per step {' '.join(per_step)} (last: final)"
        plan = getattr(run, "plan", None)
        for key, official_key in (("replace_mapper", "mapper_"), ("refine_mapper", "mapper_"),
                                  ("refine_alphas", "alphas_"), ("equalizer", "equalizer_")):
            mine = getattr(plan, key, None)
            theirs_t = ref.get(official_key + name)
            if mine is not None and theirs_t is not None:
                mine, theirs_t = mine.to(theirs_t.dtype).flatten(), theirs_t.flatten()
                note = ""
                if key == "refine_mapper":  # an unaligned token (alpha 0) copies nothing: its entry is unused
                    used = plan.refine_alphas.flatten() > 0
                    note = f"compared where alpha is 1; unused entries ours {mine[~used].tolist()}, " \
                           f"official {theirs_t[~used].tolist()}"
                    mine, theirs_t = mine[used], theirs_t[used]
                equal = torch.equal(mine, theirs_t)
                rows.append({"what": f"{name}: {key}", "rel": 0.0 if equal else 1.0,
                             "note": ("equal" if equal else "DIFFERENT") + (f" ({note})" if note else "")})
    return rows


def official_effects(ref) -> list[dict]:
    """How much each control changes the official result: the scale the agreement is to be read against."""
    final = {k[len("edit_"):]: v[-1] for k, v in ref.items() if k.startswith("edit_")}
    pairs = (("edited vs source video, replace", final["replace"][1], final["replace"][0]),
             ("edited vs source video, refine", final["refine"][1], final["refine"][0]),
             ("refine + reweight vs refine, edited", final["refine_reweight"][1], final["refine"][1]),
             ("reweight vs source video", final["reweight"][1], final["reweight"][0]),
             ("replace with vs without local blend, edited", final["replace_blend"][1], final["replace"][1]),
             ("refine with vs without local blend, edited", final["refine_blend"][1], final["refine"][1]),
             ("replace, fast vs null-text, edited", final["replace_fast"][1], final["replace"][1]))
    return [{"what": f"official effect: {what}", "rel": rel(a, b), "note": "official vs official"}
            for what, a, b in pairs]


def compare_synthetic_blend(ours, ref, spec) -> list[dict]:
    if "synthetic_blend" not in ref or ours.edit is None:
        return [{"what": "local blend, given maps", "rel": None, "note": "not run"}]
    if not hasattr(ours, "synthetic"):
        ours.synthetic_blend_inputs(Path(spec["folder"]) / "synthetic_blend.pt.check", spec)
    mine, theirs = ours.synthetic_blend_ours(spec), ref["synthetic_blend"]
    rows = []
    for step in range(spec["steps"]):
        mask = mine["masks"][step]
        coverage = "no mask yet" if mask is None else f"mask covers {float(mask.float().mean()):.2f} of the pixels"
        moved = rel(theirs["x"][step][1], ours.synthetic["x"][step][1])
        rows.append({"what": f"local blend, given maps: blended x after step {step}",
                     "rel": rel(mine["x"][step], theirs["x"][step]),
                     "note": f"{coverage}; the official blend moved the edited x by {moved:.2f} (relative)"})
    return rows


def _quiet(*args):
    """A sampler callback that draws no progress bar (ComfyUI's default one prints)."""


if __name__ == "__main__":
    main()
