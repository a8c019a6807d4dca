"""Measured speed paths for model.py, switched on by one visible call:

    import model_fast
    model_fast.enable_fast_paths(model)                         # a model that trains (any device)
    model_fast.enable_fast_paths(model, inference_layout=True)  # a model that only runs inference

model.py computes attention, the MLP and their gradients the plain way, and stays the one to read.
Each path here gives the same values (tests/test_model.py checks each against the plain path)
and was kept because it measured faster or smaller:

  - FastAttention: one query per row on CPU in fp32 (a decoding step) -> decode_attention, which
    reads each cached key and value once per group of query heads instead of once per query head
    (in bf16 the fused kernel is faster); without gradients, RoPE in halves written straight
    into its output (rope_in_halves);
  - FastMLP: with gradients -> SwiGLU, an autograd function that stores one (tokens,
    intermediate) tensor less per layer for backward (bench/bench_sft.py); without gradients on
    CPU -> forward_in_slices, bounded memory and fewer page faults (bench/bench_layout.py);
  - inference_layout=True on CPU: every linear weight stored transposed in memory
    (cpu_inference_layout), faster products with the few rows of a decoding step.

enable_fast_paths swaps the class of each model.Attention and model.MLP module for its subclass
here: same parameters, same state_dict, and the subclass picks its path per call from what it
is given (gradients on or off, the device), falling back to model.py's forward otherwise.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M


def enable_fast_paths(model: nn.Module, inference_layout: bool = False) -> nn.Module:
    """Switch `model` (a model.Transformer, or any module holding its layers) to the fast paths,
    in place; calling it again changes nothing. inference_layout=True adds, on CPU, the
    transposed weight layout: for a model that never trains (training's backward products are not
    faster that way)."""
    for m in model.modules():
        if type(m) is M.Attention:
            m.__class__ = FastAttention
        elif type(m) is M.MLP:
            m.__class__ = FastMLP
    if inference_layout:
        cpu_inference_layout(model)
    return model


# ----------------------------------------------------------------------------- attention


def decode_attention(q, k, v, mask):
    """Attention for one new token per row, q (B, H, 1, D), k and v (B, Hkv, S, D), mask (B, 1, 1, S)
    additive (0 = visible, -inf = hidden). The H query heads are viewed as Hkv groups of H/Hkv rows,
    so two small matrix products read each cached key and value once per group; CPU's fused kernel
    reads them once per query head, and a decoding step is mostly reading the cache
    (`python bench/bench_layout.py`)."""
    B, H, _, D = q.shape
    Hkv = k.shape[1]
    scores = (q.view(B, Hkv, H // Hkv, D) @ k.transpose(-1, -2)).float() * D ** -0.5  # (B, Hkv, G, S)
    p = (scores + mask).softmax(-1).to(v.dtype)
    return (p @ v).view(B, H, 1, D)


def rope_in_halves(x, cos, sin):
    """model.apply_rope's values (x (B, H, T, D), cos and sin (B, T, D) fp32) in fewer passes over
    memory: each half of the head dimension is rotated straight into the output,
        out[:D/2] = x1 cos - x2 sin,    out[D/2:] = x2 cos + x1 sin,
    in fp32 and rounded once to x's dtype, as apply_rope does (cos and sin hold each frequency in
    both halves, so their first half is all of them). apply_rope builds the full-width rotated copy
    cat(-x2, x1) and its negated half first: 1.3-1.8x slower on one batch's queries in bf16
    (`python bench/profile_bf16.py`). Writes into `out`: inference only."""
    d = x.shape[-1] // 2
    h = x.float()  # no copy in fp32
    x1, x2 = h[..., :d], h[..., d:]
    c, s = cos[:, None, :, :d], sin[:, None, :, :d]  # (B, 1, T, D/2)
    out = torch.empty_like(x)
    torch.sub(x1 * c, x2 * s, out=out[..., :d])
    torch.add(x2 * c, x1 * s, out=out[..., d:])
    return out


class FastAttention(M.Attention):
    def rope(self, x, cos, sin):
        if torch.is_grad_enabled():  # autograd does not go through out=
            return super().rope(x, cos, sin)
        return rope_in_halves(x, cos, sin)

    def attend(self, q, k, v, mask):
        # one query per row on CPU (a decoding step), in fp32. In bf16 PyTorch's batched products
        # copy the cached keys and values they are given as slices (every step, the whole cache),
        # and the fused kernel is 3.8x faster than decode_attention (`python bench/profile_bf16.py`)
        if q.shape[2] == 1 and q.device.type == "cpu" and q.dtype == torch.float32:
            return decode_attention(q, k, v, mask)
        return super().attend(q, k, v, mask)


# ----------------------------------------------------------------------------- MLP


class SwiGLU(torch.autograd.Function):
    """silu(g) * u. Autograd would store g, silu(g) and u for backward; this stores g and u and
    recomputes silu(g) there: one (B, T, intermediate) tensor less per layer in training."""

    @staticmethod
    def forward(ctx, g, u):
        ctx.save_for_backward(g, u)
        return F.silu(g) * u

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        s = torch.sigmoid(g)
        dsilu = s * (1 + g * (1 - s))  # d/dg of g * sigmoid(g)
        return dy * u * dsilu, dy * g * s


class FastMLP(M.MLP):
    def forward(self, x):
        if torch.is_grad_enabled():  # training: the memory-saving backward
            return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))
        if x.device.type == "cpu":
            return self.forward_in_slices(x)
        return super().forward(x)

    def forward_in_slices(self, x, slice_bytes=16 << 20):
        """CPU inference. The (tokens, intermediate) products are a forward pass's largest tensors
        (31 MB for a batch of 5,000 tokens of the built-in model); here they are at most 16 MB, and
        SiLU and the product are taken in place: bounded memory for any batch, and tensors small
        enough for glibc's malloc to reuse, where whole-batch ones are often fresh pages from the
        kernel, page-faulted in every time (`python bench/bench_layout.py`)."""
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty_like(flat)
        n = max(1, slice_bytes // (flat.element_size() * self.gate_proj.out_features))
        for a in range(0, flat.shape[0], n):
            h = flat[a:a + n]
            out[a:a + n] = self.down_proj(F.silu(self.gate_proj(h), inplace=True).mul_(self.up_proj(h)))
        return out.view_as(x)


# ----------------------------------------------------------------------------- weight layout


def cpu_inference_layout(model: nn.Module) -> nn.Module:
    """For inference on CPU: store every linear weight transposed in memory, (in, out), while
    PyTorch still sees the same (out, in) tensor, so F.linear and state_dict are unchanged.
    MKL multiplies a few rows (decoding: 8-48 rows per step) by weights laid out this way 1.4-9x
    faster (by shape), and large batches at about the same speed (`python bench/bench_layout.py`).
    Training keeps the usual layout: its backward products are not faster this way. No-op off CPU."""
    if next(model.parameters()).device.type == "cpu":
        for m in model.modules():
            if isinstance(m, nn.Linear):  # a tied lm_head transposes the embedding too (same tensor)
                m.weight.data = m.weight.data.t().contiguous().t()
    return model
