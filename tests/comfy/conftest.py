"""Level 2: ComfyUI imported in-process, with the pack loaded by ComfyUI's own custom-node loader."""
import pytest

from tav_core.testing.comfy_inprocess import clip_images, encode_prompts, load_comfy_with_pack, pack_core, pack_module


@pytest.fixture(scope="session")
def comfy_nodes():
    """ComfyUI's `nodes` module with the pack loaded."""
    return load_comfy_with_pack()


@pytest.fixture(scope="session")
def pack(comfy_nodes):
    """The pack's package module, as ComfyUI imported it."""
    return pack_module()


@pytest.fixture
def input_dir(tmp_path):
    """A fresh ComfyUI input folder for the test."""
    import folder_paths

    old = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_input_directory(old)


@pytest.fixture(scope="session")
def core(pack):
    """The pack's tav_core modules, as imported by ComfyUI (so class identities match the nodes')."""
    return pack_core("attention", "checkpointing", "inflate", "plot", "sampling", "schedule", "tune_cache", "tuned",
                     "tuning",
                     "video", "weights", "windows")


@pytest.fixture(scope="session")
def sd15(comfy_nodes, tiny_checkpoint):
    """(MODEL, CLIP, VAE) of the tiny random-weight SD1.5 checkpoint, loaded by ComfyUI's stock loader."""
    import comfy.sd

    import torch

    with torch.inference_mode():  # as ComfyUI's loader node runs: its weights are inference tensors
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(tiny_checkpoint), output_vae=True, output_clip=True)
    return model, clip, vae


@pytest.fixture(autouse=True)
def no_interrupt_left():
    """A test that interrupts (or fails while interrupting) leaves no interrupt for the next one."""
    import comfy.model_management

    yield
    comfy.model_management.interrupt_current_processing(False)


@pytest.fixture
def progress_hook():
    """The (value, total) of every progress-bar update that ComfyUI's global hook sees."""
    import comfy.utils

    calls = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    yield calls
    comfy.utils.set_progress_bar_global_hook(previous)


@pytest.fixture(scope="session")
def clip_inputs(sd15, synthetic_clip):
    """The synthetic clip's first 4 frames (every 2nd, 64 px) as latents, with its prompt's and the empty prompt's
    conditioning."""
    import torch

    _, clip, vae = sd15
    with torch.inference_mode():
        latents = vae.encode(clip_images(synthetic_clip, 4))
    prompts = encode_prompts(clip, "a ball is rolling", "")
    return {"latents": latents, "positive": prompts["a ball is rolling"], "empty": prompts[""]}
