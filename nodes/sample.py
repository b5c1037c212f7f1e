"""DDIM Invert and Video Sample: Tune-A-Video's inference, on ComfyUI's sampling machinery."""
from comfy_api.latest import io

from ..tav_core import null_text, sampling, windows

CATEGORY = "Tune-A-Video"
STEPS_TOOLTIP = ("DDIM steps (the paper: 50; timesteps 981, 961, ..., 1). DDIM Invert and Video Sample "
                 "must use the same number.")


WINDOW_INPUTS = [
    # Optional, so that API prompts written before these inputs existed still queue.
    io.Int.Input("window_frames", default=0, min=0, max=4096, optional=True,
                 tooltip="0: the whole clip in one pass (the paper). Otherwise the model runs over windows of this "
                         "many frames, and memory depends on the window, not on the clip. Every window also sees "
                         "the clip's frame 0 and the frame before it (the sparse-causal anchor); temporal attention "
                         "and the video GroupNorm work within a window."),
    io.Int.Input("window_overlap", default=4, min=0, max=4095, optional=True,
                 tooltip="Frames that neighbouring windows share; their results are blended (pyramid weights). "
                         "Must be smaller than window_frames. Ignored when window_frames is 0."),
]


def _windowed(model, window_frames, window_overlap, prefix):
    try:
        return windows.with_windows(model, window_frames, window_overlap)
    except windows.WindowError as e:
        raise ValueError(prefix + str(e)) from e


def _latent_without_marker(latent: dict, samples) -> dict:
    out = {k: v for k, v in latent.items() if k not in (sampling.INVERSION_KEY, null_text.NULL_TEXT_KEY)}
    out["samples"] = samples
    return out


def _refuse_masks(latent: dict, prefix: str) -> None:
    # A noise mask would blend the ComfyUI-space latent with raw latents mid-run; refuse it plainly.
    if "noise_mask" in latent:
        raise ValueError(prefix + "masked latents (noise_mask) are not supported; remove the mask.")


class DDIMInvert(io.ComfyNode):
    PREFIX = "DDIM Invert (Tune-A-Video): "

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVDDIMInvert",
            display_name="DDIM Invert",
            category=CATEGORY,
            description="Runs DDIM backwards from the clip's latents to noise, as the official Tune-A-Video "
                        "code does (model queried at the level being moved to, guidance 1). Video Sample "
                        "started from this latent reproduces the clip's structure under a new prompt.",
            inputs=[
                io.Model.Input("model", tooltip="The (tuned, inflated) model; the same one Video Sample uses."),
                io.Latent.Input("latent",
                                tooltip="The clip's latents, one frame per batch entry (VAE Encode of the frames)."),
                io.Conditioning.Input("conditioning",
                                      tooltip="Prompt the inversion is guided by. The paper inverts with no text: "
                                              "wire a CLIP Text Encode of the empty prompt."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip=STEPS_TOOLTIP),
                *WINDOW_INPUTS,
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT",
                                 tooltip="The inverted latent (noisy, ComfyUI's convention), marked as an inversion "
                                         "so that Video Sample starts from it without adding noise."),
                io.Noise.Output(display_name="NOISE",
                                tooltip="The inversion as a NOISE for SamplerCustomAdvanced: use it with an empty "
                                        "latent of the clip's size and BasicScheduler 'ddim_uniform' with the same "
                                        "steps."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, window_frames=0, window_overlap=4) -> io.NodeOutput:
        _refuse_masks(latent, cls.PREFIX)
        samples = latent["samples"]
        windowed = _windowed(model, window_frames, window_overlap, cls.PREFIX)
        try:
            inverted = sampling.ddim_invert(windowed, samples, conditioning, steps)
            out = _latent_without_marker(latent, inverted)
            out[sampling.INVERSION_KEY] = sampling.inversion_marker(model, steps, inverted)
            return io.NodeOutput(out, sampling.InversionNoise(model, inverted, steps))
        except (sampling.SamplingError, windows.WindowError) as e:
            raise ValueError(cls.PREFIX + str(e)) from e


class VideoSample(io.ComfyNode):
    PREFIX = "Video Sample (Tune-A-Video): "

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVVideoSample",
            display_name="Video Sample",
            category=CATEGORY,
            description="Deterministic DDIM sampling with classifier-free guidance, as the official Tune-A-Video "
                        "pipeline. From a DDIM Invert latent it samples that latent as is (steps must match the "
                        "inversion's, else an error); from a Null-Text Inversion latent it also uses its per-step "
                        "unconditional embeddings (cfg must match; fast mode samples the positive prediction only); "
                        "from any other latent it starts from seeded noise of the latent's size (text-to-video, "
                        "the paper's ablation). Ends at the DDIM schedule's final "
                        "level, as the reference does.",
            inputs=[
                io.Model.Input("model", tooltip="The tuned, inflated model."),
                io.Conditioning.Input("positive", tooltip="The edited prompt."),
                io.Conditioning.Input("negative", tooltip="Unconditional prompt (the paper: empty prompt)."),
                io.Latent.Input("latent", tooltip="DDIM Invert's or Null-Text Inversion's latent, or any latent whose "
                                                  "batch size is the frame count (e.g. an empty latent) to start "
                                                  "from noise."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip=STEPS_TOOLTIP),
                io.Float.Input("cfg", default=12.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (the paper: 12.5)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seeds the starting noise (when not from an inversion) and the eta noise."),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="DDIM stochasticity: 0 is deterministic DDIM (the paper), 1 is DDPM-like."),
                *WINDOW_INPUTS,
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The video's latents [frames, 4, h, w]; "
                                                                     "decode them with VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, seed, eta, window_frames=0,
                window_overlap=4) -> io.NodeOutput:
        _refuse_masks(latent, cls.PREFIX)
        windowed = _windowed(model, window_frames, window_overlap, cls.PREFIX)
        try:
            from_inversion = sampling.check_inversion(latent, steps)
            null = null_text.from_latent(latent, steps, model)
            if null is not None:
                if window_frames:
                    raise null_text.NullTextError("null-text embeddings are optimised over the whole clip; set "
                                                  "window_frames to 0, or invert with DDIM Invert for windows.")
                windowed, cfg = null_text.for_sampling(windowed, null, steps, cfg)
            samples = sampling.ddim_sample(windowed, positive, negative, latent["samples"], steps, cfg, eta, seed,
                                           from_inversion)
        except (sampling.SamplingError, windows.WindowError, null_text.NullTextError) as e:
            raise ValueError(cls.PREFIX + str(e)) from e
        return io.NodeOutput(_latent_without_marker(latent, samples))


NODES = [DDIMInvert, VideoSample]
