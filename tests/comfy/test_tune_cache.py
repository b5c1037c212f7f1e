"""The tune cache: keyed by what the forward pass uses, entries untrusted, writes atomic and non-fatal."""
import json
import logging
import os
import stat

import pytest
import safetensors.torch
import torch

from tav_core.testing.comfy_inprocess import clip_images, encode_prompts, with_v_prediction

FRAMES = 4


@pytest.fixture(scope="module")
def clip_inputs(sd15, synthetic_clip):
    _, clip, vae = sd15
    with torch.inference_mode():
        latents = vae.encode(clip_images(synthetic_clip, FRAMES))
    return encode_prompts(clip, "a ball is rolling")["a ball is rolling"], {"samples": latents}


def run(core, model, clip_inputs, cache_dir, steps=2):
    """(result, number of optimiser steps that ran)."""
    ran = []
    settings = core.tuning.TuneSettings(steps=steps, learning_rate=1e-3)
    with torch.inference_mode():
        result = core.tuning.tune(model, *clip_inputs, settings, lambda *a: ran.append(a), str(cache_dir))
    return result, len(ran)


def entry(cache_dir):
    (path,) = [p for p in cache_dir.iterdir() if p.suffix == ".safetensors"]
    return path


def test_a_fresh_inflation_of_the_same_model_hits(sd15, core, clip_inputs, tmp_path):
    # Inflate Model runs again after a server restart: equal setups must give equal keys.
    assert run(core, core.inflate.inflate(sd15[0], seed=3), clip_inputs, tmp_path)[1] == 2
    assert run(core, core.inflate.inflate(sd15[0], seed=3), clip_inputs, tmp_path)[1] == 0


def _wrapped(model):
    import comfy.patcher_extension

    def scale_output(executor, *args, **kwargs):
        return executor(*args, **kwargs) * 1.01

    model = model.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", scale_output)
    return model


def _cfg_option(model):
    model = model.clone()
    model.model_options["transformer_options"]["some_pack_option"] = 2
    return model


@pytest.mark.parametrize("variant", [
    lambda core, base: core.inflate.inflate(base, seed=0, video_norm=False),
    lambda core, base: core.inflate.inflate(with_v_prediction(base), seed=0),
    lambda core, base: _wrapped(core.inflate.inflate(base, seed=0)),
    lambda core, base: _cfg_option(core.inflate.inflate(base, seed=0)),
    lambda core, base: core.inflate.inflate(base, seed=1),
], ids=["video_wide_groupnorm off", "v-prediction object patch", "a wrapper", "a model option", "inflation seed"])
def test_anything_the_forward_pass_uses_misses_the_cache(sd15, core, clip_inputs, tmp_path, variant):
    run(core, core.inflate.inflate(sd15[0], seed=0), clip_inputs, tmp_path)
    result, ran = run(core, variant(core, sd15[0]), clip_inputs, tmp_path)
    assert ran == 2, "a different setup must tune, not reuse another setup's weights"


def test_another_training_window_misses(sd15, core, clip_inputs, tmp_path):
    positive, latent = clip_inputs
    run(core, core.inflate.inflate(sd15[0]), clip_inputs, tmp_path)
    shifted = {"samples": latent["samples"].roll(1, dims=0)}  # same frames, another window order
    assert run(core, core.inflate.inflate(sd15[0]), (positive, shifted), tmp_path)[1] == 2


def test_the_precision_counts_as_what_it_resolved_to(sd15, core, clip_inputs, tmp_path):
    # "auto" is bf16 on a CPU with bf16 matrix units and fp32 on one without: an entry tuned on the one
    # must not serve the other, and "auto" must hit what the precision it resolved to stored.
    auto = core.tuning._autocast_dtype("auto", torch.device(sd15[0].load_device))
    resolved = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[auto]
    model = core.inflate.inflate(sd15[0])
    ran = []
    with torch.inference_mode():
        for precision in (resolved, "auto"):
            settings = core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision=precision)
            core.tuning.tune(model, *clip_inputs, settings, lambda *a: ran.append(precision), str(tmp_path))
    assert ran == [resolved, resolved]
    keys = {core.tune_cache.cache_key(model, *clip_inputs, core.tuning.TuneSettings(), dtype)
            for dtype in (None, torch.bfloat16, torch.float16)}
    assert len(keys) == 3


def test_cache_hits_own_their_memory(sd15, core, clip_inputs, tmp_path):
    """A hit must not stay memory-mapped: truncating the entry afterwards must not matter (was SIGBUS)."""
    model = core.inflate.inflate(sd15[0])
    run(core, model, clip_inputs, tmp_path)
    hit, ran = run(core, model, clip_inputs, tmp_path)
    assert ran == 0
    os.truncate(entry(tmp_path), 0)
    names = core.tuning.trainable_names(model, next(iter(core.tuning.PRESETS)))
    values = core.tuned.effective_weights(hit.model, names)  # reads every cached delta
    assert all(torch.isfinite(v).all() for v in values.values())


def _rewrite(path, tensors=None, metadata=None):
    data = path.read_bytes()
    old_tensors = safetensors.torch.load(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    safetensors.torch.save_file(tensors(old_tensors) if tensors else old_tensors, str(path),
                                metadata=metadata(header["__metadata__"]) if metadata else header["__metadata__"])


def _first(d):
    return next(iter(sorted(d)))


@pytest.mark.parametrize("damage", [
    lambda p: _rewrite(p, tensors=lambda t: {**t, _first(t): torch.full_like(t[_first(t)], float("nan"))}),
    lambda p: _rewrite(p, tensors=lambda t: {**t, _first(t): torch.zeros(3, 3)}),
    lambda p: _rewrite(p, tensors=lambda t: {**t, "diffusion_model.nonsense.weight": torch.zeros(2)}),
    lambda p: _rewrite(p, tensors=lambda t: {k: v for k, v in t.items() if k != _first(t)}),
    lambda p: _rewrite(p, tensors=lambda t: {**t, _first(t): t[_first(t)].to(torch.int32)}),
    lambda p: _rewrite(p, metadata=lambda m: {"losses": "not json"}),
    lambda p: _rewrite(p, metadata=lambda m: {"losses": "[1.0]"}),
    lambda p: _rewrite(p, metadata=lambda m: {"losses": '["a", "b"]'}),
    lambda p: _rewrite(p, metadata=lambda m: {}),
    lambda p: os.truncate(p, p.stat().st_size // 2),
    lambda p: p.write_bytes(b"\xff" * 8 + b"{}"),
], ids=["NaN", "wrong shape", "unknown name", "missing name", "integer", "losses not JSON", "too few losses",
        "losses not numbers", "no metadata", "truncated", "garbage header"])
def test_a_bad_entry_is_a_miss_with_a_warning_and_is_replaced(sd15, core, clip_inputs, tmp_path, caplog, damage):
    model = core.inflate.inflate(sd15[0])
    first, _ = run(core, model, clip_inputs, tmp_path)
    damage(entry(tmp_path))
    with caplog.at_level(logging.WARNING):
        again, ran = run(core, model, clip_inputs, tmp_path)
    assert ran == 2 and "bad tune cache entry" in caplog.text
    assert again.losses == first.losses
    assert run(core, model, clip_inputs, tmp_path)[1] == 0, "the bad entry was not replaced"


def test_entries_are_written_atomically_and_readable_by_all(sd15, core, clip_inputs, tmp_path):
    run(core, core.inflate.inflate(sd15[0]), clip_inputs, tmp_path)
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"], "a temporary file was left behind"
    assert stat.S_IMODE(entry(tmp_path).stat().st_mode) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_cache_folder_that_is_a_file_warns_and_keeps_the_result(sd15, core, clip_inputs, tmp_path, caplog):
    blocker = tmp_path / "tuneavideo_cache"
    blocker.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        result, ran = run(core, core.inflate.inflate(sd15[0]), clip_inputs, blocker)
    assert ran == 2 and len(result.losses) == 2
    assert "could not store" in caplog.text


def test_a_full_disk_warns_keeps_the_result_and_leaves_no_partial_file(sd15, core, clip_inputs, tmp_path,
                                                                     caplog, monkeypatch):
    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.tune_cache.safetensors.torch, "save_file", disk_full)
    with caplog.at_level(logging.WARNING):
        result, ran = run(core, core.inflate.inflate(sd15[0]), clip_inputs, tmp_path)
    assert ran == 2 and len(result.losses) == 2
    assert "No space left on device" in caplog.text
    assert list(tmp_path.iterdir()) == []
