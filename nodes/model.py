"""Inflate Model: the image UNet becomes a Tune-A-Video UNet, on a clone."""
from comfy_api.latest import io

from ..tav_core import inflate

PREFIX = "Inflate Model (Tune-A-Video): "


class InflateModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVInflateModel",
            display_name="Inflate Model",
            category="Tune-A-Video",
            description="Turns an image UNet (SD1.x, SD2.x, SDXL) into Tune-A-Video's video UNet on a "
                        "clone: sparse-causal self-attention (frame i attends to frames 0 and i-1), a new "
                        "temporal attention after every feed-forward, which starts at zero so the model "
                        "starts as the image model, and video-wide GroupNorm in the ResNet blocks. "
                        "The input model is never changed; inflating twice is a no-op.",
            inputs=[
                io.Model.Input("model", tooltip="The image model to inflate (LoRA and other patches carry over)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the new temporal layers' initial weights."),
                io.Boolean.Input("video_wide_groupnorm", default=True,
                                 tooltip="On (as the official 3D UNet): ResNet GroupNorm statistics are pooled "
                                         "over all frames of a video. Off: each frame is normalised on its own."),
            ],
            outputs=[io.Model.Output(tooltip="The inflated model, ready for One-Shot Tune or sampling.")],
        )

    @classmethod
    def execute(cls, model, seed, video_wide_groupnorm) -> io.NodeOutput:
        try:
            return io.NodeOutput(inflate.inflate(model, seed=seed, video_norm=video_wide_groupnorm))
        except inflate.InflateError as e:
            raise ValueError(PREFIX + str(e)) from e


NODES = [InflateModel]
