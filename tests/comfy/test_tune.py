"""One-Shot Tune on the tiny random SD1.5 checkpoint and real clips."""
import numpy as np
import pytest
import torch

from tav_core.testing.comfy_inprocess import clip_images, encode_prompts, with_v_prediction

FRAMES = 4
PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"


@pytest.fixture(scope="module")
def clip_inputs(sd15, real_clip):
    """(source-prompt conditioning, LATENT) of 4 frames of man-skiing at 64x64."""
    _, clip, vae = sd15
    with torch.inference_mode():
        latents = vae.encode(clip_images(real_clip, FRAMES))
    return encode_prompts(clip, "a man is skiing")["a man is skiing"], {"samples": latents}


def tune(core, model, clip_inputs, **overrides):
    # fp32: "auto" is bf16 on CPUs with AMX, and these checks must not depend on the machine.
    settings = core.tuning.TuneSettings(**{"steps": 3, "learning_rate": 1e-3, "precision": "fp32", **overrides})
    positive, latent = clip_inputs
    with torch.inference_mode():  # as ComfyUI runs nodes
        return core.tuning.tune(model, positive, latent, settings)


def unet_and_temporal_weights(core, patcher):
    return core.tuned.effective_weights(patcher, core.tuned.every_name(patcher))


@pytest.mark.newest_comfyui_only  # 35 s of CI time; the rest of this module tunes on both ComfyUIs
def test_loss_goes_down_on_a_real_clip(sd15, core, clip_inputs, artifacts_dir):
    result = tune(core, core.inflate.inflate(sd15[0]), clip_inputs, steps=30, learning_rate=2e-3)
    losses = result.losses
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    curve = core.plot.loss_curve_image(losses)
    from PIL import Image
    Image.fromarray((curve * 255).astype("uint8")).save(artifacts_dir / "loss.png")
    assert last < 0.6 * first, f"mean loss of the first 8 steps {first:.4f}, of the last 8 {last:.4f}"


def test_checkpointing_trains_every_chosen_tensor_and_nothing_else(sd15, core, clip_inputs):
    base = sd15[0]
    inflated = core.inflate.inflate(base, seed=0)
    base_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    before = unet_and_temporal_weights(core, inflated)
    result = tune(core, inflated, clip_inputs, gradient_checkpointing=True)
    after = unet_and_temporal_weights(core, result.model)
    chosen = set(core.tuning.trainable_names(inflated, PAPER))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == chosen
    for level in ("input_blocks", "middle_block", "output_blocks"):
        assert any(f".{level}." in k for k in changed), f"nothing in {level} trained"
    assert all(torch.equal(base_before[k], v) for k, v in base.model.state_dict().items())
    assert unet_and_temporal_weights(core, inflated).keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in unet_and_temporal_weights(core, inflated).items())


def test_training_borrows_the_shared_weights_without_a_copy_and_gives_them_back(sd15, core, clip_inputs):
    with torch.inference_mode():  # as ComfyUI runs nodes
        inflated = core.inflate.inflate(sd15[0], seed=0)
    modules = {"unet": inflated.model, "temporal": core.inflate.temporal_patcher(inflated).model}
    own = {(part, k): p for part, module in modules.items() for k, p in module.named_parameters()}
    assert all(p.is_inference() for p in own.values())
    during = []

    def on_step(step, steps, loss):
        during.append({key: p for part, module in modules.items() for key, p in
                       (((part, k), p) for k, p in module.named_parameters())})

    positive, latent = clip_inputs
    settings = core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision="fp32")
    with torch.inference_mode():
        core.tuning.tune(inflated, positive, latent, settings, on_step=on_step)
    assert len(during) == 2
    # While training: ordinary tensors (autograd saves them) over the shared model's own memory.
    assert all(not p.is_inference() and p is not own[k] and p.data_ptr() == own[k].data_ptr()
               for k, p in during[0].items())
    # Afterwards the shared model holds its own parameters again.
    assert all(p is own[(part, k)] for part, module in modules.items() for k, p in module.named_parameters())


def test_a_tune_after_the_frontends_unload_models_gives_the_same_weights(core, tiny_checkpoint, clip_inputs):
    """The frontend's Unload Models (POST /free) unloads outside inference mode. ComfyUI 0.33.0 then gives the
    weights that a sampled tuned model had patched back as ordinary tensors, which the next tune must use as
    they are. Its own copy of the checkpoint: the session's shared one keeps ComfyUI's loader's tensors."""
    import comfy.model_management
    import comfy.sd

    with torch.inference_mode():
        model = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=False, output_clip=False)[0]
    inflated = core.inflate.inflate(model, seed=0)
    first = tune(core, inflated, clip_inputs, steps=2)
    positive, latent = clip_inputs
    with torch.inference_mode():
        core.sampling.ddim_invert(first.model, latent["samples"], positive, 1, callback=lambda *a: None)
    comfy.model_management.unload_all_models()  # as main.py's prompt worker runs /free
    print("ordinary after /free:", sum(not p.is_inference() for p in model.model.parameters()))
    names = core.tuning.trainable_names(inflated, PAPER)
    second = tune(core, inflated, clip_inputs, steps=2)
    expected, got = core.tuned.effective_weights(first.model, names), core.tuned.effective_weights(second.model, names)
    assert all(torch.equal(got[n], expected[n]) for n in names)
    assert second.losses == first.losses


@pytest.mark.parametrize("blocks", ["all blocks", "highest-resolution blocks"])
def test_checkpointing_gives_the_same_weights_as_plain_backward(sd15, core, clip_inputs, blocks):
    inflated = core.inflate.inflate(sd15[0], seed=0)
    names = core.tuning.trainable_names(inflated, PAPER)
    plain = core.tuned.effective_weights(tune(core, inflated, clip_inputs, gradient_checkpointing=False).model,
                                         names)
    checkpointed = core.tuned.effective_weights(
        tune(core, inflated, clip_inputs, gradient_checkpointing=True, checkpoint_blocks=blocks).model, names)
    for name in names:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_highest_resolution_checkpointing_covers_only_the_first_level(sd15, core):
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    unet = sd15[0].model.diffusion_model
    blocks = {f"diffusion_model.{path}": m for path, m in unet.named_modules()
              if type(m) in (ResBlock, SpatialTransformer)}
    patched = {}
    for scope in core.checkpointing.SCOPES:
        clone = sd15[0].clone()
        core.checkpointing.add_checkpointing(clone, scope)
        patched[scope] = set(clone.object_patches)
    assert patched["all blocks"] == set(blocks)
    # The blocks that see the latent's full resolution, found by running the UNet once.
    full_size = set()
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: full_size.add(name) if args[0].shape[-1] == 8
                                         else None) for name, m in blocks.items()]
    try:
        with torch.inference_mode():
            unet(torch.zeros(1, 4, 8, 8), timesteps=torch.tensor([10.0]), context=torch.zeros(1, 77, 768))
    finally:
        for hook in hooks:
            hook.remove()
    assert patched["highest-resolution blocks"] == full_size
    assert 0 < len(full_size) < len(blocks)
    with pytest.raises(ValueError, match="unknown checkpointing scope"):
        core.checkpointing.add_checkpointing(sd15[0].clone(), "every other block")


def test_same_seed_same_weights(sd15, core, clip_inputs):
    inflated = core.inflate.inflate(sd15[0], seed=0)
    names = core.tuning.trainable_names(inflated, PAPER)
    runs = [core.tuned.effective_weights(tune(core, inflated, clip_inputs, seed=seed).model, names)
            for seed in (7, 7, 8)]
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in names)
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in names)


@pytest.mark.parametrize("preset", ["temporal only (attn_temp)", "paper + attn1.to_k, attn1.to_v",
                                    "paper, LoRA rank 16 (small files)"])
def test_other_presets_train_their_tensors(sd15, core, clip_inputs, preset):
    inflated = core.inflate.inflate(sd15[0], seed=0)
    names = core.tuning.trainable_names(inflated, preset)
    before = core.tuned.effective_weights(inflated, names)
    after = core.tuned.effective_weights(tune(core, inflated, clip_inputs, trainable=preset).model, names)
    assert all(not torch.equal(before[n], after[n]) for n in names)
    if "LoRA" in preset:
        matrix = next(n for n in names if n.endswith("attn1.to_q.weight"))
        rank = torch.linalg.matrix_rank(after[matrix] - before[matrix])
        assert rank <= core.tuning.LORA_RANK


def test_the_cache_skips_tuning_and_gives_the_same_weights(sd15, core, clip_inputs, tmp_path):
    inflated = core.inflate.inflate(sd15[0], seed=0)
    names = core.tuning.trainable_names(inflated, PAPER)
    positive, latent = clip_inputs
    settings = core.tuning.TuneSettings(steps=2, learning_rate=1e-3)
    steps = []
    with torch.inference_mode():
        first = core.tuning.tune(inflated, positive, latent, settings, lambda *a: steps.append(a), str(tmp_path))
        trained_steps = len(steps)
        second = core.tuning.tune(inflated, positive, latent, settings, lambda *a: steps.append(a), str(tmp_path))
        assert len(steps) == trained_steps == 2, "a cache hit must not train"
        other = core.tuning.TuneSettings(steps=2, learning_rate=2e-3)
        core.tuning.tune(inflated, positive, latent, other, lambda *a: steps.append(a), str(tmp_path))
    assert len(steps) == 4, "other settings must miss the cache"
    a, b = (core.tuned.effective_weights(r.model, names) for r in (first, second))
    assert all(torch.equal(a[n], b[n]) for n in names)
    assert first.losses == second.losses


@pytest.mark.parametrize("latents, expected", [
    (torch.zeros(1, 4, 8, 8), "F >= 2"),
    (torch.zeros(4, 16, 8, 8), "channels"),
    (torch.zeros(4, 4, 7, 8), "multiple"),
])
def test_bad_latents_get_clear_errors(sd15, core, clip_inputs, latents, expected):
    with pytest.raises(core.tuning.TuneError, match=expected):
        tune(core, sd15[0], (clip_inputs[0], {"samples": latents}))


def test_conditioning_from_another_clip_width_is_refused(sd15, core, clip_inputs):
    wide = [[torch.zeros(1, 77, 1280), {}]]
    with pytest.raises(core.tuning.TuneError, match="1280"):
        tune(core, sd15[0], (wide, clip_inputs[1]))


def test_save_tuned_writes_every_tuned_tensor_under_official_names(sd15, core, clip_inputs, tmp_path):
    inflated = core.inflate.inflate(sd15[0], seed=0)
    result = tune(core, inflated, clip_inputs)
    path = tmp_path / "tuned.safetensors"
    core.weights.save_tuned(result.model, path, {"source_prompt": "a man is skiing"})
    import safetensors

    with safetensors.safe_open(str(path), framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    to_ours = core.weights.official_to_comfy(inflated.model.model_config.unet_config)
    trained = set(core.tuning.trainable_names(inflated, PAPER))
    temporal = set(core.tuned.temporal_names(inflated))
    assert {to_ours[k] for k in keys} == trained | temporal
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight" in keys
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight" in keys
    assert metadata["source_prompt"] == "a man is skiing" and metadata["frames"] == str(FRAMES)


@pytest.mark.parametrize("v_pred", [False, True], ids=["eps", "v"])
def test_the_loss_is_the_papers_objective(sd15, core, clip_inputs, v_pred):
    """Step 1's loss equals a plain reimplementation: x_t from diffusers' alphas, UNet at integer t."""
    model = core.inflate.inflate(sd15[0], seed=0)
    model = with_v_prediction(model) if v_pred else model
    positive, latent = clip_inputs
    result = tune(core, model, clip_inputs, steps=1, seed=5)
    # The same draws as the tuning loop: timestep, then noise, from a CPU generator seeded with `seed`.
    g = torch.Generator().manual_seed(5)
    t = int(torch.randint(0, 1000, (1,), generator=g))
    noise = torch.randn(latent["samples"].shape, generator=g)
    a = core.schedule.scaled_linear_alphas_cumprod()[t].double()
    x0 = latent["samples"].double() * 0.18215  # SD1.x latent scale
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.inference_mode():
        core.inflate.load(model)
        out = model.model.diffusion_model(
            x_t.float(), torch.full((FRAMES,), float(t)), context=positive[0][0].expand(FRAMES, -1, -1),
            transformer_options=core.inflate.call_options(model, FRAMES)).double()
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_pred else noise
    expected = torch.nn.functional.mse_loss(out, target.double()).item()
    assert result.losses[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("setting", ["trainable", "checkpoint_blocks", "precision", "optimizer"])
def test_unknown_choices_are_refused(core, setting):
    with pytest.raises(core.tuning.TuneError, match=f"unknown {setting} 'nonsense'"):
        core.tuning.TuneSettings(**{setting: "nonsense"})


@pytest.mark.parametrize("speedup, expected", [(3.0, torch.bfloat16), (1.6, torch.bfloat16), (1.4, None),
                                               (0.5, None)])
def test_auto_precision_on_a_cpu_follows_its_measured_bf16_speed(core, monkeypatch, speedup, expected):
    # The rule, on given measurements: bf16 autocast where the CPU's bf16 kernels run at least 1.5x as fast.
    tuning = core.tuning
    monkeypatch.setattr(tuning, "bf16_kernel_speedup", lambda: speedup)
    tuning.cpu_bf16_pays.cache_clear()
    try:
        assert tuning._autocast_dtype("auto", torch.device("cpu")) == expected
        assert tuning._autocast_dtype("fp32", torch.device("cpu")) is None
        assert tuning._autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    finally:
        tuning.cpu_bf16_pays.cache_clear()  # the next caller measures this CPU


def test_the_bf16_probe_measures_this_cpu_once(core, monkeypatch):
    tuning = core.tuning
    speedup = tuning.bf16_kernel_speedup()
    assert 0.05 < speedup < 100  # a ratio of two real timings
    calls = []
    monkeypatch.setattr(tuning, "bf16_kernel_speedup", lambda: calls.append(1) or speedup)
    tuning.cpu_bf16_pays.cache_clear()
    try:
        for _ in range(3):
            tuning._autocast_dtype("auto", torch.device("cpu"))
        assert calls == [1]
    finally:
        tuning.cpu_bf16_pays.cache_clear()
