"""Long clips: frame windows with the sparse-causal anchor, on core's context-window machinery.

References: today's unwindowed path (window >= clip), a naive loop that runs the windows written out
plainly with a per-frame attention patch of its own, and a frame-wise function model.
"""
import pytest
import torch

from tav_core.testing.comfy_inprocess import encode_prompts, inflate_with_active_temporal_layers

FRAMES = 10
WINDOW = 4
OVERLAP = 2
STEPS = 2
CFG = 7.5


def relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def latents(sd15, core):
    g = torch.Generator().manual_seed(3)
    # A smooth random walk over frames: neighbouring frames alike, frame 0 unlike the late ones.
    steps = torch.randn(FRAMES, 4, 8, 8, generator=g) * 0.3
    return (torch.randn(1, 4, 8, 8, generator=g) + steps.cumsum(0)) * 3.0


@pytest.fixture(scope="module")
def prompts(sd15):
    return encode_prompts(sd15[1], "", "a red car")


@pytest.fixture(scope="module")
def inflated(sd15, core):
    return inflate_with_active_temporal_layers(core.inflate, sd15[0])


def invert_sample(core, model, latents, prompts, steps=STEPS):
    with torch.inference_mode():
        inverted = core.sampling.ddim_invert(model, latents, prompts[""], steps)
        return core.sampling.ddim_sample(model, prompts["a red car"], prompts[""], inverted, steps, CFG, 0.0, 0,
                                         from_inversion=True)


# --- the windowing rule, plainly ---------------------------------------------------------------------

def plain_windows(frames, length, overlap):
    """Core's "standard_static" schedule: windows every length - overlap frames, the last one moved back."""
    starts, start = [], 0
    while start + length < frames:
        starts.append(start)
        start += length - overlap
    starts.append(frames - length)
    return [list(range(s, s + length)) for s in starts]


def pyramid(length):
    half = (length + 1) // 2
    up = list(range(1, half + 1))
    return up + up[::-1][length % 2:]


def test_window_layout_rule(core):
    windows = core.windows
    assert windows.anchors_for([0, 1, 2, 3]) == []
    assert windows.anchors_for([1, 2, 3]) == [0]
    assert windows.anchors_for([6, 7, 8, 9]) == [0, 5]
    assert windows.anchors_for([4, 6, 8]) == [0, 3, 5, 7]  # a strided window needs every frame's i-1
    rows, former = windows.layout([6, 7, 8, 9])
    assert rows == [0, 5, 6, 7, 8, 9]
    # frame 0 -> itself; anchor 5 -> itself (its frame 4 is absent); 6 -> 5, 7 -> 6, ...
    assert former.tolist() == [0, 1, 1, 2, 3, 4]
    assert plain_windows(FRAMES, WINDOW, OVERLAP) == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert pyramid(4) == [1, 2, 2, 1] and pyramid(5) == [1, 2, 3, 2, 1]


def test_a_window_no_shorter_than_the_clip_is_todays_path(core, inflated, latents, prompts):
    today = invert_sample(core, inflated, latents, prompts)
    for window in (FRAMES, FRAMES + 5):
        got = invert_sample(core, core.windows.with_windows(inflated, window, OVERLAP), latents, prompts)
        assert torch.equal(got, today), window
    assert core.windows.with_windows(inflated, 0, OVERLAP) is inflated


class NaiveWindowedEps:
    """eps of the windowed model, written out: each window's rows as one video, per-frame attention."""

    def __init__(self, core, patcher, anchored=True):
        self.core, self.anchored = core, anchored
        self.patcher = patcher.clone()
        self.rows = None
        for _, _, key in core.inflate.transformer_blocks(patcher.model.diffusion_model):
            self.patcher.set_model_attn1_replace(self.attention, *key)

    def attention(self, q, k, v, extra_options):
        heads, rows = extra_options["n_heads"], self.rows
        frames = len(rows)
        out = torch.empty_like(q)
        for b in range(q.shape[0] // frames):
            for r, frame in enumerate(rows):
                first = rows.index(0) if 0 in rows else 0
                former = rows.index(frame - 1) if frame - 1 in rows else r
                if not self.anchored:  # window-local: its own first frame and previous row
                    first, former = 0, max(r - 1, 0)
                i, j0, j1 = b * frames + r, b * frames + first, b * frames + former
                keys = torch.cat([k[j0], k[j1]]) if frames > 1 else k[i]
                values = torch.cat([v[j0], v[j1]]) if frames > 1 else v[i]
                d = q.shape[-1] // heads
                qh = q[i].reshape(-1, heads, d).transpose(0, 1)
                kh = keys.reshape(-1, heads, d).transpose(0, 1)
                vh = values.reshape(-1, heads, d).transpose(0, 1)
                weights = torch.softmax(qh @ kh.transpose(1, 2) / d ** 0.5, dim=-1)
                out[i] = (weights @ vh).transpose(0, 1).reshape(-1, heads * d)
        return out

    def unet_eps(self, x, t, context):
        self.rows = self.current_rows
        unet = self.patcher.model.diffusion_model
        options = self.core.inflate.call_options(self.patcher, len(self.rows))
        return unet(x, torch.full((x.shape[0],), float(t)), context=context.expand(x.shape[0], -1, -1),
                    transformer_options=options).float()

    def eps_fn(self, contexts, cfg=1.0):
        def eps(x, t):
            fused = torch.zeros_like(x)
            counts = torch.zeros(x.shape[0], 1, 1, 1)
            for window in plain_windows(x.shape[0], WINDOW, OVERLAP):
                s = window[0]
                anchors = [f for f in sorted({0, s - 1}) if f >= 0 and f not in window] if self.anchored else []
                self.current_rows = anchors + window
                xw = x[self.current_rows]
                if len(contexts) == 1:
                    out = self.unet_eps(xw, t, contexts[0])
                else:
                    both = torch.cat([c.expand(xw.shape[0], -1, -1) for c in contexts])
                    cond, uncond = self.unet_eps(torch.cat([xw, xw]), t, both).chunk(2)
                    out = uncond + cfg * (cond - uncond)
                weights = torch.tensor(pyramid(len(window)), dtype=x.dtype).reshape(-1, 1, 1, 1)
                fused[window] += out[len(anchors):] * weights
                counts[window] += weights
            return fused / counts

        return eps


def test_anchored_windows_match_the_naive_windowed_reference(core, inflated, latents, prompts):
    windowed = core.windows.with_windows(inflated, WINDOW, OVERLAP)
    with torch.inference_mode():
        got_inverted = core.sampling.ddim_invert(windowed, latents, prompts[""], STEPS)
    alphas = core.schedule.scaled_linear_alphas_cumprod()
    scale = 0.18215
    last = alphas[core.schedule.ddim_timesteps(STEPS)[0]]
    results = {}
    for anchored in (True, False):
        naive = NaiveWindowedEps(core, inflated, anchored)
        core.inflate.load(naive.patcher)
        with torch.inference_mode():
            expected = core.schedule.ddim_invert(naive.eps_fn([prompts[""][0][0]]), latents * scale, STEPS, alphas)
        results[anchored] = relative_error(got_inverted * scale * last.sqrt(), expected)
    with torch.inference_mode():
        whole = core.sampling.ddim_invert(inflated, latents, prompts[""], STEPS)
    print(f"windowed inversion vs naive anchored {results[True]:.1e}, vs window-local {results[False]:.1e}, "
          f"vs whole clip {relative_error(got_inverted, whole):.1e}")
    assert results[True] < 1e-4, results
    assert results[False] > 1e-3, results  # the anchor changes the result: the check can fail
    assert relative_error(got_inverted, whole) > 1e-3  # windows are an approximation of the whole clip


def framewise_model(model, mean=0.5, std=1.0):
    """The exact denoiser of N(mean, std^2) data, frame by frame: the same function on every frame."""
    patched = model.clone()

    def denoise(apply_model, args):
        x, sigma = args["input"], args["timestep"].view(-1, 1, 1, 1)
        return mean + std ** 2 / (std ** 2 + sigma ** 2) * (x - mean) + 0.1 * torch.tanh(x)

    patched.set_model_unet_function_wrapper(denoise)
    return patched


@pytest.mark.parametrize("window,overlap", [(WINDOW, OVERLAP), (3, 0), (4, 3)])
def test_overlap_fusion_of_a_framewise_model_equals_the_whole_clip(core, inflated, latents, prompts, window, overlap):
    model = framewise_model(inflated)
    whole = invert_sample(core, model, latents, prompts, steps=3)
    windowed = invert_sample(core, core.windows.with_windows(model, window, overlap), latents, prompts, steps=3)
    assert relative_error(windowed, whole) < 1e-6


def test_core_context_windows_node_runs_with_the_anchor(core, inflated, latents, prompts):
    import comfy.context_windows
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["ContextWindowsManual"]
    schema_inputs = {i.id for i in node.define_schema().inputs}
    values = dict(model=inflated, context_length=WINDOW, context_overlap=OVERLAP,
                  context_schedule=comfy.context_windows.ContextSchedules.STATIC_STANDARD, context_stride=1,
                  closed_loop=False, fuse_method=comfy.context_windows.ContextFuseMethods.PYRAMID, dim=0)
    if "freenoise" in schema_inputs:  # newer core
        values["freenoise"] = False
    with_core = node.execute(**values)[0]
    got = invert_sample(core, with_core, latents, prompts)
    ours = invert_sample(core, core.windows.with_windows(inflated, WINDOW, OVERLAP), latents, prompts)
    assert torch.equal(got, ours)
    assert type(with_core.model_options["context_handler"]) is comfy.context_windows.IndexListContextHandler


def test_an_unanchored_window_or_handler_fails_clearly(core, inflated, latents, prompts):
    import comfy.context_windows

    class OtherHandler(comfy.context_windows.IndexListContextHandler):
        pass

    model = inflated.clone()
    model.model_options["context_handler"] = OtherHandler(
        comfy.context_windows.get_matching_context_schedule("standard_static"),
        comfy.context_windows.get_matching_fuse_method("pyramid"), context_length=WINDOW, context_overlap=1)
    with pytest.raises(ValueError, match="anchor"):
        invert_sample(core, model, latents, prompts)
    # A bare core window in the options, as a handler that does not know Tune-A-Video would leave it.
    options = core.inflate.call_options(inflated, WINDOW)
    options["context_window"] = core.windows._core_window([4, 5, 6, 7], FRAMES)  # both versions' signature
    core.inflate.load(inflated)
    with pytest.raises(ValueError, match="frame 0"), torch.inference_mode():
        inflated.model.diffusion_model(latents[:WINDOW], torch.full((WINDOW,), 500.0),
                                       context=prompts[""][0][0].expand(WINDOW, -1, -1), transformer_options=options)


def test_bad_window_values_name_the_input(pack, core, inflated, latents, prompts):
    import nodes as comfy_nodes

    invert_node = comfy_nodes.NODE_CLASS_MAPPINGS["TAVDDIMInvert"]
    latent = {"samples": latents}
    with pytest.raises(ValueError, match="window_frames is -1"):
        invert_node.execute(inflated, latent, prompts[""], 2, window_frames=-1, window_overlap=0)
    with pytest.raises(ValueError, match="window_overlap 4 must be smaller than window_frames 4"):
        invert_node.execute(inflated, latent, prompts[""], 2, window_frames=4, window_overlap=4)
    with pytest.raises(ValueError, match="window_overlap is -1"):
        invert_node.execute(inflated, latent, prompts[""], 2, window_frames=4, window_overlap=-1)
    sample_node = comfy_nodes.NODE_CLASS_MAPPINGS["TAVVideoSample"]
    with pytest.raises(ValueError, match="window_overlap 5 must be smaller"):
        sample_node.execute(inflated, prompts["a red car"], prompts[""], latent, 2, CFG, 0, 0.0, window_frames=5,
                            window_overlap=5)
    with pytest.raises(core.tuning.TuneError, match="window_frames is -2"):
        core.tuning.TuneSettings(window_frames=-2)
    # A window longer than the clip is fine: the whole clip.
    out = invert_node.execute(inflated, latent, prompts[""], 2, window_frames=FRAMES * 4, window_overlap=4)
    assert out[0]["samples"].shape == latents.shape


# --- One-Shot Tune on windows ----------------------------------------------------------------------------

def tune(core, model, positive, latents, **overrides):
    # fp32: "auto" is bf16 on CPUs with AMX, and the naive reference computes in fp32.
    settings = core.tuning.TuneSettings(**{"steps": 2, "learning_rate": 1e-3, "seed": 5, "precision": "fp32",
                                           **overrides})
    with torch.inference_mode():
        return core.tuning.tune(model, positive, {"samples": latents}, settings)


def tuned_deltas(core, result):
    names = core.tuning.trainable_names(result.model, core.tuning.TuneSettings().trainable)
    return core.tuned.effective_weights(result.model, names)


def test_tuning_with_a_window_no_shorter_than_the_clip_is_bit_identical(core, inflated, latents, prompts):
    today = tune(core, inflated, prompts["a red car"], latents)
    for window in (FRAMES, FRAMES + 3):
        got = tune(core, inflated, prompts["a red car"], latents, window_frames=window)
        assert got.losses == today.losses
        expected = tuned_deltas(core, today)
        assert all(torch.equal(v, expected[k]) for k, v in tuned_deltas(core, got).items())
        assert core.tuned.tuned_metadata(got.model)["window_frames"] == 0


def test_tuning_windows_follow_the_anchor_rule(core, inflated, latents, prompts):
    """With a learning rate far below fp32's resolution (AdamW moves each weight by about lr, weight
    decay by lr * 1e-2 of it: both round away) every step's loss is the start model's on its window:
    recompute it plainly."""
    seed, window = 5, 3
    got = tune(core, inflated, prompts["a red car"], latents, steps=3, learning_rate=1e-30, window_frames=window,
               seed=seed)
    naive = NaiveWindowedEps(core, inflated, anchored=True)
    core.inflate.load(naive.patcher)
    sampling = inflated.get_model_object("model_sampling")
    x0_clip = latents * 0.18215
    windows_rng, rng = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    expected, starts = [], []
    for _ in range(3):
        start = int(torch.randint(0, FRAMES - window + 1, (1,), generator=windows_rng))
        members = list(range(start, start + window))
        anchors = [f for f in sorted({0, start - 1}) if f >= 0 and f not in members]
        naive.current_rows = anchors + members
        t = int(torch.randint(0, len(sampling.sigmas), (1,), generator=rng))
        x0 = x0_clip[naive.current_rows]
        eps = torch.randn(x0.shape, generator=rng)
        sigma = float(sampling.sigmas[t])
        with torch.inference_mode():
            out = naive.unet_eps((x0 + sigma * eps) / (1 + sigma ** 2) ** 0.5, t, prompts["a red car"][0][0])
        expected.append(float(torch.nn.functional.mse_loss(out[len(anchors):], eps[len(anchors):])))
        starts.append(start)
    print("window starts", starts, "losses", got.losses, "naive", expected)
    assert len(set(starts)) > 1 and max(starts) > 1  # windows with anchors were drawn
    assert got.losses == pytest.approx(expected, rel=1e-4)


def test_a_windowed_tuning_trains_and_is_keyed_and_recorded_by_its_window(core, inflated, latents, prompts):
    result = tune(core, inflated, prompts["a red car"], latents, window_frames=4)
    start = core.tuned.effective_weights(inflated, list(tuned_deltas(core, result)))
    assert any(not torch.equal(v, start[k]) for k, v in tuned_deltas(core, result).items())
    assert core.tuned.tuned_metadata(result.model)["window_frames"] == 4

    def key(window):
        return core.tune_cache.cache_key(inflated, prompts["a red car"], {"samples": latents},
                                         core.tuning.TuneSettings(window_frames=window), None)

    assert key(0) == key(FRAMES) == key(FRAMES + 1)  # the whole clip, however asked for
    assert len({key(0), key(4), key(5)}) == 3


def test_tuning_refuses_core_context_windows_on_its_model(core, inflated, latents, prompts):
    model = core.windows.with_windows(inflated, WINDOW, OVERLAP)
    with pytest.raises(core.tuning.TuneError, match="window_frames"):
        tune(core, model, prompts["a red car"], latents)
