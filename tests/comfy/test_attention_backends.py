"""Training under ComfyUI's inference-only attention backends: --use-flash-attention and --use-sage-attention.

Both need CUDA and their packages, so the packages are stand-ins (tests/stand_ins: their interfaces, exact
attention, and their autograd behaviour), and ComfyUI's own dispatch (`attention_flash`, `attention_sage`)
runs unchanged around them: flash-attn inside a custom op without an autograd formula, so backward through
it raises; sage attention outside autograd, so the projections before it silently get no gradient
(thu-ml/SageAttention#60, bghira/SimpleTuner#1183).
"""
import importlib.util
import logging
from pathlib import Path

import pytest
import torch

PAPER = "paper (attn1.to_q, attn2.to_q, attn_temp)"
INFERENCE_ONLY = ("flash", "sage")
STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"


def stand_in(package: str):
    spec = importlib.util.spec_from_file_location(f"stand_in_{package}", STAND_INS / package / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ComfyUI's module global that each backend calls, and the stand-in for it.
PACKAGE_FUNCTIONS = {"flash": ("flash_attn_func", stand_in("flash_attn").flash_attn_func),
                     "sage": ("sageattn", stand_in("sageattention").sageattn)}


@pytest.fixture(autouse=True)
def unload_what_the_test_sampled(comfy_nodes):
    """Unload the tuned models these tests sample, in inference mode as ComfyUI's nodes would: ComfyUI 0.33.0
    gives an unpatched weight back as an ordinary tensor outside it, and later tests expect the shared
    checkpoint's weights as ComfyUI's loader leaves them."""
    import comfy.model_management

    yield
    with torch.inference_mode():
        comfy.model_management.unload_all_models()


@pytest.fixture
def use_backend(comfy_nodes, monkeypatch):
    """use_backend(name) makes ComfyUI's attention `attention_<name>`, as its launch option would at import."""
    import comfy.ldm.modules.attention as attention

    for global_name, function in PACKAGE_FUNCTIONS.values():
        monkeypatch.setattr(attention, global_name, function, raising=False)

    def use(name: str):
        function = getattr(attention, f"attention_{name}")
        monkeypatch.setattr(attention, "optimized_attention", function)
        monkeypatch.setattr(attention, "optimized_attention_masked", function)
        return function

    return use


def tune(core, model, inputs, steps=2):
    inflated = core.inflate.inflate(model, seed=0)
    with torch.inference_mode():
        return core.tuning.tune(inflated, inputs["positive"], {"samples": inputs["latents"]},
                                core.tuning.TuneSettings(steps=steps, learning_rate=1e-3, precision="fp32")), inflated


def deltas(core, inflated, tuned) -> dict:
    names = core.tuned.every_name(inflated)
    before, after = core.tuned.effective_weights(inflated, names), core.tuned.effective_weights(tuned, names)
    return {n: after[n] - before[n] for n in names if not torch.equal(after[n], before[n])}


@pytest.fixture(scope="module")
def pytorch_tune(core, sd15, clip_inputs):
    """The reference: the same tune under PyTorch's SDPA (`attention_pytorch`)."""
    import comfy.ldm.modules.attention as attention

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention, "optimized_attention", attention.attention_pytorch)
        mp.setattr(attention, "optimized_attention_masked", attention.attention_pytorch)
        result, inflated = tune(core, sd15[0], clip_inputs)
    return deltas(core, inflated, result.model)


@pytest.mark.parametrize("name", INFERENCE_ONLY)
def test_the_stand_ins_compute_attention_but_break_backward_as_the_packages_do(use_backend, name):
    import comfy.ldm.modules.attention as attention

    function = use_backend(name)
    q, k, v = (torch.randn(2, 16, 4 * 40, generator=torch.Generator().manual_seed(i), requires_grad=True)
               for i in range(3))
    out = function(q, k, v, 4)
    expected = attention.attention_pytorch(q, k, v, 4)
    assert (out - expected).abs().max().item() < 1e-5
    if name == "flash":
        with pytest.raises(RuntimeError, match="no autograd formula"):
            out.sum().backward()
    else:
        assert not out.requires_grad


@pytest.mark.parametrize("name", INFERENCE_ONLY)
def test_tuning_trains_every_chosen_tensor_as_under_pytorch_attention(core, sd15, clip_inputs, pytorch_tune,
                                                                      use_backend, name, caplog, monkeypatch):
    """The training clone computes attention with PyTorch's SDPA where ComfyUI's has no backward, so the tune is
    the reference tune exactly; sampling afterwards keeps ComfyUI's backend."""
    import comfy.ldm.modules.attention as attention

    function = use_backend(name)
    with caplog.at_level(logging.INFO):
        result, inflated = tune(core, sd15[0], clip_inputs)
    got = deltas(core, inflated, result.model)
    assert set(got) == set(core.tuning.trainable_names(inflated, PAPER))
    assert set(got) == set(pytorch_tune)
    assert all(torch.equal(got[n], pytorch_tune[n]) for n in got)
    assert f"attention_{name}" in caplog.text and "no backward" in caplog.text
    assert attention.optimized_attention is function

    calls = []
    global_name, package_function = PACKAGE_FUNCTIONS[name]
    monkeypatch.setattr(attention, global_name, lambda *a, **k: calls.append(1) or package_function(*a, **k))
    with torch.inference_mode():
        core.sampling.ddim_invert(result.model, clip_inputs["latents"], clip_inputs["empty"], 1,
                                  callback=lambda *a: None)
    assert calls


def test_a_models_own_inference_only_override_is_left_out_of_training_only(core, sd15, clip_inputs, pytorch_tune,
                                                                           use_backend):
    """A node's per-model attention override (transformer_options["optimized_attention_override"], as sage
    attention patch nodes and ComfyUI's set_model_optimized_attention set it) runs in sampling, in the pack's
    sparse-causal and temporal attention as in ComfyUI's cross-attention; the training clone replaces it."""
    import comfy.ldm.modules.attention as attention

    use_backend("pytorch")
    sage = attention.attention_sage  # calling the stand-in package, which the fixture put in place
    calls = {"sparse-causal": 0, "cross": 0, "temporal": 0, "other": 0}

    def sage_override(func, q, k, v, *args, **kwargs):
        frames = clip_inputs["latents"].shape[0]
        kind = "cross" if k.shape[1] == 77 else "sparse-causal" if k.shape[1] == 2 * q.shape[1] else \
            "temporal" if q.shape[1] == frames else "other"
        calls[kind] += 1
        return sage(q, k, v, *args, **kwargs)

    model = sd15[0].clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sage_override
    result, inflated = tune(core, model, clip_inputs)
    assert not any(calls.values())
    got = deltas(core, inflated, result.model)
    assert set(got) == set(pytorch_tune) and all(torch.equal(got[n], pytorch_tune[n]) for n in got)
    assert result.model.model_options["transformer_options"]["optimized_attention_override"] is sage_override
    assert attention.optimized_attention is attention.attention_pytorch

    with torch.inference_mode():
        core.sampling.ddim_invert(result.model, clip_inputs["latents"], clip_inputs["empty"], 1,
                                  callback=lambda *a: None)
    blocks = len(list(core.inflate.transformer_blocks(inflated.model.diffusion_model)))
    assert calls["sparse-causal"] == calls["cross"] == calls["temporal"] > 0 and calls["other"] == 0
    assert calls["cross"] % blocks == 0


def test_an_attention_swapped_in_past_comfyuis_wrapper_stops_training_with_a_clear_error(core, pack, sd15, clip_inputs,
                                                                                         monkeypatch):
    """What no override reaches: an old-style patch that assigns its own function to ComfyUI's module."""
    from importlib import import_module

    import comfy.ldm.modules.attention as attention

    null_text = import_module(f"{pack.__name__}.tav_core.null_text")

    pytorch = attention.attention_pytorch

    def kernel_attention(q, k, v, heads, mask=None, **kwargs):
        with torch.no_grad():
            return pytorch(q, k, v, heads, mask=mask, **kwargs)

    monkeypatch.setattr(attention, "optimized_attention", kernel_attention)
    with pytest.raises(core.tuning.TuneError, match=r"chosen tensors got no gradient.*kernel_attention"):
        tune(core, sd15[0], clip_inputs)
    with pytest.raises(null_text.NullTextError, match=r"no gradient from the unconditional embedding.*kernel_attention"):
        with torch.inference_mode():
            null_text.null_text_invert(core.inflate.inflate(sd15[0], seed=0), clip_inputs["latents"][:2],
                                       clip_inputs["positive"], clip_inputs["empty"], 1, 7.5, 1, 0.0)


def test_null_text_inversion_optimises_the_embedding_under_sage_attention(core, pack, sd15, clip_inputs, use_backend):
    """Its gradient reaches the unconditional embedding through cross-attention only: under sage attention
    there would be none."""
    from importlib import import_module

    null_text = import_module(f"{pack.__name__}.tav_core.null_text")
    inflated = core.inflate.inflate(sd15[0], seed=0)
    start = clip_inputs["empty"][0][0].float()
    uncond = {}
    for name in ("pytorch", "sage"):
        use_backend(name)
        with torch.inference_mode():
            uncond[name] = null_text.null_text_invert(inflated, clip_inputs["latents"][:2], clip_inputs["positive"],
                                                      clip_inputs["empty"], 1, 7.5, 2, 0.0)[1].uncond
    assert not torch.equal(uncond["pytorch"][0], start[0])
    assert torch.equal(uncond["sage"], uncond["pytorch"])
