"""Tuned-weight files on ComfyUI's real UNet (tiny random SD1.5): official names, exact round trips,
official Tune-A-Video files in their three layouts, errors, LoRA stacking and the two nodes."""
import json
import logging
import re
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

FRAMES = 2
P = "diffusion_model."
# The tiny UNet: 2 levels of 1 ResNet each, a transformer block after every ResNet (up: 2 per level).
OFFICIAL_BLOCKS = [f"{b}.transformer_blocks.0" for b in (
    "down_blocks.0.attentions.0", "down_blocks.1.attentions.0", "mid_block.attentions.0",
    "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1")]
TEMPORAL = ["norm_temp.weight", "norm_temp.bias", "attn_temp.to_q.weight", "attn_temp.to_k.weight",
            "attn_temp.to_v.weight", "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias"]
# Tuned queries of three blocks, by our path and by the official one.
TUNED_BLOCKS = {"input_blocks.1.1.transformer_blocks.0": "down_blocks.0.attentions.0.transformer_blocks.0",
                "middle_block.1.transformer_blocks.0": "mid_block.attentions.0.transformer_blocks.0",
                "output_blocks.3.1.transformer_blocks.0": "up_blocks.1.attentions.1.transformer_blocks.0"}
TUNED_Q = [f"{block}.{attn}.to_q.weight" for block in TUNED_BLOCKS for attn in ("attn1", "attn2")]
METADATA = {"frames": 8, "prompt": "a man is skiing", "steps": 300, "learning_rate": 3e-5}


def outputs(core, patcher):
    """One direct UNet call on a small video, loaded and called the way ComfyUI's samplers do."""
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(FRAMES, 4, 4, 4, generator=g), torch.randn(FRAMES, 77, 768, generator=g)
    with torch.inference_mode():
        core.inflate.load(patcher)
        options = core.inflate.call_options(patcher, FRAMES)
        return patcher.model.apply_model(x, torch.full((FRAMES,), 2.0), c_crossattn=context,
                                         transformer_options=options)


@pytest.fixture(scope="module")
def tuned_model(sd15, core):
    """An inflated model with random tuned queries and temporal weights, as One-Shot Tune leaves it."""
    inflated = core.inflate.inflate(sd15[0], seed=0)
    g = torch.Generator().manual_seed(1)
    names = [P + n for n in TUNED_Q] + core.tuned.temporal_names(inflated)
    raw = core.tuned.raw_weights(inflated, names)
    deltas = {n: 0.05 * torch.randn(raw[n].shape, generator=g) for n in names}
    return core.tuned.add_deltas(inflated, deltas, METADATA)


@pytest.fixture(scope="module")
def tuned_outputs(tuned_model, core):
    return outputs(core, tuned_model)


@pytest.fixture(scope="module")
def saved(tuned_model, core, tmp_path_factory):
    path = tmp_path_factory.mktemp("tuned") / "tuned.safetensors"
    core.weights.save_tuned(tuned_model, path)
    return path


def assert_same_weights(core, got, expected, names):
    a, b = core.tuned.effective_weights(got, names), core.tuned.effective_weights(expected, names)
    for name in names:  # file - raw + raw: at most a rounding step of float32 away
        torch.testing.assert_close(a[name], b[name], rtol=2e-7, atol=2e-7, msg=name)


def test_save_then_load_round_trips(tuned_model, tuned_outputs, saved, sd15, core):
    loaded = core.weights.load_tuned(sd15[0], saved)
    names = core.tuned.tuned_names(tuned_model)
    assert core.tuned.tuned_names(loaded) == names
    assert_same_weights(core, loaded, tuned_model, names)
    got = outputs(core, loaded)
    assert torch.allclose(got, tuned_outputs, atol=1e-5, rtol=0), (got - tuned_outputs).abs().max()
    assert (tuned_outputs - outputs(core, sd15[0])).abs().max() > 1e-3  # the tuned weights matter


def test_saved_file_uses_official_names_and_records_metadata(saved, core):
    with safetensors.safe_open(str(saved), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    temporal = {f"{block}.{suffix}" for block in OFFICIAL_BLOCKS for suffix in TEMPORAL}
    queries = {f"{block}.{attn}.to_q.weight" for block in TUNED_BLOCKS.values() for attn in ("attn1", "attn2")}
    assert keys == temporal | queries
    assert {"down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight",
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            "up_blocks.1.attentions.0.transformer_blocks.0.attn_temp.to_out.0.bias"} <= keys
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'\nversion = "{metadata["pack_version"]}"' in pyproject
    assert re.fullmatch(r"[0-9a-f]{16}", metadata["base_model_hash"])
    assert metadata["prompt"] == "a man is skiing"
    assert {k: json.loads(metadata[k]) for k in ("frames", "steps", "learning_rate")} == {
        "frames": 8, "steps": 300, "learning_rate": 3e-5}


def test_a_file_from_another_base_model_loads_with_a_warning(saved, sd15, core, tmp_path, caplog):
    state = safetensors.torch.load_file(str(saved))
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(state, str(other), metadata={"base_model_hash": "0" * 16})
    with caplog.at_level(logging.WARNING):
        core.weights.load_tuned(sd15[0], other)
    assert "tuned on another base model" in caplog.text


def official_state(core, model):
    """The whole tuned UNet in the official layout, named through ComfyUI's diffusers map directly."""
    import comfy.utils

    to_diffusers = {v: k for k, v in comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items()}
    unet = [P + k for k in model.model.diffusion_model.state_dict()]
    state = {}
    for name, value in core.tuned.effective_weights(model, unet + core.tuned.temporal_names(model)).items():
        path = name[len(P):]
        if "_temp." in path:  # ...transformer_blocks.<i>.attn_temp.<param>: the block's official prefix + rest
            block, index, param = re.match(r"(.*\.transformer_blocks)\.(\d+)\.(.*)", path).groups()
            official_block = to_diffusers[f"{block}.{index}.norm1.weight"][:-len("norm1.weight")]
            state[official_block + param] = value
        else:
            state[to_diffusers[path]] = value
    return state


@pytest.fixture(scope="module")
def official(tuned_model, core):
    return official_state(core, tuned_model)


def write_official(state, tmp_path, layout):
    if layout == "safetensors":
        path = tmp_path / "unet.safetensors"
        safetensors.torch.save_file(state, str(path))
    elif layout == "bin":
        path = tmp_path / "unet.bin"
        torch.save(state, path)
    else:  # save_pretrained: <folder>/unet/diffusion_pytorch_model.safetensors
        path = tmp_path / "pipeline"
        (path / "unet").mkdir(parents=True)
        safetensors.torch.save_file(state, str(path / "unet" / "diffusion_pytorch_model.safetensors"))
    return path


@pytest.mark.parametrize("layout", ["safetensors", "bin", "folder"])
def test_official_whole_unet_loads_and_matches(layout, official, tuned_model, tuned_outputs, sd15, core, tmp_path):
    assert len(official) == len(sd15[0].model.diffusion_model.state_dict()) + 7 * len(TEMPORAL)
    loaded = core.weights.load_tuned(sd15[0], write_official(official, tmp_path, layout))
    # Only the tensors that differ from the base become patches: the tuned queries.
    assert core.tuned.tuned_names(loaded) == core.tuned.tuned_names(tuned_model)
    assert_same_weights(core, loaded, tuned_model, core.tuned.tuned_names(tuned_model))
    got = outputs(core, loaded)
    assert torch.allclose(got, tuned_outputs, atol=1e-5, rtol=0), (got - tuned_outputs).abs().max()


def test_loras_on_the_base_model_stay_on_top(saved, tuned_model, sd15, core):
    to_k = P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    to_q = P + TUNED_Q[0]  # also tuned: the LoRA adds to the file's value
    g = torch.Generator().manual_seed(2)
    raw = core.tuned.raw_weights(sd15[0], [to_k, to_q])
    lora = {n: 0.1 * torch.randn(raw[n].shape, generator=g) for n in raw}
    with_lora = sd15[0].clone()
    with_lora.add_patches({n: ("diff", (d,)) for n, d in lora.items()})
    loaded = core.weights.load_tuned(with_lora, saved)
    got = core.tuned.effective_weights(loaded, [to_k, to_q])
    torch.testing.assert_close(got[to_k], raw[to_k] + lora[to_k], rtol=0, atol=1e-6)
    file_q = core.tuned.effective_weights(tuned_model, [to_q])[to_q]
    torch.testing.assert_close(got[to_q], file_q + lora[to_q], rtol=0, atol=1e-6)


class NotAWeight:
    pass


def _bad_file(case, official, saved, tmp_path):
    """A path that load_tuned must refuse, and a pattern its message must hold."""
    ours = safetensors.torch.load_file(str(saved))
    path = tmp_path / "bad.safetensors"
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"
    if case == "reshaped":
        ours[key] = ours[key].reshape(-1, 64).contiguous()
        pattern = re.escape(key) + r".*\(1600, 64\).*\(320, 320\)"
    elif case == "missing mid block":
        ours = {k: v for k, v in ours.items() if not k.startswith("mid_block.")}
        pattern = r"lacks 7 of the 49 .*in blocks mid_block\.attentions\.0\.transformer_blocks\.0"
    elif case == "image unet":
        ours = {k: v for k, v in official.items() if "_temp." not in k}
        pattern = "no attn_temp/norm_temp tensors"
    elif case == "other architecture":
        ours["down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q.weight"] = torch.zeros(4, 4)
        pattern = r"1 tensors this model has no place for.*down_blocks\.3.*another architecture"
    elif case == "NaN":
        ours[key] = torch.full_like(ours[key], float("nan"))
        pattern = re.escape(key) + " holds NaN or infinite values"
    elif case == "infinite":
        ours[key] = ours[key].clone().index_fill_(0, torch.tensor([0]), float("inf"))
        pattern = re.escape(key) + " holds NaN or infinite values"
    elif case == "integer":
        ours[key] = ours[key].to(torch.int64)
        pattern = re.escape(key) + " is torch.int64"
    elif case == "not safetensors":
        path.write_text("this is not a weights file")
        return path, r"could not read bad\.safetensors"
    elif case == "pickled code":
        path = tmp_path / "bad.bin"
        torch.save({"x": NotAWeight()}, path)  # weights_only refuses to build the object
        return path, r"could not read bad\.bin"
    elif case == "not tensors":
        path = tmp_path / "bad.bin"
        torch.save({"x": 1}, path)
        return path, "not a state dict of tensors"
    elif case == "empty folder":
        return tmp_path, "holds no unet/diffusion_pytorch_model"
    safetensors.torch.save_file(ours, str(path))
    return path, pattern


def snapshot(patcher):
    return ({k: v.clone() for k, v in patcher.model.state_dict().items()}, dict(patcher.patches),
            dict(patcher.additional_models), dict(patcher.attachments))


def assert_unchanged(patcher, before):
    weights, patches, additional, attachments = before
    now = patcher.model.state_dict()
    assert now.keys() == weights.keys() and all(torch.equal(now[k], weights[k]) for k in now)
    assert (patcher.patches, patcher.additional_models, patcher.attachments) == (patches, additional, attachments)


@pytest.mark.parametrize("case", ["reshaped", "NaN", "infinite", "integer", "missing mid block", "image unet", "other architecture",
                                  "not safetensors", "pickled code", "not tensors", "empty folder"])
def test_bad_files_are_refused_and_the_model_is_untouched(case, official, saved, sd15, core, tmp_path):
    path, pattern = _bad_file(case, official, saved, tmp_path)
    base = sd15[0]
    before = snapshot(base)
    with pytest.raises(core.weights.WeightsError, match=pattern):
        core.weights.load_tuned(base, path)
    assert_unchanged(base, before)


def test_models_that_cannot_take_the_weights_are_refused(saved, tuned_model, core):
    import comfy.model_patcher

    plain = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    before = snapshot(plain)
    with pytest.raises(ValueError, match="transformer blocks"):
        core.weights.load_tuned(plain, saved)
    assert_unchanged(plain, before)
    with pytest.raises(core.weights.WeightsError, match="already carries tuned weights"):
        core.weights.load_tuned(tuned_model, saved)


@pytest.fixture
def output_dir(tmp_path):
    import folder_paths

    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(old)


def test_nodes_save_list_and_load(pack, tuned_model, sd15, core, output_dir):
    nodes = pack.nodes.weights
    result = nodes.SaveTuned.execute(model=tuned_model, filename_prefix="tuneavideo/tuned")
    assert result.ui.as_dict() == {"text": ("tuned_00001_.safetensors",)}
    assert nodes.SaveTuned.execute(model=tuned_model, filename_prefix="clip/tuned").ui.as_dict() == {
        "text": ("clip/tuned_00001_.safetensors",)}  # always under output/tuneavideo
    pipeline = output_dir / "tuneavideo" / "pipeline"
    for part in ("unet", "vae"):  # a save_pretrained folder is listed as itself, its parts are not
        (pipeline / part).mkdir(parents=True)
        (pipeline / part / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    options = nodes.LoadTuned.GET_NODE_INFO_V1()["input"]["required"]["weights"][1]["options"]
    assert {"pipeline", "clip/tuned_00001_.safetensors", "tuned_00001_.safetensors"} <= set(options)
    assert not [o for o in options if o.startswith("pipeline/")]
    (loaded,) = nodes.LoadTuned.execute(model=sd15[0], weights="tuned_00001_.safetensors").result
    assert_same_weights(core, loaded, tuned_model, core.tuned.tuned_names(tuned_model))


def test_the_model_folder_is_registered_once(pack, output_dir):
    import folder_paths

    nodes = pack.nodes.weights
    nodes.register_folder()
    paths = folder_paths.get_folder_paths("tuneavideo")
    nodes.register_folder()
    assert folder_paths.get_folder_paths("tuneavideo") == paths
    assert str(output_dir / "tuneavideo") in paths
    assert any(p.endswith(str(Path("models") / "tuneavideo")) for p in paths)
    assert {".safetensors", ".bin"} <= set(folder_paths.folder_names_and_paths["tuneavideo"][1])


def test_node_schemas_have_tooltips(pack):
    nodes = pack.nodes.weights
    for node, name in ((nodes.SaveTuned, "Save Tuned Weights"), (nodes.LoadTuned, "Load Tuned Weights")):
        info = node.GET_NODE_INFO_V1()
        assert info["display_name"] == name and info["description"] and info["category"] == "Tune-A-Video"
        assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())
        assert all(info["output_tooltips"])
    assert nodes.SaveTuned.GET_NODE_INFO_V1()["output_node"] is True


@pytest.mark.parametrize("call,pattern", [
    (lambda n, m: n.SaveTuned.execute(model=m, filename_prefix="tuneavideo/tuned"), "has no Tune-A-Video weights"),
    (lambda n, m: n.SaveTuned.execute(model=m, filename_prefix="../../escape"), "outside output/tuneavideo"),
    (lambda n, m: n.LoadTuned.execute(model=m, weights="missing.safetensors"), "not in models/tuneavideo"),
])
def test_node_errors_name_the_node(call, pattern, pack, sd15, output_dir):
    nodes = pack.nodes.weights
    with pytest.raises(ValueError, match=r"^(Save|Load) Tuned Weights \(Tune-A-Video\): .*" + pattern):
        call(nodes, sd15[0])


@pytest.mark.parametrize("prefix, expected", [
    ("", "tuned_00001_.safetensors"), (".", "tuned_00001_.safetensors"), ("tuneavideo", "tuned_00001_.safetensors"),
    ("tuneavideo/", "tuned_00001_.safetensors"), ("  ", "tuned_00001_.safetensors"),
    ("clip/.", "clip_00001_.safetensors"),
])
def test_empty_prefixes_save_visible_files_readable_by_all(pack, tuned_model, output_dir, prefix, expected):
    import os
    import stat

    result = pack.nodes.weights.SaveTuned.execute(model=tuned_model, filename_prefix=prefix)
    assert result.ui.as_dict() == {"text": (expected,)}
    path = output_dir / "tuneavideo" / expected
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_a_failed_save_is_a_clear_error_and_leaves_no_file(pack, tuned_model, output_dir, monkeypatch):
    def disk_full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pack.tav_core.weights.safetensors.torch, "save_file", disk_full)
    with pytest.raises(ValueError, match=r"^Save Tuned Weights \(Tune-A-Video\): could not write .*No space left"):
        pack.nodes.weights.SaveTuned.execute(model=tuned_model, filename_prefix="tuned")
    assert list((output_dir / "tuneavideo").iterdir()) == []


def test_links_out_of_the_folder_are_refused_like_load_video(pack, saved, sd15, output_dir, tmp_path):
    """One path policy: a symlink in the weights folder (or in the input folder) pointing outside is refused."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "tuned.safetensors").write_bytes(saved.read_bytes())
    folder = output_dir / "tuneavideo"
    folder.mkdir(exist_ok=True)
    (folder / "link.safetensors").symlink_to(outside / "tuned.safetensors")
    (folder / "pipe" / "unet").mkdir(parents=True)
    (folder / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").symlink_to(outside / "tuned.safetensors")
    pack.nodes.weights.register_folder()  # picks up this test's output folder
    for name in ("link.safetensors", "pipe"):
        with pytest.raises(ValueError, match=r"^Load Tuned Weights \(Tune-A-Video\): .*outside"):
            pack.nodes.weights.LoadTuned.execute(model=sd15[0], weights=name)
    video = pack.tav_core.video
    (output_dir / "input").mkdir()
    (output_dir / "input" / "link.mp4").symlink_to(outside / "tuned.safetensors")
    with pytest.raises(video.ClipError, match="not inside"):
        video.resolve_input_path("link.mp4", str(output_dir / "input"))
    # A folder that is itself a link (models on another disk) is fine for both.
    linked = tmp_path / "linked-folder"
    linked.symlink_to(outside, target_is_directory=True)
    assert pack.tav_core.files.resolve_inside("tuned.safetensors", str(linked)) == str(outside / "tuned.safetensors")


@pytest.mark.parametrize("weights", [7, None, "", "bad\0name.safetensors", "../../x.safetensors"])
def test_bad_weight_names_get_clear_errors(pack, sd15, output_dir, weights):
    with pytest.raises(ValueError, match=r"^Load Tuned Weights \(Tune-A-Video\): "):
        pack.nodes.weights.LoadTuned.execute(model=sd15[0], weights=weights)
