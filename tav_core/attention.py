"""Tune-A-Video attention pieces on ComfyUI's frames-in-batch layout (pure torch).

ComfyUI carries video frames in the batch dimension: a transformer block sees
tokens as [B*F, N, C] with batch index = video * F + frame, and a resnet block
sees [B*F, C, H, W]. Every function here takes `frames` (F, equal for all videos)
to recover the video grouping; B is the number of videos (e.g. cond + uncond).

An attention function follows ComfyUI's `optimized_attention` signature
`attention_fn(q, k, v, heads, mask=None)` on already projected [batch, tokens,
heads * dim_head] tensors, so ComfyUI's fastest backend can be plugged in.
"""
import math

import torch
import torch.nn.functional as F


def sdpa_attention(q, k, v, heads, mask=None):
    """Default attention: softmax(q k^T / sqrt(d)) v per head via torch SDPA."""
    batch, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.reshape(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        # Same broadcasting as ComfyUI: [Nq, Nk] or [batch, Nq, Nk] -> per-head.
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
        mask = mask.unsqueeze(1) if mask.ndim == 3 else mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, inner)


def _videos(batch, frames):
    """Number of videos in a frames-in-batch tensor; refuses partial videos."""
    if frames < 1 or batch % frames:
        raise ValueError(
            f"batch of {batch} rows does not hold whole videos of {frames} frames")
    return batch // frames


def _first_and_former(x, frames, former=None):
    """[B*F, N, C] -> [B*F, 2N, C]: per frame, tokens of [frame 0, frame i-1].

    Frame 0's former frame is itself (official `former_frame_index[0] = 0`). `former` (F row
    indices) replaces i-1 for a window video whose rows are not consecutive frames (windows.py).
    Built by indexing, so memory grows linearly in F.
    """
    videos = _videos(x.shape[0], frames)
    x = x.reshape(videos, frames, *x.shape[1:])
    if former is None:
        former = (torch.arange(frames, device=x.device) - 1).clamp(min=0)
    else:
        former = former.to(x.device)
    first = x[:, :1].expand_as(x)
    return torch.cat([first, x[:, former]], dim=2).flatten(0, 1)


def sparse_causal_attention(q, k, v, heads, frames, attention_fn=sdpa_attention, former=None):
    """Tune-A-Video sparse-causal attention on projected q, k, v [B*F, N, C].

    Queries of frame i attend to the keys/values of frame 0 followed by frame i-1
    of the same video, in a single attention_fn call over [B*F, 2N, C] keys.
    With frames == 1 the keys are [frame 0, frame 0]: every key appears twice,
    which doubles each softmax numerator and the denominator alike, so the result
    equals plain self-attention: that is what runs then, so that one frame gives
    the image model's output exactly. `former`: see _first_and_former.
    """
    _videos(q.shape[0], frames)
    if frames == 1:
        return attention_fn(q, k, v, heads)  # the same attention without the duplicated keys
    return attention_fn(q, _first_and_former(k, frames, former), _first_and_former(v, frames, former), heads)


class _Attention(torch.nn.Module):
    """Self-attention with the diffusers CrossAttention parameter names."""

    def __init__(self, dim, heads, dim_head, dtype, device, operations):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
        # Sequential keeps the checkpoint key `to_out.0.*`.
        self.to_out = torch.nn.Sequential(
            operations.Linear(inner, dim, bias=True, dtype=dtype, device=device),
            torch.nn.Dropout(0.0))

    def forward(self, x, attention_fn):
        out = attention_fn(self.to_q(x), self.to_k(x), self.to_v(x), self.heads)
        return self.to_out(out)


class TemporalAttention(torch.nn.Module):
    """Tune-A-Video temporal layer: `norm_temp` then `attn_temp` across frames.

    Every spatial token attends over the frames of its own video, without
    positional encoding or mask (as the official code), plus a residual.
    `operations` supplies `Linear` and `LayerNorm` (torch.nn or comfy.ops).
    """

    def __init__(self, dim, heads, dim_head, dtype=None, device=None, operations=torch.nn):
        super().__init__()
        self.norm_temp = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.attn_temp = _Attention(dim, heads, dim_head, dtype, device, operations)

    def forward(self, x, frames, attention_fn=sdpa_attention):
        videos = _videos(x.shape[0], frames)
        _, tokens, channels = x.shape
        # "(b f) n c -> (b n) f c"
        h = x.reshape(videos, frames, tokens, channels).transpose(1, 2)
        h = h.reshape(videos * tokens, frames, channels)
        h = h + self.attn_temp(self.norm_temp(h), attention_fn)
        # "(b n) f c -> (b f) n c"
        h = h.reshape(videos, tokens, frames, channels).transpose(1, 2)
        return h.reshape(videos * frames, tokens, channels)

    @torch.no_grad()
    def zero_output_(self):
        """Zero the output projection (weight and bias) so the layer is identity."""
        out = self.attn_temp.to_out[0]
        out.weight.zero_()
        out.bias.zero_()
        return self

    @torch.no_grad()
    def reset_parameters(self, generator):
        """nn.Linear-style default init drawn from `generator`, then zero output.

        The generator must live on the parameters' device. Needed also because
        comfy.ops classes skip their own initialisation.
        """
        attn = self.attn_temp
        for linear in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
            torch.nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            if linear.bias is not None:
                bound = 1 / math.sqrt(linear.in_features)
                torch.nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        torch.nn.init.ones_(self.norm_temp.weight)
        torch.nn.init.zeros_(self.norm_temp.bias)
        return self.zero_output_()


def temporal_attention_for(dim, heads, dim_head, seed, dtype=None, device=None,
                           operations=torch.nn):
    """A reproducibly initialised, identity-at-start TemporalAttention."""
    generator = torch.Generator(device=device or "cpu").manual_seed(seed)
    layer = TemporalAttention(dim, heads, dim_head, dtype, device, operations)
    return layer.reset_parameters(generator)


def video_group_norm(x, frames, group_norm):
    """GroupNorm of [B*F, C, H, W] with statistics pooled over each video's frames.

    Equals `group_norm` applied to the 5D [B, C, F, H, W] video tensor, which is what
    it computes: PyTorch's GroupNorm kernel on a [B, C, F, H*W] copy. The two layout
    copies cost less than a reduction over the strided frame axis (torch.var_mean
    there is about 4x slower), and autograd keeps only GroupNorm's own saved tensors.
    Half inputs get float32 statistics for accuracy; the result keeps the input dtype.
    """
    videos = _videos(x.shape[0], frames)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    video = work.reshape(videos, frames, x.shape[1], -1).transpose(1, 2).contiguous()
    weight, bias = group_norm.weight, group_norm.bias
    out = torch.nn.functional.group_norm(
        video, group_norm.num_groups, None if weight is None else weight.to(work.dtype),
        None if bias is None else bias.to(work.dtype), group_norm.eps)
    return out.transpose(1, 2).reshape(x.shape).to(x.dtype)
