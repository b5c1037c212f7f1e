"""Video Edit (attention control): prompt-to-prompt on the inflated tiny SD1.5, against naive references.

- The controller's maps, on the tiny UNet's own attn2 and temporal layers, against softmax(q k^T / sqrt(d))
  computed in plain torch (float64), with the expected column moves worked out by hand from the prompts.
- Without replacement, each video of edit_sample is plain Video Sample of its prompt (the source video
  always is: nothing controls it); with null-text embeddings, the source is Video Sample through
  null_text.with_null_text.
- Local blend keeps the edited video equal to the source outside the mask.
"""
import math

import pytest
import torch

from tav_core.testing.comfy_inprocess import inflate_with_active_temporal_layers

FRAMES = 2
STEPS = 3
CFG = 7.5
SOURCE = "a rabbit is eating a watermelon"
SWAP = "a cat is eating a watermelon"
TOLERANCE = 1e-4


def relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def edit_core(pack):
    from tav_core.testing.comfy_inprocess import pack_core

    return pack_core("attention_control", "attention_edit", "inflate", "null_text", "prompt_tokens", "sampling",
                     "windows")


@pytest.fixture(scope="module")
def inflated(sd15, edit_core):
    return inflate_with_active_temporal_layers(edit_core.inflate, sd15[0])


@pytest.fixture(scope="module")
def clip(sd15):
    return sd15[1]


def encode(clip, text):
    with torch.inference_mode():
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))


@pytest.fixture(scope="module")
def inversion(edit_core, inflated, clip):
    """DDIM Invert's LATENT of random clip latents, under the source prompt (as Video-P2P inverts)."""
    raw = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sampling = edit_core.sampling
    with torch.inference_mode():
        inverted = sampling.ddim_invert(inflated, raw, encode(clip, SOURCE), STEPS)
    return {"samples": inverted, sampling.INVERSION_KEY: sampling.inversion_marker(inflated, STEPS, inverted)}


def video_sample(edit_core, model, clip, prompt, inversion, cfg=CFG):
    """Video Sample's DDIM of one prompt from the inversion, the empty prompt as negative."""
    with torch.inference_mode():
        return edit_core.sampling.ddim_sample(model, encode(clip, prompt), encode(clip, ""), inversion["samples"],
                                              STEPS, cfg, 0.0, 0, from_inversion=True)


def edit(edit_core, model, clip, inversion, edited=SWAP, **kwargs):
    options = {"cross_replace": 0.5, "self_replace": 0.5, "controller": "replace", **kwargs}
    with torch.inference_mode():
        return edit_core.attention_edit.edit_sample(model, clip, SOURCE, edited, inversion, STEPS, CFG, **options)


# --- token positions from ComfyUI's tokenizers ------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizers(edit_core):
    """ComfyUI's SD1, SD2 and SDXL tokenizers as a CLIP presents them (no text encoder weights needed)."""
    from types import SimpleNamespace

    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.sd2_clip

    made = {"sd1": comfy.sd1_clip.SD1Tokenizer(), "sd2": comfy.text_encoders.sd2_clip.SD2Tokenizer(),
            "sdxl": comfy.sdxl_clip.SDXLTokenizer()}
    return {name: SimpleNamespace(tokenizer=t, tokenize=t.tokenize_with_weights) for name, t in made.items()}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_word_positions_are_those_of_the_encoded_chunk(edit_core, tokenizers, family):
    pt = edit_core.prompt_tokens
    clip = tokenizers[family]
    prompt, tokens = pt.comfy_prompt(clip, "a (rabbit:1.2) is eating a watermelon, Capybara")
    # <start> a rabbit is eating a watermelon , cap y bara <end>: the weight syntax is not text
    assert prompt.length == 12
    assert prompt.positions("rabbit", pt.comfy_word(clip, "rabbit")) == [2]
    assert prompt.positions("a", pt.comfy_word(clip, "a")) == [1, 5]
    assert prompt.positions("capybara", pt.comfy_word(clip, "capybara")) == [8, 9, 10]
    assert prompt.positions("eating a", pt.comfy_word(clip, "eating a")) == [4, 5]
    for chunks in tokens.values():  # the positions index what CLIP Text Encode encodes
        assert chunks[0][2][1] == pytest.approx(1.2) and chunks[0][3][1] == 1.0
    with pytest.raises(pt.PromptError, match="longer than 77 tokens"):
        pt.comfy_prompt(clip, "a " * 80)


# --- the controller's maps on the tiny UNet's layers --------------------------------------------------

def naive_maps(q, k, heads):
    """softmax(q k^T / sqrt(d)) per head in float64: [rows, heads, Nq, Nk]."""
    rows, nq, inner = q.shape
    d = inner // heads
    q, k = q.double().reshape(rows, nq, heads, d), k.double().reshape(rows, k.shape[1], heads, d)
    return torch.softmax(torch.einsum("rihd,rjhd->rhij", q, k) / math.sqrt(d), dim=-1)


def identity_values(rows, keys, heads):
    """v whose output is the maps themselves: every head's values are the identity over the keys."""
    return torch.eye(keys).repeat(1, heads).expand(rows, keys, keys * heads)


def read_maps(out, heads):
    rows, nq, _ = out.shape
    return out.reshape(rows, nq, heads, -1).transpose(1, 2).double()


def controller(edit_core, model, clip, edited, controller_name, cross_replace=1.0, self_replace=1.0, **kwargs):
    ae = edit_core.attention_edit
    prompts = ae.tokenize_pair(clip, SOURCE, edited)
    plan = ae.plan_edit(clip, prompts, STEPS, cross_replace, self_replace, controller_name, **kwargs)
    levels = edit_core.sampling.ddim_levels(model, STEPS)
    return edit_core.attention_control.AttentionController(plan, levels, FRAMES, ae._default_attention), levels


@pytest.fixture(scope="module")
def attn2_call(inflated, clip):
    """What the attn2 replace patch of input block 1 receives for a call [uncond chunk; cond chunk]."""
    block = inflated.model.diffusion_model.input_blocks[1][1].transformer_blocks[0]
    heads, tokens = block.n_heads, 16  # a 4x4 activation
    rows = 4 * FRAMES
    x = torch.randn(rows, tokens, block.attn2.to_q.in_features, generator=torch.Generator().manual_seed(2))

    def call(edited):
        empty, source, target = (encode(clip, t)[0][0] for t in ("", SOURCE, edited))
        context = torch.cat([empty.expand(2 * FRAMES, -1, -1), source.expand(FRAMES, -1, -1),
                             target.expand(FRAMES, -1, -1)])
        with torch.inference_mode():
            return block.attn2.to_q(x), block.attn2.to_k(context)

    return call, heads, tokens, rows


def run_attn2(ctl, levels, attn2_call, edited, step=0):
    call, heads, tokens, rows = attn2_call
    q, k = call(edited)
    options = {"n_heads": heads, "dim_head": q.shape[-1] // heads, "cond_or_uncond": [1, 0], "block": ("input", 1),
               "block_index": 0, "sigmas": levels[step].expand(rows), "activations_shape": [rows, 320, 4, 4],
               "attn_precision": None}
    with torch.inference_mode():
        out = ctl.cross_attention(q, k, identity_values(rows, k.shape[1], heads), options)
    return read_maps(out, heads), naive_maps(q, k, heads)


def cond_videos(maps):
    """(uncond chunk, source video, edited video) of a [uncond; cond] call."""
    return maps[:2 * FRAMES], maps[2 * FRAMES:3 * FRAMES], maps[3 * FRAMES:]


def test_refine_copies_the_aligned_source_columns_and_keeps_the_added_word(edit_core, inflated, clip, attn2_call):
    edited = "a origami rabbit is eating a watermelon"
    ctl, levels = controller(edit_core, inflated, clip, edited, "refine")
    got, naive = run_attn2(ctl, levels, attn2_call, edited)
    uncond, source, target = cond_videos(naive)
    # By hand: edited tokens <start> a origami rabbit is eating a watermelon <end> (9); "origami" (2) is new,
    # the edit's positions 3..8 are the source's 2..7, and from 9 on (padding) each copies its own position.
    source_of = [0, 1, None, 2, 3, 4, 5, 6, 7] + list(range(9, 77))
    expected = target.clone()
    for j, i in enumerate(source_of):
        if i is not None:
            expected[..., j] = source[..., i]
    got_uncond, got_source, got_target = cond_videos(got)
    assert torch.allclose(got_uncond, uncond, atol=1e-6) and torch.allclose(got_source, source, atol=1e-6)
    assert torch.allclose(got_target, expected, atol=1e-6)
    assert (expected - target).abs().max() > 1e-3  # the moved columns differ from the edit's own


def test_replace_spreads_the_source_word_over_a_longer_word(edit_core, inflated, clip, attn2_call):
    edited = "a capybara is eating a watermelon"  # capybara: 3 tokens (cap y bara) for rabbit's 1
    ctl, levels = controller(edit_core, inflated, clip, edited, "replace")
    got, naive = run_attn2(ctl, levels, attn2_call, edited)
    _, source, _ = cond_videos(naive)
    expected = torch.zeros_like(source)
    expected[..., :2] = source[..., :2]
    expected[..., 2:5] = source[..., 2:3] / 3
    expected[..., 5:] = source[..., 3:75]  # the rest shifted by two; the source's last two padding tokens drop
    assert torch.allclose(cond_videos(got)[2], expected, atol=1e-6)


def test_reweight_on_replace_scales_only_the_reweighted_word(edit_core, inflated, clip, attn2_call):
    ctl, levels = controller(edit_core, inflated, clip, SWAP, "replace", reweight=[("cat", 2.0)])
    got, naive = run_attn2(ctl, levels, attn2_call, SWAP)
    _, source, _ = cond_videos(naive)
    expected = source.clone()
    expected[..., 2] *= 2  # "cat" at position 2; the swap itself is one to one
    assert torch.allclose(cond_videos(got)[2], expected, atol=1e-6)


def test_after_the_cross_replace_steps_the_maps_are_the_models_own(edit_core, inflated, clip, attn2_call):
    ctl, levels = controller(edit_core, inflated, clip, SWAP, "replace", cross_replace=0.5)
    assert ctl.plan.cross_steps == 2  # int(0.5 * (3 + 1))
    got, naive = run_attn2(ctl, levels, attn2_call, SWAP, step=1)
    assert not torch.allclose(cond_videos(got)[2], cond_videos(naive)[2], atol=1e-4)
    # From step 2 on the patch runs the model's own attention (ComfyUI's optimized_attention), with real values.
    call, heads, tokens, rows = attn2_call
    q, k = call(SWAP)
    v = torch.randn(k.shape, generator=torch.Generator().manual_seed(6))
    options = {"n_heads": heads, "cond_or_uncond": [1, 0], "block": ("input", 1), "sigmas": levels[2].expand(rows),
               "activations_shape": [rows, 320, 4, 4], "attn_precision": None}
    with torch.inference_mode():
        out = ctl.cross_attention(q, k, v, options)
    expected = torch.einsum("rhij,rjhd->rihd", naive_maps(q, k, heads), v.double().reshape(rows, 77, heads, -1))
    assert torch.allclose(out.double(), expected.reshape(out.shape), atol=1e-5)


def test_the_blend_store_averages_the_words_maps_over_heads(edit_core, inflated, clip, attn2_call):
    ctl, levels = controller(edit_core, inflated, clip, SWAP, "replace", blend_words=("rabbit", "cat"))
    got, _ = run_attn2(ctl, levels, attn2_call, SWAP)
    _, source, target = cond_videos(got)
    # "rabbit" is position 2 of the source, "cat" position 2 of the edit; mean over the heads
    expected = torch.stack([source[..., 2].mean(1), target[..., 2].mean(1)])  # [2, F, tokens]
    x = torch.randn(2 * FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    blended = ctl.end_step(0, x)
    assert torch.allclose(ctl.store[16].double(), expected, atol=1e-6)
    mask = edit_core.attention_control.blend_mask(expected.float().reshape(2, FRAMES, 4, 4), (8, 8))
    assert torch.equal(ctl.last_mask, mask)
    assert torch.equal(blended[:FRAMES], x[:FRAMES])
    assert torch.equal(blended[FRAMES:], x[:FRAMES] + mask[:, None] * (x[FRAMES:] - x[:FRAMES]))


def test_temporal_maps_of_the_edit_are_the_sources_in_the_self_window(edit_core, inflated, clip):
    ctl, levels = controller(edit_core, inflated, clip, SWAP, "replace", self_replace=0.5)
    assert ctl.plan.self_window == (0, 1)  # int(0.5 * 3)
    path = edit_core.inflate.temporal_layers(inflated).paths[0]
    attn = edit_core.inflate.temporal_layers(inflated).layer(path).attn_temp
    tokens, heads = 5, attn.heads
    rows = 4 * tokens  # [cond chunk: source video's tokens, edited's; uncond chunk: the same]
    h = torch.randn(rows, FRAMES, attn.to_q.in_features, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        q, k = attn.to_q(h), attn.to_k(h)
    values = identity_values(rows, FRAMES, heads)
    defaults = []

    def default(q, k, v, heads, mask=None):
        defaults.append(q.shape)
        return torch.zeros(1)

    def run(step):
        options = {"cond_or_uncond": [0, 1], "sigmas": levels[step].expand(rows)}
        with torch.inference_mode():
            return ctl.temporal_attention(q, k, values, heads, transformer_options=options, default=default)

    got, naive = read_maps(run(0), heads), naive_maps(q, k, heads)
    expected = naive.clone()
    expected[tokens:2 * tokens] = naive[:tokens]  # the edited video's maps are the source's, token by token
    assert torch.allclose(got, expected, atol=1e-6)
    assert (naive[tokens:2 * tokens] - naive[:tokens]).abs().max() > 1e-3
    assert not defaults
    run(1)  # outside the window: the model's own attention
    assert defaults == [q.shape]


# --- edit_sample --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_videos(edit_core, inflated, clip, inversion):
    """Video Sample of each prompt from the inversion, before any edit ran."""
    return {prompt: video_sample(edit_core, inflated, clip, prompt, inversion) for prompt in (SOURCE, SWAP)}


BLEND = {"blend_words": ("rabbit", "cat"), "blend_threshold": 0.999, "reweight": [("cat", 2.0)]}


@pytest.fixture(scope="module")
def controlled(edit_core, inflated, clip, inversion, plain_videos):
    """(model options before, edited, source, controller) of a replace + reweight + local blend edit.

    Random weights give nearly flat maps (the pooled blend maps lie within 6% of their peak), hence
    the high blend threshold, so that the mask covers part of each frame.
    """
    before = repr(inflated.model_options)
    return (before, *edit(edit_core, inflated, clip, inversion, **BLEND))


def test_without_replacement_each_video_is_video_sample_of_its_prompt(edit_core, inflated, clip, inversion,
                                                                      plain_videos, controlled):
    edited, source, _ = edit(edit_core, inflated, clip, inversion, cross_replace=0.0, self_replace=0.0)
    errors = relative_error(edited, plain_videos[SWAP]), relative_error(source, plain_videos[SOURCE])
    print(f"edit_sample without replacement vs Video Sample: edited {errors[0]:.1e}, source {errors[1]:.1e}")
    assert max(errors) < TOLERANCE, errors
    _, controlled_edit, controlled_source, _ = controlled
    assert relative_error(controlled_edit, plain_videos[SWAP]) > 1e-3  # the control changes the edit ...
    assert relative_error(controlled_source, plain_videos[SOURCE]) < TOLERANCE  # ... and never the source


@pytest.mark.parametrize("mode", ["null-text", "fast", "fast-argument"])
def test_null_text_applies_to_the_source_video_only(edit_core, inflated, clip, inversion, plain_videos, mode):
    nt = edit_core.null_text
    fast = mode != "null-text"
    empty = encode(clip, "")[0][0][0].float()
    uncond = None if fast else empty + 0.5 * torch.randn(STEPS, *empty.shape, generator=torch.Generator().manual_seed(5))
    null = nt.NullText(uncond, CFG, fast, STEPS)
    if mode == "fast-argument":  # fast mode asked for on a plain DDIM inversion, with local blend
        edited, source, ctl = edit(edit_core, inflated, clip, inversion, cross_replace=0.0, self_replace=0.0,
                                   fast=True, blend_words=("rabbit", "cat"))
        assert ctl.last_mask is not None  # the null-text clone drives the same controller
    else:
        latent = {**inversion, nt.NULL_TEXT_KEY: null}
        edited, source, _ = edit(edit_core, inflated, clip, latent, cross_replace=0.0, self_replace=0.0)
    reference, cfg = nt.for_sampling(inflated, null, STEPS, CFG)
    expected_source = video_sample(edit_core, reference, clip, SOURCE, inversion, cfg)
    assert relative_error(source, expected_source) < TOLERANCE
    assert relative_error(source, plain_videos[SOURCE]) > 1e-3  # the null text (or fast mode) made a difference
    if mode != "fast-argument":  # (local blend changes the edit there)
        assert relative_error(edited, plain_videos[SWAP]) < TOLERANCE  # the edit keeps the empty prompt's uncond


def test_local_blend_keeps_the_source_outside_the_mask(controlled):
    _, edited, source, ctl = controlled
    mask = ctl.last_mask[:, None].expand_as(edited)
    print(f"local blend mask covers {mask.float().mean():.0%} of the latent")
    assert mask.any() and not mask.all()
    assert torch.equal(edited[~mask], source[~mask])
    assert (edited[mask] - source[mask]).abs().max() > 1e-3
    assert ctl.store_layers >= {(("input", 3), 0), (("output", 0), 0), (("output", 1), 0)}
    assert min(ctl.store) == 16  # the coarsest level with cross-attention in the down and up path: 4x4


def test_clones_of_the_controlled_model_share_its_controller(edit_core, inflated):
    ac = edit_core.attention_control
    ctl = ac.AttentionController(None, torch.ones(2), FRAMES, None)
    clone = edit_core.attention_edit.controlled_model(inflated, ctl, FRAMES).clone()
    options = clone.model_options["transformer_options"]
    patches = list(options["patches_replace"]["attn2"].values())
    assert patches and all(patch.controller is ctl for patch in patches)
    assert options[edit_core.inflate.TEMPORAL_ATTENTION_OPTION].__self__ is ctl


def test_the_base_model_keeps_no_patches(edit_core, inflated, clip, inversion, plain_videos, controlled):
    assert repr(inflated.model_options) == controlled[0]
    options = inflated.model_options.get("transformer_options", {})
    assert "attn2" not in options.get("patches_replace", {})
    assert edit_core.inflate.TEMPORAL_ATTENTION_OPTION not in options
    assert torch.equal(video_sample(edit_core, inflated, clip, SOURCE, inversion), plain_videos[SOURCE])


def test_a_controlnet_in_the_conditioning_steers_each_video_with_its_own_frames(edit_core, inflated, clip, inversion,
                                                                                plain_videos):
    import comfy.controlnet
    import nodes

    from tav_core.testing.checkpoints import cached_sd15_controlnet

    control = comfy.controlnet.load_controlnet(str(cached_sd15_controlnet()))
    hint = torch.rand(FRAMES, 64, 64, 3, generator=torch.Generator().manual_seed(7))  # one hint image per frame
    apply = nodes.NODE_CLASS_MAPPINGS["ControlNetApplyAdvanced"]()
    positive, negative = apply.apply_controlnet(encode(clip, SOURCE), encode(clip, ""), control, hint, 1.0, 0.0, 1.0)
    edited, source, _ = edit(edit_core, inflated, clip, inversion, cross_replace=0.0, self_replace=0.0,
                             control=positive)
    with torch.inference_mode():
        expected = edit_core.sampling.ddim_sample(inflated, positive, negative, inversion["samples"], STEPS, CFG, 0.0,
                                                  0, from_inversion=True)
    assert relative_error(source, expected) < TOLERANCE  # frame i of each video got hint i
    assert relative_error(source, plain_videos[SOURCE]) > 1e-3
    assert relative_error(edited, plain_videos[SWAP]) > 1e-3


@pytest.mark.parametrize("kwargs, edited, message", [
    ({}, "a big cat is eating a watermelon", "replace swaps words one for one"),
    ({"controller": "refine", "blend_words": ("dog", "cat")}, SWAP, "'dog' is not a word of the prompt"),
    ({"controller": "refine", "reweight": [("rabbit", 2.0)]}, SWAP, "'rabbit' is not a word of the prompt"),
    ({"controller": "reweight"}, SOURCE, "needs words to reweight"),
    ({"controller": "reweight", "reweight": [("cat", 2.0)]}, "a cat is eating", "as many tokens"),
    ({"controller": "swap"}, SWAP, "controller must be one of"),
    ({"cross_replace": 1.5}, SWAP, "cross_replace 1.5 is outside"),
    ({}, "a cat " + "very " * 80, "longer than 77 tokens"),
])
def test_bad_edits_are_refused_before_sampling(edit_core, inflated, clip, inversion, kwargs, edited, message):
    with pytest.raises(edit_core.attention_edit.EditError, match=message):
        edit(edit_core, inflated, clip, inversion, edited, **kwargs)


def test_the_latent_must_be_the_inversion_with_its_steps(edit_core, inflated, clip, inversion):
    ae = edit_core.attention_edit
    with pytest.raises(ae.EditError, match="not an inversion"):
        edit(edit_core, inflated, clip, {"samples": inversion["samples"]})
    with torch.inference_mode(), pytest.raises(ae.EditError, match="inverted with 3 steps"):
        ae.edit_sample(inflated, clip, SOURCE, SWAP, inversion, STEPS + 1)
    windowed = edit_core.windows.with_windows(inflated, 1, 0)
    with pytest.raises(ae.EditError, match="cannot run in context windows"):
        edit(edit_core, windowed, clip, inversion)
    null = edit_core.null_text.NullText(torch.zeros(STEPS, 77, 768), 5.0, False, STEPS)
    with pytest.raises(ae.EditError, match="optimised for cfg 5"):
        edit(edit_core, inflated, clip, {**inversion, edit_core.null_text.NULL_TEXT_KEY: null})
    with pytest.raises(ae.EditError, match="fast is True, but the latent is a null-text inversion"):
        edit(edit_core, inflated, clip, {**inversion, edit_core.null_text.NULL_TEXT_KEY: null}, fast=True)
    fast = edit_core.null_text.NullText(None, CFG, True, STEPS)
    with pytest.raises(ae.EditError, match="fast is False, but the latent is a fast-mode inversion"):
        edit(edit_core, inflated, clip, {**inversion, edit_core.null_text.NULL_TEXT_KEY: fast}, fast=False)
    with pytest.raises(ae.EditError, match="tav_null_text"):
        edit(edit_core, inflated, clip, {**inversion, edit_core.null_text.NULL_TEXT_KEY: "forged"})


# --- the node -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(pack):
    return pack.nodes.attention_edit.AttentionEditSample


def test_node_schema_has_tooltips_and_two_latents(node):
    info = node.GET_NODE_INFO_V1()
    assert info["description"] and info["category"] == "Tune-A-Video"
    inputs = {**info["input"]["required"], **info["input"]["optional"]}
    assert all(spec[1].get("tooltip") for spec in inputs.values())
    assert set(info["input"]["optional"]) >= {"reweight_words", "blend_source_word", "conditioning"}
    assert info["output"] == ["LATENT", "LATENT"] and all(info["output_tooltips"])


def test_node_runs_the_edit_and_reports_bad_words(edit_core, node, inflated, clip, inversion, controlled,
                                                  progress_hook):
    args = (inflated, clip, SOURCE, SWAP, inversion, STEPS, CFG, 0.5, 0.5, "replace")
    with torch.inference_mode():
        edited, source = node.execute(*args, reweight_words="cat", reweight_values="2", blend_source_word="rabbit",
                                      blend_edited_word="cat", blend_threshold=0.999).result
    assert progress_hook[0] == (1, STEPS) and progress_hook[-1] == (STEPS, STEPS)  # ComfyUI's progress bar
    _, expected, expected_source, _ = controlled
    assert torch.equal(edited["samples"], expected) and torch.equal(source["samples"], expected_source)
    assert edit_core.sampling.INVERSION_KEY not in edited and edit_core.sampling.INVERSION_KEY not in source
    prefix = r"Video Edit \(attention control\): "
    with pytest.raises(ValueError, match=prefix + "reweight_words has 1 words but reweight_values 2"):
        node.execute(*args, reweight_words="cat", reweight_values="2, 3")
    with pytest.raises(ValueError, match=prefix + "local blend needs both words"):
        node.execute(*args, blend_source_word="rabbit")
    with pytest.raises(ValueError, match=prefix + "the conditioning input carries no ControlNet"):
        node.execute(*args, conditioning=encode(clip, SOURCE))
