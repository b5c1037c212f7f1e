"""A checkpoint in ComfyUI's scaled fp8 layout: fp8 linear layers, each with a per-tensor scale.

ComfyUI 0.3 builds `comfy.ops.scaled_fp8_ops` for it, whose layers multiply the weight by its scale after the
weight wrappers ran; ComfyUI 0.33 converts it to QuantizedTensor weights, whose scales its state dict lists beside
the weights. The reference is the same checkpoint with those layers' dequantised values in fp32: what the fp8 one
computes with, so the two agree up to the order of one multiplication (measured: 5e-7 relative per UNet forward on
ComfyUI 0.3, exactly on 0.33, which dequantises before it multiplies).

Tolerance of the tuned changes: AdamW's first steps move each entry by about lr * g / (|g| + eps), so where
rounding alone moves a gradient entry near zero the update changes by up to lr; measured 3e-5 to 7e-4 relative
per tensor on ComfyUI 0.3 (0 on 0.33). A tensor trained against the scaled-units weight, as the layer's own
wrapper order would have it, is off by 0.05 to 0.8: the bound of 1e-2 lies between the two.

Tolerance of the edit: sampling applies the tuned changes to the fp8 weights as ComfyUI applies a LoRA to them,
requantising with stochastic rounding, which the fp32 reference does not; measured 4e-3 (0.33) to 6e-3 (0.3)
relative after 3 inversion and 3 sampling steps, 0.16 where training saw the scaled-units weight: bound 0.05.
"""
import pytest
import torch

PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"
DELTA_TOLERANCE = 1e-2
LOSS_TOLERANCE = 1e-5  # relative; one forward agrees to 5e-7
EDIT_TOLERANCE = 0.05


def relative_error(got, expected) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.fixture(scope="module")
def fp8_and_reference(comfy_nodes, tiny_checkpoint, tmp_path_factory):
    """(fp8 MODEL, reference MODEL), loaded by ComfyUI's stock checkpoint loader."""
    import comfy.sd

    from tav_core.testing.checkpoints import write_scaled_fp8_checkpoints

    folder = tmp_path_factory.mktemp("scaled-fp8")
    paths = write_scaled_fp8_checkpoints(tiny_checkpoint, folder / "fp8.safetensors", folder / "reference.safetensors")
    with torch.inference_mode():
        return tuple(comfy.sd.load_checkpoint_guess_config(str(p), output_vae=False, output_clip=False)[0]
                     for p in paths)


def first_to_q(model):
    return model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_q


def tune(core, model, inputs):
    inflated = core.inflate.inflate(model, seed=0)
    with torch.inference_mode():
        result = core.tuning.tune(inflated, inputs["positive"], {"samples": inputs["latents"]},
                                  core.tuning.TuneSettings(steps=2, learning_rate=1e-3, precision="fp32"))
    return inflated, result


def test_comfyui_loads_it_as_fp8_layers_with_scales(fp8_and_reference):
    from comfy.quant_ops import QuantizedTensor

    layer = first_to_q(fp8_and_reference[0])
    if isinstance(layer.weight, QuantizedTensor):  # ComfyUI 0.33: fp8 data, its scale inside
        assert layer.weight._qdata.dtype == torch.float8_e4m3fn and layer.weight.dequantize().dtype == torch.float32
    else:  # ComfyUI 0.3: the scale is the layer's own
        assert layer.weight.dtype == torch.float8_e4m3fn and torch.is_tensor(layer.scale_weight)
        assert layer.scale_weight.item() != 1.0


@pytest.fixture(scope="module")
def tuned(core, fp8_and_reference, clip_inputs):
    """{"fp8": (inflated, TuneResult), "reference": (...), "raw_before": the fp8 model's raw UNet weights}."""
    fp8 = fp8_and_reference[0]
    base_names = [k for k in core.tuned.key_patches(fp8) if k.startswith(core.tuned.UNET_PREFIX)]
    runs = {"raw_before": core.tuned.raw_weights(fp8, base_names)}
    return runs | {name: tune(core, model, clip_inputs) for name, model in zip(("fp8", "reference"), fp8_and_reference)}


def test_tuning_trains_the_weights_that_the_fp8_layers_compute_with(core, fp8_and_reference, tuned):
    fp8, raw_before = fp8_and_reference[0], tuned["raw_before"]
    (inflated, result), (reference_inflated, expected) = tuned["fp8"], tuned["reference"]
    every, chosen = core.tuned.every_name(inflated), core.tuning.trainable_names(inflated, PAPER)
    extra = set(every) - set(core.tuned.every_name(reference_inflated))
    assert all(k.endswith(".scale_weight") for k in extra)  # ComfyUI 0.3 keeps the scales as tensors apart
    before, after = core.tuned.effective_weights(inflated, every), core.tuned.effective_weights(result.model, every)
    assert {k for k in every if not torch.equal(before[k], after[k])} == set(chosen)
    assert all(abs(a - b) <= LOSS_TOLERANCE * b for a, b in zip(result.losses, expected.losses))
    start = core.tuned.effective_weights(reference_inflated, chosen)
    end = core.tuned.effective_weights(expected.model, chosen)
    errors = {n: relative_error(after[n] - before[n], end[n] - start[n]) for n in chosen}
    worst = max(errors, key=errors.get)
    print(f"tuned changes: worst relative error {errors[worst]:.1e} ({worst})")
    assert errors[worst] <= DELTA_TOLERANCE
    raw_after = core.tuned.raw_weights(fp8, list(raw_before))
    assert all(torch.equal(raw_before[k], raw_after[k]) for k in raw_before)  # the base model is unchanged


def test_inversion_sampling_saving_and_loading_run_on_the_tuned_fp8_model(core, fp8_and_reference, tuned,
                                                                          clip_inputs, tmp_path):
    edits, saved = [], []
    for _, result in (tuned["fp8"], tuned["reference"]):
        with torch.inference_mode():
            inverted = core.sampling.ddim_invert(result.model, clip_inputs["latents"], clip_inputs["empty"], 3,
                                                 callback=lambda *a: None)
            edits.append(core.sampling.ddim_sample(result.model, clip_inputs["positive"], clip_inputs["empty"],
                                                   inverted, 3, 12.5, 0.0, 0, True, callback=lambda *a: None))
        path = tmp_path / f"{len(saved)}.safetensors"
        core.weights.save_tuned(result.model, path)
        saved.append(path)
    error = relative_error(edits[0], edits[1])
    print(f"edit: relative error {error:.2e} against the reference")
    assert torch.isfinite(edits[0]).all() and error <= EDIT_TOLERANCE
    tensors, reference_tensors = (core.weights.read_weights(p)[0] for p in saved)
    assert tensors.keys() == reference_tensors.keys()
    assert all(torch.equal(tensors[k], reference_tensors[k])  # the untrained zeros (norm_temp.bias)
               or relative_error(tensors[k], reference_tensors[k]) <= DELTA_TOLERANCE for k in tensors)
    with torch.inference_mode():
        loaded = core.weights.load_tuned(fp8_and_reference[0], saved[0])
    to_ours = core.weights.official_to_comfy(loaded.model.model_config.unet_config)
    got = core.tuned.effective_weights(loaded, [to_ours[k] for k in tensors])
    assert all(torch.allclose(got[to_ours[k]], v, rtol=1e-6, atol=1e-7) for k, v in tensors.items())


@pytest.fixture
def fp8_matrix_mult_model(comfy_nodes, tiny_checkpoint, tmp_path, monkeypatch):
    """The checkpoint marked for fp8 matrix multiplication, loaded as on a GPU with fp8 compute (forced here, as
    --supports-fp8-compute does): ComfyUI 0.3 then multiplies in fp8 with torch._scaled_mm, which has no backward;
    ComfyUI 0.33's quantised layers have a training path of their own."""
    import comfy.model_management
    import comfy.sd

    from tav_core.testing.checkpoints import write_scaled_fp8_checkpoints

    monkeypatch.setattr(comfy.model_management, "SUPPORT_FP8_OPS", True)
    path, _ = write_scaled_fp8_checkpoints(tiny_checkpoint, tmp_path / "fp8.safetensors", tmp_path / "reference",
                                           fp8_matrix_mult=True)
    with torch.inference_mode():
        return comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=False)[0]


def test_fp8_matrix_multiplication_trains_as_weight_only_fp8_does_and_samples_in_fp8(
        core, tuned, fp8_matrix_mult_model, clip_inputs, monkeypatch):
    """Training casts the weights per operation, as the weight-only checkpoint does: the same tuned changes,
    bit for bit. (ComfyUI 0.33 would train its quantised layers with fp8 inputs: 0.36 off.)"""
    import comfy.ops

    fp8_calls = []
    scaled_fp8_ops = hasattr(comfy.ops, "scaled_fp8_ops")  # ComfyUI 0.3
    if scaled_fp8_ops:
        fp8_linear = comfy.ops.fp8_linear
        monkeypatch.setattr(comfy.ops, "fp8_linear", lambda self, x: fp8_calls.append(1) or fp8_linear(self, x))
    else:
        apply = comfy.ops.QuantLinearFunc.apply  # the training path with fp8 inputs
        monkeypatch.setattr(comfy.ops.QuantLinearFunc, "apply", lambda *a: fp8_calls.append(1) or apply(*a))
    inflated, result = tune(core, fp8_matrix_mult_model, clip_inputs)
    assert not fp8_calls
    chosen, every = core.tuning.trainable_names(inflated, PAPER), core.tuned.every_name(inflated)
    before, after = core.tuned.effective_weights(inflated, every), core.tuned.effective_weights(result.model, every)
    assert {k for k in every if not torch.equal(before[k], after[k])} == set(chosen)
    weight_only_inflated, weight_only = tuned["fp8"]
    start = core.tuned.effective_weights(weight_only_inflated, chosen)
    end = core.tuned.effective_weights(weight_only.model, chosen)
    assert all(torch.equal(after[n] - before[n], end[n] - start[n]) for n in chosen)
    with torch.inference_mode():
        inverted = core.sampling.ddim_invert(result.model, clip_inputs["latents"], clip_inputs["empty"], 1,
                                             callback=lambda *a: None)
    assert torch.isfinite(inverted).all()
    if scaled_fp8_ops:
        assert fp8_calls
    else:  # the training switch is gone: sampling multiplies with fp8 inputs
        assert first_to_q(fp8_matrix_mult_model)._full_precision_mm is False
