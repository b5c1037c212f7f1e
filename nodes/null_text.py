"""Null-Text Inversion: Video-P2P's inversion that lets CFG sampling reconstruct the clip."""
from comfy_api.latest import io

from ..tav_core import null_text, sampling
from .sample import CATEGORY, STEPS_TOOLTIP, _latent_without_marker, _refuse_masks


class NullTextInvert(io.ComfyNode):
    PREFIX = "Null-Text Inversion (Tune-A-Video): "

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVNullTextInvert",
            display_name="Null-Text Inversion",
            category=CATEGORY,
            description="DDIM-inverts the clip under its source prompt, then optimises the unconditional "
                        "embedding of every sampling step so that CFG sampling from the inversion retraces it "
                        "(Video-P2P's null-text inversion). Video Sample with the source prompt and the same "
                        "cfg then reconstructs the clip almost exactly; edits keep far more of it.",
            inputs=[
                io.Model.Input("model", tooltip="The (tuned, inflated) model; the same one that samples afterwards."),
                io.Latent.Input("latent",
                                tooltip="The clip's latents, one frame per batch entry (VAE Encode of the frames)."),
                io.Conditioning.Input("positive", tooltip="The SOURCE prompt, describing the clip (the one it was "
                                                          "tuned with): the inversion runs under it."),
                io.Conditioning.Input("negative", tooltip="The empty prompt (CLIP Text Encode of \"\"): its embedding "
                                                          "starts the optimisation of every step's uncond."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip=STEPS_TOOLTIP),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance the embeddings are optimised for (Video-P2P: 7.5). Video Sample "
                                       "must use the same cfg."),
                io.Int.Input("inner_steps", default=10, min=1, max=1000,
                             tooltip="Adam iterations per sampling step at most (Video-P2P: 10). Each costs about "
                                     "one forward and one backward pass of the UNet."),
                io.Float.Input("epsilon", default=1e-5, min=0.0, max=1.0, step=1e-6, round=1e-7,
                               tooltip="Early stop: a step's optimisation ends once its loss is below "
                                       "epsilon + step * 2e-5 (Video-P2P: 1e-5)."),
                io.Boolean.Input("fast", default=False,
                                 tooltip="Video-P2P's --fast: no optimisation, only the inversion under the source "
                                         "prompt; Video Sample then samples it with the positive prediction only "
                                         "(no guidance). About inner_steps times faster; often enough for a tuned "
                                         "model."),
            ],
            outputs=[
                io.Latent.Output(display_name="LATENT",
                                 tooltip="The inverted latent, marked as an inversion and carrying the per-step "
                                         "unconditional embeddings: Video Sample (same steps, same cfg) uses them "
                                         "automatically."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, positive, negative, steps, cfg, inner_steps, epsilon, fast) -> io.NodeOutput:
        _refuse_masks(latent, cls.PREFIX)
        try:
            inverted, result = null_text.null_text_invert(model, latent["samples"], positive, negative, steps, cfg,
                                                          inner_steps, epsilon, fast)
        except (null_text.NullTextError, sampling.SamplingError) as e:
            raise ValueError(cls.PREFIX + str(e)) from e
        out = _latent_without_marker(latent, inverted)
        out[sampling.INVERSION_KEY] = sampling.inversion_marker(model, steps, inverted)
        out[null_text.NULL_TEXT_KEY] = result
        return io.NodeOutput(out)


NODES = [NullTextInvert]
