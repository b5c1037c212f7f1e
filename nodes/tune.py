"""One-Shot Tune: tune the inflated model on the clip with its source prompt."""
import os

import folder_paths
import torch
from comfy.utils import ProgressBar
from comfy_api.latest import io, ui

from ..tav_core import checkpointing, inflate, plot, tuning

PREFIX = "One-Shot Tune (Tune-A-Video): "
LOSS_EVENT = "tuneavideo.loss"  # web/js draws the live loss curve from these messages


def _send_loss(node_id, step, steps, loss):
    from server import PromptServer  # only inside a running ComfyUI server

    server = PromptServer.instance
    if server is not None and node_id is not None:
        server.send_sync(LOSS_EVENT, {"node": node_id, "step": step, "steps": steps, "loss": loss},
                         server.client_id)


class OneShotTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        defaults = tuning.TuneSettings()
        return io.Schema(
            node_id="TAVOneShotTune",
            display_name="One-Shot Tune",
            category="Tune-A-Video",
            description="Tunes the inflated model on one clip with its source prompt (Tune-A-Video, "
                        "Sec. 3.3): only the query projections and the temporal attention learn, with the "
                        "denoising loss on the clip's latents. Returns a tuned clone (the input model is "
                        "unchanged) and the loss curve.",
            inputs=[
                io.Model.Input("model", tooltip="The model to tune; inflated here if it is not yet."),
                io.Conditioning.Input("positive", tooltip="The clip's source prompt, e.g. \"a man is skiing\"."),
                io.Latent.Input("latent", tooltip="The clip's latents [frames, 4, h, w] from VAE Encode."),
                io.Int.Input("steps", default=defaults.steps, min=1, max=100000,
                             tooltip="Optimiser steps; the paper uses 500."),
                io.Float.Input("learning_rate", default=defaults.learning_rate, min=1e-7, max=1e-1,
                               step=1e-6, round=False, tooltip="AdamW learning rate; the paper uses 3e-5."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the training noise and timesteps: the same seed on the same "
                                     "device gives the same tuned weights."),
                io.Combo.Input("trainable", options=list(tuning.PRESETS), default=defaults.trainable,
                               tooltip="What learns. The paper: attn1.to_q, attn2.to_q and the whole temporal "
                                       "attention. The LoRA variant learns low-rank changes, for small files."),
                io.Boolean.Input("gradient_checkpointing", default=defaults.gradient_checkpointing,
                                 tooltip="Recompute activations in the backward pass: much less memory, about "
                                         "a third more time. Every chosen tensor still trains."),
                io.Combo.Input("checkpoint_blocks", options=list(checkpointing.SCOPES),
                               default=defaults.checkpoint_blocks,
                               tooltip="With gradient_checkpointing on, which blocks recompute. All blocks: "
                                       "the least memory. Highest-resolution blocks: only the first level, "
                                       "which holds most of the activations; faster, for a little more memory."),
                io.Combo.Input("precision", options=list(tuning.PRECISIONS), default=defaults.precision,
                               tooltip="Compute precision of training; the trained copies and the optimiser state "
                                       "stay fp32 whatever the model's dtype. auto: bf16 autocast on GPUs "
                                       "that support it and on CPUs where bf16 measures at least 1.5x as fast as fp32 "
                                       "(AMX, some AVX512-BF16), else fp32. "
                                       "fp16 uses a gradient scaler."),
                io.Combo.Input("optimizer", options=list(tuning.OPTIMIZERS), default=defaults.optimizer,
                               tooltip="AdamW as the official code (betas 0.9/0.999, weight decay 1e-2); "
                                       "AdamW 8-bit needs bitsandbytes."),
                io.Boolean.Input("cache", default=False,
                                 tooltip="Keep the tuned weights on disk (models/tuneavideo_cache), keyed by "
                                         "model, latents, prompt and settings: re-running skips the tuning."),
                # Optional, so that API prompts written before this input existed still queue.
                io.Int.Input("window_frames", default=defaults.window_frames, min=0, max=4096, optional=True,
                             tooltip="0: every step trains on the whole clip (the paper). Otherwise each step trains "
                                     "on a window of this many consecutive frames, drawn with the seed, plus the "
                                     "clip's frame 0 and the frame before the window (the sparse-causal anchor, as "
                                     "DDIM Invert and Video Sample use it): memory depends on the window, not on "
                                     "the clip. A window no shorter than the clip is the whole clip."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL",
                                tooltip="The tuned model, for DDIM Invert, Video Sample or Save Tuned Weights."),
                io.Image.Output("loss_curve", display_name="loss_curve", tooltip="The training loss per step."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, latent, steps, learning_rate, seed, trainable, gradient_checkpointing,
                checkpoint_blocks, precision, optimizer, cache, window_frames=0) -> io.NodeOutput:
        try:
            settings = tuning.TuneSettings(steps=steps, learning_rate=learning_rate, seed=seed, trainable=trainable,
                                           gradient_checkpointing=gradient_checkpointing,
                                           checkpoint_blocks=checkpoint_blocks, precision=precision,
                                           optimizer=optimizer, window_frames=window_frames)
        except tuning.TuneError as e:
            raise ValueError(PREFIX + str(e)) from e
        progress = ProgressBar(steps)
        node_id = cls.hidden.unique_id

        def on_step(step, total, loss):
            progress.update_absolute(step, total)
            _send_loss(node_id, step, total, loss)  # web/js/loss_curve.js draws it live

        # Not inside models/tuneavideo: Load Tuned Weights lists that folder, and cache entries are deltas.
        cache_dir = os.path.join(folder_paths.models_dir, "tuneavideo_cache") if cache else None
        try:
            result = tuning.tune(model, positive, latent, settings, on_step, cache_dir)
        except (tuning.TuneError, inflate.InflateError) as e:
            raise ValueError(PREFIX + str(e)) from e
        curve = torch.from_numpy(plot.loss_curve_image(result.losses))[None]
        return io.NodeOutput(result.model, curve, ui=ui.PreviewImage(curve, cls=cls))


NODES = [OneShotTune]
