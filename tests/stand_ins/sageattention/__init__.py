"""Stand-in for sageattention (see ../README.md): exact attention, computed outside autograd."""
import torch
import torch.nn.functional as F


def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
    """"HND": [batch, heads, tokens, head_dim]; "NHD": [batch, tokens, heads, head_dim]."""
    with torch.no_grad():  # the real kernels have no backward
        if tensor_layout == "NHD":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=kwargs.get("attn_mask"), is_causal=is_causal,
                                             scale=sm_scale)
        return out.transpose(1, 2) if tensor_layout == "NHD" else out
