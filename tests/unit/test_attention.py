"""tav_core.attention against naive, independently written references."""
import math
from types import SimpleNamespace

import pytest
import torch

from tav_core.attention import (
    TemporalAttention,
    sparse_causal_attention,
    temporal_attention_for,
    video_group_norm,
)

B, F, N, HEADS, D = 2, 5, 7, 2, 4
C = HEADS * D


def naive_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head for one sample: q [Nq, C], k/v [Nk, C]."""
    d = q.shape[-1] // heads
    q, k, v = (t.reshape(t.shape[0], heads, d) for t in (q, k, v))
    weights = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(d), dim=-1)
    return torch.einsum("hij,jhd->ihd", weights, v).reshape(q.shape[0], heads * d)


def random(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- sparse causal

def naive_sparse_causal(q, k, v, heads, frames):
    out = torch.empty_like(q)
    for video in range(q.shape[0] // frames):
        for frame in range(frames):
            row = video * frames + frame
            first = video * frames
            former = video * frames + max(frame - 1, 0)
            keys = torch.cat([k[first], k[former]])
            values = torch.cat([v[first], v[former]])
            out[row] = naive_attention(q[row], keys, values, heads)
    return out


def test_sparse_causal_matches_naive_loop():
    q, k, v = (random(B * F, N, C, seed=s) for s in range(3))
    expected = naive_sparse_causal(q, k, v, HEADS, F)
    actual = sparse_causal_attention(q, k, v, HEADS, F)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def test_sparse_causal_single_frame_is_self_attention():
    q, k, v = (random(3, N, C, seed=s) for s in range(3))
    expected = torch.stack([naive_attention(q[i], k[i], v[i], HEADS) for i in range(3)])
    actual = sparse_causal_attention(q, k, v, HEADS, frames=1)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def test_sparse_causal_rejects_partial_videos():
    q = random(B * F + 1, N, C)
    with pytest.raises(ValueError, match="does not hold whole videos of 5 frames"):
        sparse_causal_attention(q, q, q, HEADS, F)


def test_sparse_causal_gathers_first_then_former_in_one_call():
    calls = []

    def recording(q, k, v, heads, mask=None):
        calls.append((q, k, v))
        return torch.zeros_like(q)

    q, k, v = (random(B * F, N, C, seed=s) for s in range(3))
    sparse_causal_attention(q, k, v, HEADS, F, attention_fn=recording)
    assert len(calls) == 1
    _, gathered_k, gathered_v = calls[0]
    # Memory linear in F: 2N keys per frame, not F*N.
    assert gathered_k.shape == gathered_v.shape == (B * F, 2 * N, C)
    # Order is [first frame, former frame], as the official checkpoints expect.
    for row in range(B * F):
        first, former = row - row % F, row - (row % F > 0)
        assert torch.equal(gathered_k[row], torch.cat([k[first], k[former]]))
        assert torch.equal(gathered_v[row], torch.cat([v[first], v[former]]))


# ----------------------------------------------------------- temporal attention

def naive_temporal(layer, x, frames):
    attn, norm = layer.attn_temp, layer.norm_temp
    out = x.clone()
    for video in range(x.shape[0] // frames):
        rows = slice(video * frames, (video + 1) * frames)
        for token in range(x.shape[1]):
            h = x[rows, token]  # [F, C]: one spatial position across frames
            mean = h.mean(-1, keepdim=True)
            var = ((h - mean) ** 2).mean(-1, keepdim=True)
            normed = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
            q, k, v = normed @ attn.to_q.weight.T, normed @ attn.to_k.weight.T, normed @ attn.to_v.weight.T
            mixed = naive_attention(q, k, v, attn.heads)
            out[rows, token] = h + mixed @ attn.to_out[0].weight.T + attn.to_out[0].bias
    return out


def randomised_layer():
    layer = TemporalAttention(C, HEADS, D, dtype=torch.float64)
    with torch.no_grad():
        for i, p in enumerate(layer.parameters()):
            p.copy_(random(*p.shape, seed=100 + i))
    return layer


def test_temporal_attention_matches_naive_loop():
    layer = randomised_layer()
    x = random(B * F, N, C, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, F), naive_temporal(layer, x, F), rtol=0, atol=1e-10)


def test_temporal_attention_checkpoint_key_names():
    keys = set(TemporalAttention(C, HEADS, D).state_dict())
    assert keys == {
        "norm_temp.weight", "norm_temp.bias",
        "attn_temp.to_q.weight", "attn_temp.to_k.weight", "attn_temp.to_v.weight",
        "attn_temp.to_out.0.weight", "attn_temp.to_out.0.bias",
    }


def test_zeroed_output_is_exact_identity():
    layer = randomised_layer().zero_output_()
    x = random(B * F, N, C, seed=8)
    with torch.no_grad():
        assert torch.equal(layer(x, F), x)


def test_reset_parameters_is_reproducible_and_zeroes_output():
    def weights(seed):
        layer = TemporalAttention(C, HEADS, D)
        layer.reset_parameters(torch.Generator().manual_seed(seed))
        return layer.state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["attn_temp.to_q.weight"], c["attn_temp.to_q.weight"])
    assert torch.equal(a["attn_temp.to_out.0.bias"], torch.zeros(C))
    assert torch.equal(a["attn_temp.to_out.0.weight"], torch.zeros(C, C))
    assert torch.equal(a["norm_temp.weight"], torch.ones(C))
    assert a["attn_temp.to_q.weight"].abs().max() <= 1 / math.sqrt(C)


def test_temporal_attention_for_is_seeded():
    a = temporal_attention_for(C, HEADS, D, seed=3).state_dict()
    b = temporal_attention_for(C, HEADS, D, seed=3).state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


# ------------------------------------------------------------- video group norm

def reference_group_norm(x, frames, norm):
    """nn.GroupNorm on the 5D [B, C, F, H, W] video, back to [B*F, C, H, W]."""
    videos = x.shape[0] // frames
    video = x.reshape(videos, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)
    return norm(video).permute(0, 2, 1, 3, 4).reshape(x.shape)


def naive_video_group_norm(x, frames, norm):
    """The definition, one (video, group) at a time: statistics over all its frames' elements."""
    out = torch.empty_like(x, dtype=torch.float64)
    per_group = x.shape[1] // norm.num_groups
    for first in range(0, x.shape[0], frames):
        for g in range(norm.num_groups):
            rows, chans = slice(first, first + frames), slice(g * per_group, (g + 1) * per_group)
            elements = x[rows, chans].double()
            mean, var = elements.mean(), elements.var(unbiased=False)
            out[rows, chans] = (elements - mean) / torch.sqrt(var + norm.eps)
    return out * norm.weight.double().reshape(1, -1, 1, 1) + norm.bias.double().reshape(1, -1, 1, 1)


def random_group_norm(groups, channels, dtype):
    norm = torch.nn.GroupNorm(groups, channels).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(random(channels, seed=20))
        norm.bias.copy_(random(channels, seed=21))
    return norm


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_video_group_norm_matches_5d_group_norm(dtype, tol):
    frames, channels = 3, 64  # B=2: cond and uncond videos batched together
    norm = random_group_norm(32, channels, dtype)
    x = random(2 * frames, channels, 4, 5, dtype=dtype, seed=22) * 3 + 1
    with torch.no_grad():
        actual = video_group_norm(x, frames, norm)
        torch.testing.assert_close(actual, reference_group_norm(x, frames, norm), rtol=0, atol=tol)
        torch.testing.assert_close(actual.double(), naive_video_group_norm(x, frames, norm), rtol=0, atol=tol)
    assert actual.dtype == dtype


def test_video_group_norm_half_input_keeps_dtype():
    frames = 2
    norm = random_group_norm(4, 8, torch.float32)
    x = random(2 * frames, 8, 3, 3, dtype=torch.float32, seed=27)
    with torch.no_grad():
        actual = video_group_norm(x.bfloat16(), frames, norm)
        expected = reference_group_norm(x.bfloat16().float(), frames, norm)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, rtol=0, atol=0.05)


def test_video_group_norm_differs_from_per_frame_norm():
    frames = 3
    norm = random_group_norm(4, 8, torch.float64)
    x = random(2 * frames, 8, 3, 3, seed=23) * torch.arange(1, 2 * frames + 1.0).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        assert not torch.allclose(video_group_norm(x, frames, norm), norm(x), atol=1e-3)


def test_video_group_norm_gradcheck():
    x = random(2 * 2, 4, 2, 2, seed=24).requires_grad_()
    weight = random(4, seed=25).requires_grad_()
    bias = random(4, seed=26).requires_grad_()

    def fn(x, weight, bias):
        # Stand-in exposing the GroupNorm attributes, so weight/bias are checked too.
        norm = SimpleNamespace(num_groups=2, eps=1e-5, weight=weight, bias=bias)
        return video_group_norm(x, 2, norm)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_video_group_norm_rejects_partial_videos():
    with pytest.raises(ValueError, match="batch of 5 rows does not hold whole videos of 2 frames"):
        video_group_norm(random(5, 4, 2, 2), 2, torch.nn.GroupNorm(2, 4))
