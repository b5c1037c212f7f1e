"""One-Shot Tune through a real server: progress with the loss, interrupts, and recovery."""
import pytest

from tav_core.testing.server import PromptFailed, PromptRejected

SERVER_CLIP = "clip.mp4"


def tune_prompt(checkpoint: str, steps: int, checkpoint_blocks: str = "all blocks") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "TAVLoadVideo", "inputs": {"video": SERVER_CLIP, "frame_count": 4, "start_frame": 0,
                                                       "frame_stride": 2, "width": 64, "height": 64,
                                                       "resize_mode": "center crop"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a ball is rolling", "clip": ["1", 1]}},
        "5": {"class_type": "TAVOneShotTune", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "latent": ["3", 0], "steps": steps, "learning_rate": 1e-3,
            "seed": 0, "trainable": "paper (attn1.to_q, attn2.to_q, attn_temp)", "gradient_checkpointing": True,
            "checkpoint_blocks": checkpoint_blocks,
            "precision": "auto", "optimizer": "AdamW", "cache": False}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }


def test_tune_reports_progress_and_loss(server, tiny_checkpoint):
    messages = []
    history = server.run(tune_prompt(tiny_checkpoint.name, 3), timeout=300,
                         on_message=lambda kind, data: messages.append((kind, data)))
    progress = [d for k, d in messages if k == "progress" and d.get("node") == "5"]
    assert [p["value"] for p in progress][-1] == 3 and progress[-1]["max"] == 3
    losses = [d for k, d in messages if k == "tuneavideo.loss"]
    assert [d["step"] for d in losses] == [1, 2, 3] and all(d["loss"] > 0 for d in losses)
    assert history["outputs"]["6"]["images"], "the loss curve was not previewed"


def test_interrupt_mid_tune_then_a_new_prompt_runs(server, tiny_checkpoint):
    interrupted = []

    def interrupt_on_first_step(kind, data):
        if kind == "tuneavideo.loss" and not interrupted:
            interrupted.append(data["step"])
            server.interrupt()

    with pytest.raises(InterruptedError):
        server.run(tune_prompt(tiny_checkpoint.name, 500), timeout=300, on_message=interrupt_on_first_step)
    assert interrupted and interrupted[0] < 500
    history = server.run(tune_prompt(tiny_checkpoint.name, 2), timeout=300)
    assert history["status"]["status_str"] == "success"


def test_tune_checkpointing_only_the_highest_resolution_blocks(server, tiny_checkpoint):
    losses = []
    history = server.run(tune_prompt(tiny_checkpoint.name, 2, "highest-resolution blocks"), timeout=300,
                         on_message=lambda kind, data: losses.append(data) if kind == "tuneavideo.loss" else None)
    assert history["status"]["status_str"] == "success"
    assert [d["step"] for d in losses] == [1, 2] and all(d["loss"] > 0 for d in losses)


def test_unknown_checkpoint_blocks_gets_a_clear_error(server, tiny_checkpoint):
    # ComfyUI 0.3.75 does not check V3 combo values when queueing, and the node names the bad input;
    # newer ComfyUIs refuse the prompt with a 400 that names it.
    with pytest.raises((PromptFailed, PromptRejected)) as error:
        server.run(tune_prompt(tiny_checkpoint.name, 2, "every other block"), timeout=300)
    if isinstance(error.value, PromptRejected):
        assert error.value.status == 400
        assert error.value.input_errors("5") == {"checkpoint_blocks": "every other block"}
    else:
        assert "unknown checkpoint_blocks 'every other block'" in str(error.value)
    assert server.run(tune_prompt(tiny_checkpoint.name, 1), timeout=300)["status"]["status_str"] == "success"
