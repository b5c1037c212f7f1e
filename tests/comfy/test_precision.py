"""Half-precision and low-VRAM configurations in-process, forced as ComfyUI's launch options force them.

`model_options={"dtype": ...}` is what --bf16-unet, --fp16-unet and --fp8_e4m3fn-unet set: on this
CPU ComfyUI then stores the UNet in that dtype and computes in fp32 through manual casting. The
server-level matrix (tests/server/test_precision_matrix.py) runs the same configurations through
the launch options themselves; this module checks what a server cannot show: the added layers'
operations, dtypes and devices, the untouched base model, the fp32 training state, and the error
constant that the server test's tolerance rests on.
"""
import pytest
import torch

FRAMES = 4  # as the clip_inputs fixture's latents
PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"
STORAGES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8_e4m3fn": torch.float8_e4m3fn}
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -11,
                 torch.float8_e4m3fn: 2.0 ** -4}
PARTIAL_LOAD_BYTES = 8 * 1024 * 1024  # far below the tiny UNet's 200 MB: most layers cast per operation


def relative_error(got, expected) -> float:
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.fixture(scope="module")
def unets(comfy_nodes, tiny_checkpoint):
    """The tiny checkpoint's MODEL stored in each dtype, loaded by ComfyUI's stock loader."""
    import comfy.sd

    models = {}
    with torch.inference_mode():
        for name, dtype in STORAGES.items():
            models[name] = comfy.sd.load_checkpoint_guess_config(
                str(tiny_checkpoint), output_vae=False, output_clip=False, model_options={"dtype": dtype})[0]
    return models


def unet_forward(core, model, positive, inflated: bool) -> torch.Tensor:
    """One UNet evaluation at t=500, as a sampler makes it (ComfyUI's apply_model)."""
    with torch.inference_mode():
        if inflated:
            model = core.inflate.inflate(model, seed=0)
        core.inflate.load(model)
        x = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        sigma = model.model.model_sampling.sigma(torch.full((FRAMES,), 500.0))
        options = core.inflate.call_options(model, FRAMES) if core.inflate.is_inflated(model) else {}
        return model.model.apply_model(x, sigma, c_crossattn=positive[0][0].expand(FRAMES, -1, -1),
                                       transformer_options=options).float()


def run_pipeline(core, model, inputs, precision="fp32", between_nodes=lambda: None):
    """Inflate -> One-Shot Tune (2 steps) -> DDIM Invert (3) -> Video Sample (3), as the nodes run them."""
    with torch.inference_mode():
        tuned = core.tuning.tune(core.inflate.inflate(model, seed=0), inputs["positive"],
                                 {"samples": inputs["latents"]},
                                 core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision=precision)).model
        between_nodes()
        inverted = core.sampling.ddim_invert(tuned, inputs["latents"], inputs["empty"], 3, callback=lambda *a: None)
        between_nodes()
        edit = core.sampling.ddim_sample(tuned, inputs["positive"], inputs["empty"], inverted, 3, 12.5, 0.0, 0, True,
                                         callback=lambda *a: None)
    return tuned, edit


@pytest.mark.parametrize("storage", list(STORAGES))
def test_temporal_layers_are_built_like_the_unets_own(core, unets, storage):
    model = unets[storage]
    inflated = core.inflate.inflate(model, seed=0)
    unet = model.model.diffusion_model
    layers = core.inflate.temporal_layers(inflated)
    for path, block, _ in core.inflate.transformer_blocks(unet):
        layer = layers.layer(path)
        # The same comfy.ops family as the block's own projections: manual cast where ComfyUI casts.
        assert type(layer.attn_temp.to_q) is type(block.attn1.to_q)
        assert type(layer.norm_temp).comfy_cast_weights == type(block.attn1.to_q).comfy_cast_weights
        assert all(p.dtype == STORAGES[storage] for p in layer.parameters())
    with torch.inference_mode():
        core.inflate.load(inflated)
    devices = {p.device for p in layers.parameters()}
    assert devices == {next(unet.parameters()).device}


@pytest.mark.parametrize("storage", ["bf16", "fp16", "fp8_e4m3fn"])
def test_one_forward_moves_by_at_most_one_and_a_half_unit_roundoffs(core, unets, clip_inputs, storage):
    """The constant the server matrix's tolerance rests on, for ComfyUI's own UNet and for ours.

    fp16: the checkpoint is stored in fp16, so fp16 storage is exact for the base weights."""
    positive = clip_inputs["positive"]
    u = UNIT_ROUNDOFF[STORAGES[storage]]
    base = relative_error(unet_forward(core, unets[storage], positive, False),
                          unet_forward(core, unets["fp32"], positive, False))
    ours = relative_error(unet_forward(core, unets[storage], positive, True),
                          unet_forward(core, unets["fp32"], positive, True))
    assert base <= 1.5 * u
    # Inflation adds sparse-causal keys and identity temporal layers: no more rounding than the UNet's.
    assert ours <= 1.05 * base + 1e-6


@pytest.mark.parametrize("storage", ["bf16", "fp16", "fp8_e4m3fn"])
# fp16 autocast on a CPU (which has no fp16 kernels) takes 30 s a case: in one ComfyUI's run only, for CI time.
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", pytest.param("fp16", marks=pytest.mark.newest_comfyui_only)])
def test_tuning_under_half_storage_trains_every_chosen_tensor_in_fp32(core, unets, clip_inputs, storage, precision):
    model = unets[storage]
    base_before = {k: v.clone() for k, v in model.model.state_dict().items()}
    inflated = core.inflate.inflate(model, seed=0)
    chosen = core.tuning.trainable_names(inflated, PAPER)
    every = core.tuned.every_name(inflated)
    adapters = core.tuning.make_adapters(inflated, chosen, core.tuning.TuneSettings())
    assert all(p.dtype == torch.float32 for a in adapters.values() for p in a.parameters())
    before = core.tuned.effective_weights(inflated, every)
    with torch.inference_mode():
        result = core.tuning.tune(inflated, clip_inputs["positive"], {"samples": clip_inputs["latents"]},
                                  core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision=precision))
    after = core.tuned.effective_weights(result.model, every)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    changed = {k for k in every if not torch.equal(before[k], after[k])}
    assert changed == set(chosen)
    assert all(torch.equal(base_before[k], v) for k, v in model.model.state_dict().items())


def test_the_optimizer_state_stays_fp32(core, unets):
    inflated = core.inflate.inflate(unets["bf16"], seed=0)
    adapters = core.tuning.make_adapters(inflated, core.tuning.trainable_names(inflated, PAPER),
                                         core.tuning.TuneSettings())
    params = [p for a in adapters.values() for p in a.parameters()]
    optimizer = core.tuning.make_optimizer(params, core.tuning.TuneSettings())
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim]
    assert states and all(t.dtype == torch.float32 for t in states)


@pytest.fixture
def partial_loading(monkeypatch):
    """ComfyUI's low-VRAM loading on this CPU: every load gets a small weight budget.

    ComfyUI refuses --lowvram with --cpu and never loads partially on a CPU device, so the budget is
    given to its own LoadedModel.model_load, which then does what it does on a small GPU: layers
    beyond the budget keep their weights offloaded and cast them per operation (comfy_cast_weights).
    """
    import comfy.model_management

    loaded = []
    original = comfy.model_management.LoadedModel.model_load

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        loaded.append(self.model)
        return original(self, lowvram_model_memory=PARTIAL_LOAD_BYTES, force_patch_weights=force_patch_weights)

    comfy.model_management.unload_all_models()
    monkeypatch.setattr(comfy.model_management.LoadedModel, "model_load", model_load)
    yield loaded
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def fp32_pipeline(core, unets, clip_inputs):
    import comfy.model_management

    comfy.model_management.unload_all_models()
    return run_pipeline(core, unets["fp32"], clip_inputs)


def test_low_vram_partial_loading_and_offloading_between_nodes(core, unets, clip_inputs, fp32_pipeline,
                                                               partial_loading):
    import comfy.model_management

    tuned, edit = run_pipeline(core, unets["fp32"], clip_inputs,
                               between_nodes=comfy.model_management.unload_all_models)
    assert any(m.model.model_lowvram for m in partial_loading), "no model was loaded partially"
    temporal = [m for m in partial_loading if isinstance(m.model, core.inflate.TemporalLayers)]
    assert temporal and all(m.model.model_lowvram for m in temporal)
    # fp32 weights cast per operation to fp32 are the same numbers: the same video, bit for bit.
    assert torch.equal(edit, fp32_pipeline[1])
    names = core.tuning.trainable_names(tuned, PAPER)
    expected = core.tuned.effective_weights(fp32_pipeline[0], names)
    got = core.tuned.effective_weights(tuned, names)
    assert all(torch.equal(got[n], expected[n]) for n in names)


def tuned_deltas(core, model, inputs, precision):
    inflated = core.inflate.inflate(model, seed=0)
    names = core.tuning.trainable_names(inflated, PAPER)
    with torch.inference_mode():
        tuned = core.tuning.tune(inflated, inputs["positive"], {"samples": inputs["latents"]},
                                 core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision=precision)).model
    before, after = core.tuned.effective_weights(inflated, names), core.tuned.effective_weights(tuned, names)
    return torch.cat([(after[n] - before[n]).flatten() for n in names])


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.newest_comfyui_only)])
def test_autocast_training_moves_the_weights_as_fp32_training_does(core, unets, clip_inputs, precision):
    """AdamW's first steps move each weight by about lr * sign(gradient), so autocast changes an
    update only where rounding flips the sign of a gradient entry near zero. The tuned changes must
    point the same way as fp32 training's."""
    reference = tuned_deltas(core, unets["fp32"], clip_inputs, "fp32")
    got = tuned_deltas(core, unets["fp32"], clip_inputs, precision)
    cosine = torch.nn.functional.cosine_similarity(got, reference, dim=0).item()
    print(f"{precision}: cosine {cosine:.4f}")
    assert cosine >= 0.9


def test_core_model_compute_dtype_runs_the_inflated_model_in_bf16(core, unets, clip_inputs):
    """Core ModelComputeDtype (the CPU user's bf16 sampling switch), put after inflation: the
    temporal layers compute in the blocks' bf16, and the result moves from fp32 no more than
    ComfyUI's own UNet does under the same switch."""
    def with_bf16_compute(model):
        patched = model.clone()
        patched.set_model_compute_dtype(torch.bfloat16)
        return patched

    positive = clip_inputs["positive"]
    inflated = core.inflate.inflate(unets["fp32"], seed=0)
    with torch.no_grad():  # trained-looking temporal layers (they start at zero), so that they compute
        for name, p in core.inflate.temporal_layers(inflated).named_parameters():
            if "attn_temp.to_out" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    path = core.inflate.transformer_blocks(unets["fp32"].model.diffusion_model)[0][0]
    seen = []
    layer = core.inflate.temporal_layers(inflated).layer(path)
    handle = layer.attn_temp.to_q.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    try:
        got = unet_forward(core, with_bf16_compute(inflated), positive, False)
    finally:
        handle.remove()
    ours = relative_error(got, unet_forward(core, inflated, positive, False))
    base = relative_error(unet_forward(core, with_bf16_compute(unets["fp32"]), positive, False),
                          unet_forward(core, unets["fp32"], positive, False))
    assert seen and set(seen) == {torch.bfloat16}
    print(f"bf16 compute: relative error {ours:.2e}, ComfyUI's UNet {base:.2e}")
    assert ours <= 1.5 * base


@pytest.mark.parametrize("loading", ["full", "partial"])
@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "bf16"])
def test_backward_runs_on_a_weight_patched_model_in_half_storage(core, unets, clip_inputs, storage, loading,
                                                                 request, monkeypatch):
    """Tuning and null-text inversion load their gradient clone under autograd: weight patches (here tuned
    deltas; a LoRA alike) must be applied without it, or fp8 stochastic rounding's out= ops refuse them.
    Under a partial (low-VRAM) load ComfyUI applies the patches of the offloaded layers in the forward pass
    itself (LowVramPatch), where autograd is on, and the backward still has to run."""
    from tav_core.testing.comfy_inprocess import pack_core

    null_text = pack_core("null_text").null_text
    patched_with_grad = []
    if loading == "partial":
        import comfy.model_patcher

        request.getfixturevalue("partial_loading")
        apply = comfy.model_patcher.LowVramPatch.__call__

        def recording(self, weight):
            patched_with_grad.append(torch.is_grad_enabled())
            return apply(self, weight)

        monkeypatch.setattr(comfy.model_patcher.LowVramPatch, "__call__", recording)
    inflated = core.inflate.inflate(unets[storage], seed=0)
    latent = {"samples": clip_inputs["latents"][:2]}
    settings = core.tuning.TuneSettings(steps=1, learning_rate=1e-3, precision="fp32")
    with torch.inference_mode():
        tuned = core.tuning.tune(inflated, clip_inputs["positive"], latent, settings).model
        retuned = core.tuning.tune(tuned, clip_inputs["positive"], latent, settings)  # loads the patched UNet
        _, result = null_text.null_text_invert(tuned, latent["samples"], clip_inputs["positive"],
                                               clip_inputs["empty"], 1, 7.5, 1, 0.0)
    assert all(torch.isfinite(torch.tensor(retuned.losses)))
    assert torch.isfinite(result.uncond).all()
    if loading == "partial":
        assert any(patched_with_grad), "no weight patch was applied per operation with autograd on"


@pytest.fixture
def fp8_compute(monkeypatch, tiny_checkpoint):
    """The tiny checkpoint's MODEL in fp8 as ComfyUI loads it with --supports-fp8-compute --fast fp8_matrix_mult
    (what a GPU with fp8 compute and --fast gets): `comfy.ops.fp8_ops`, whose linear layers clamp their input in
    place and multiply with torch._scaled_mm (on this CPU too), neither of which autograd can go back through."""
    import comfy.cli_args
    import comfy.model_management
    import comfy.sd

    monkeypatch.setattr(comfy.model_management, "SUPPORT_FP8_OPS", True)
    monkeypatch.setattr(comfy.cli_args.args, "fast", {comfy.cli_args.PerformanceFeature.Fp8MatrixMultiplication})
    with torch.inference_mode():
        return comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=False, output_clip=False,
                                                     model_options={"dtype": torch.float8_e4m3fn})[0]


def test_fp8_compute_tunes_as_fp8_storage_does_and_samples_in_fp8(core, unets, clip_inputs, fp8_compute, monkeypatch):
    """Training casts the fp8 weights per operation, as --fp8_e4m3fn-unet without --fast does: the same
    weights bit for bit. Sampling afterwards multiplies in fp8."""
    import comfy.ops

    linears = [m for m in fp8_compute.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is comfy.ops.fp8_ops.Linear for m in linears)
    fp8_calls = []
    fp8_linear = comfy.ops.fp8_linear
    monkeypatch.setattr(comfy.ops, "fp8_linear", lambda self, x: fp8_calls.append(1) or fp8_linear(self, x))
    inflated = core.inflate.inflate(fp8_compute, seed=0)
    every = core.tuned.every_name(inflated)
    before = core.tuned.effective_weights(inflated, every)
    with torch.inference_mode():
        tuned = core.tuning.tune(inflated, clip_inputs["positive"], {"samples": clip_inputs["latents"]},
                                 core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision="fp32")).model
    assert not fp8_calls
    after = core.tuned.effective_weights(tuned, every)
    chosen = core.tuning.trainable_names(inflated, PAPER)
    assert {k for k in every if not torch.equal(before[k], after[k])} == set(chosen)
    deltas = torch.cat([(after[n] - before[n]).flatten() for n in chosen])
    assert torch.equal(deltas, tuned_deltas(core, unets["fp8_e4m3fn"], clip_inputs, "fp32"))
    assert all(type(m) is comfy.ops.fp8_ops.Linear for m in linears)  # the training views are gone
    with torch.inference_mode():
        edit = core.sampling.ddim_invert(tuned, clip_inputs["latents"], clip_inputs["empty"], 1,
                                         callback=lambda *a: None)
    assert fp8_calls and torch.isfinite(edit).all()
