"""Fault injection on a real server: a disk that fills, files changed or truncated under the server, an
interrupt in each stage. In every case the server keeps answering and the next prompt runs."""
import contextlib
import shutil
import subprocess
import uuid

import pytest

from tav_core.testing.server import PromptFailed

# CI time: fault injection into the pack's own files and caches.
pytestmark = pytest.mark.pinned_comfyui_only

SERVER_CLIP = "clip.mp4"
PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"


def full_prompt(checkpoint: str, text: str, *, video=SERVER_CLIP, cache=True, gradient_checkpointing=True,
                seed=0, steps=2) -> dict:
    """Load Video -> VAE Encode -> One-Shot Tune -> DDIM Invert -> Video Sample -> VAE Decode, tiny and short."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "TAVLoadVideo", "inputs": {"video": video, "frame_count": 4, "start_frame": 0,
                                                       "frame_stride": 2, "width": 64, "height": 64,
                                                       "resize_mode": "center crop"}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "5": {"class_type": "TAVOneShotTune", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "latent": ["3", 0], "steps": steps, "learning_rate": 1e-3,
            "seed": 0, "trainable": PAPER, "gradient_checkpointing": gradient_checkpointing,
            "checkpoint_blocks": "all blocks", "precision": "auto", "optimizer": "AdamW", "cache": cache}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "8": {"class_type": "TAVDDIMInvert", "inputs": {"model": ["5", 0], "latent": ["3", 0],
                                                        "conditioning": ["7", 0], "steps": 2}},
        "9": {"class_type": "TAVVideoSample", "inputs": {"model": ["5", 0], "positive": ["4", 0],
                                                         "negative": ["7", 0], "latent": ["8", 0], "steps": 2,
                                                         "cfg": 7.5, "seed": seed, "eta": 0.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }


_next_seed = iter(range(100, 10**6))


def assert_alive_and_working(server, checkpoint):
    """The server answers and the next prompt runs to the end (a new seed: Video Sample runs again)."""
    assert server.process.poll() is None, f"the server died (exit {server.process.returncode})"
    assert server.get("/system_stats")
    executed = []
    history = server.run(full_prompt(checkpoint.name, "after a fault", cache=False, steps=1, seed=next(_next_seed)),
                         timeout=300, on_message=lambda kind, data: executed.append(data.get("node"))
                         if kind == "executing" else None)
    assert history["status"]["status_str"] == "success" and history["outputs"]["11"]["images"]
    assert "9" in executed, "Video Sample did not run"


def tune_steps(server, prompt):
    """(history, steps tuned) of running `prompt`."""
    steps = []
    history = server.run(prompt, timeout=300,
                         on_message=lambda kind, data: steps.append(data) if kind == "tuneavideo.loss" else None)
    return history, len(steps)


def cache_entries(server):
    folder = server.base_dir / "models" / "tuneavideo_cache"
    return {p.name: p for p in folder.glob("*.safetensors")} if folder.is_dir() else {}


def test_a_cache_entry_truncated_under_the_server_does_not_kill_it(server, tiny_checkpoint):
    """Was SIGBUS (exit 135): the tuned model kept memory-mapped cache tensors."""
    text = f"a ball is rolling {uuid.uuid4().hex}"
    before = set(cache_entries(server))
    assert tune_steps(server, full_prompt(tiny_checkpoint.name, text))[1] == 2
    (new,) = set(cache_entries(server)) - before
    # Another checkpointing setting re-runs the tune node, which now hits the cache.
    assert tune_steps(server, full_prompt(tiny_checkpoint.name, text, gradient_checkpointing=False))[1] == 0
    with open(cache_entries(server)[new], "r+b") as f:
        f.truncate(0)
    server.post("/free", {"unload_models": True})  # the next load patches the weights from the deltas again
    # A new sampling seed re-runs Video Sample on the cached tuned model (its deltas came from the entry).
    history, tuned = tune_steps(server, full_prompt(tiny_checkpoint.name, text, gradient_checkpointing=False,
                                                    seed=1))
    assert tuned == 0 and history["status"]["status_str"] == "success"
    assert_alive_and_working(server, tiny_checkpoint)


@contextlib.contextmanager
def full_disk(folder):
    """`folder` on a tiny filesystem that is full (a tmpfs: root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the full disk is covered by tests/comfy only")
    try:
        with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until the disk is full
                f.write(b"\0" * 4096)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def cache_folder_is_a_file(folder):
    shutil.rmtree(folder, ignore_errors=True)
    folder.write_text("a file where the cache folder should be")
    try:
        yield
    finally:
        folder.unlink()


@pytest.mark.parametrize("fault", [full_disk, cache_folder_is_a_file], ids=["disk full", "folder is a file"])
def test_a_failed_cache_write_keeps_the_finished_tune(server, tiny_checkpoint, fault):
    folder = server.base_dir / "models" / "tuneavideo_cache"
    log_start = len(server.log_path.read_text(errors="replace"))
    with fault(folder):
        history, tuned = tune_steps(server, full_prompt(tiny_checkpoint.name, f"a ball {uuid.uuid4().hex}"))
    assert tuned == 2 and history["status"]["status_str"] == "success"
    assert history["outputs"]["11"]["images"], "the finished tune was thrown away"
    assert "could not store the tuned weights" in server.log_path.read_text(errors="replace")[log_start:]
    assert_alive_and_working(server, tiny_checkpoint)


@pytest.mark.parametrize("change", ["garbage", "truncated", "playlist", "deleted"])
def test_a_clip_changed_under_the_server_gets_a_clear_error(server, tiny_checkpoint, change):
    name = f"changing-{change}.mp4"
    clip = server.base_dir / "input" / name
    shutil.copy(server.base_dir / "input" / SERVER_CLIP, clip)
    prompt = full_prompt(tiny_checkpoint.name, f"a ball {change}", video=name, cache=False, steps=1)
    assert server.run(prompt, timeout=300)["status"]["status_str"] == "success"
    if change == "garbage":
        clip.write_bytes(b"\0" * 4096)
    elif change == "truncated":
        with open(clip, "r+b") as f:
            f.truncate(clip.stat().st_size // 3)
    elif change == "playlist":
        clip.write_text(f"#EXTM3U\n#EXTINF:10,\n{server.base_dir / 'input' / SERVER_CLIP}\n#EXT-X-ENDLIST\n")
    else:
        clip.unlink()
    with pytest.raises((PromptFailed, RuntimeError)) as error:
        server.run(prompt, timeout=300)
    assert "Load Video (Tune-A-Video)" in str(error.value)
    assert str(server.base_dir) not in str(error.value)
    assert_alive_and_working(server, tiny_checkpoint)


@pytest.mark.parametrize("stage, node", [("tune", "5"), ("invert", "8"), ("sample", "9")])
def test_an_interrupt_in_each_stage_leaves_the_server_working(server, tiny_checkpoint, stage, node):
    interrupted = []

    def interrupt_inside(kind, data):
        if kind == "progress" and data.get("node") == node and not interrupted:
            interrupted.append(data["value"])
            server.interrupt()

    prompt = full_prompt(tiny_checkpoint.name, f"interrupted in {stage} {uuid.uuid4().hex}", cache=False, steps=3)
    prompt["8"]["inputs"]["steps"] = prompt["9"]["inputs"]["steps"] = 3
    with pytest.raises(InterruptedError):
        server.run(prompt, timeout=300, on_message=interrupt_inside)
    assert interrupted, f"the {stage} stage reported no progress to interrupt on"
    assert_alive_and_working(server, tiny_checkpoint)
