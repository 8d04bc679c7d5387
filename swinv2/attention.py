"""Window attention of Swin Transformer V2: scaled cosine attention with a log-spaced
continuous position bias (log-CPB), computed by one of three interchangeable kernels.

Kernels (numerically equivalent, chosen per stage with ``attn_impl``):
- ``math``: explicit ``softmax(q k^T + bias) v``; the reference formulation.
- ``sdpa``: ``F.scaled_dot_product_attention`` with the logit scale folded into q and the
  position bias + shift mask as the additive mask (fused kernels on GPU, and on CPU without
  gradients; CPU training uses the ``math`` form, which torch's fallback would only slow down).
- ``sequential``: the paper's sequential self-attention (section 3.5): windows are processed in
  chunks of ``chunk_windows`` and each chunk is recomputed in the backward pass, so the attention
  memory of a block grows with the chunk, not with the number of windows.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import repeat
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

AttnImpl = Literal["math", "sdpa", "sequential"]
ATTN_IMPLS: tuple[str, ...] = ("math", "sdpa", "sequential")

# Added to the logits of token pairs that come from different regions of a shifted window.
SHIFT_MASK_VALUE = -100.0
# The logit scale is log(1/tau) with tau >= 0.01, so it is clamped at log(100); no lower clamp.
MAX_LOGIT_SCALE = math.log(100.0)
# Floor of |q| and |k| in the cosine (F.normalize's default).
NORM_EPS = 1e-12


def relative_coords_table(window: tuple[int, int], pretrained_window: tuple[int, int]) -> torch.Tensor:
    """Log-spaced relative coordinates fed to the CPB MLP. Returns (2Wh-1, 2Ww-1, 2).

    Coordinates are normalised by the pretrained window (if given) so that an MLP trained at one
    window size sees the same inputs for the same relative offsets at a larger window.
    """
    dh = torch.arange(-(window[0] - 1), window[0], dtype=torch.float32)
    dw = torch.arange(-(window[1] - 1), window[1], dtype=torch.float32)
    table = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)
    norm = pretrained_window if pretrained_window[0] > 0 else window
    # max(.., 1) keeps a 1x1 window (a 1-token feature map) finite; its only offset is 0.
    table[..., 0] /= max(norm[0] - 1, 1)
    table[..., 1] /= max(norm[1] - 1, 1)
    table *= 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """Index into the flattened (2Wh-1)*(2Ww-1) table for every token pair. Returns (N, N)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    rel[..., 0] += window[0] - 1
    rel[..., 1] += window[1] - 1
    return rel[..., 0] * (2 * window[1] - 1) + rel[..., 1]


def _math_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # q is already normalised and scaled; bias broadcasts to (B_, H, N, N)
    attn = q @ k.transpose(-2, -1)
    attn += bias  # in place: the matmul's backward does not need its output, so save an N x N buffer
    return attn.softmax(dim=-1) @ v


def _sdpa_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if q.device.type == "cpu" and bias.requires_grad and torch.is_grad_enabled():
        # CPU flash attention has no gradient for the mask (our learned position bias), so torch
        # would fall back to its math path, whose _safe_softmax adds three passes over N x N.
        return _math_kernel(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


class CosineHeads(torch.autograd.Function):
    """Splits qkv (B_, N, 3, H, d) into contiguous per-head q, k, v (B_, H, N, d) with q and k
    normalised and q multiplied by the per-head logit scale (H, 1, 1), so that q . k is the
    scaled cosine similarity: folding the scale into q saves a pass over N x N.

    One autograd node where plain ops would make about fifteen: the backward writes the gradients
    of q, k and v straight into one (B_, N, 3, H, d) buffer, where autograd would stack them,
    copy them back into qkv's layout and run the norm, division and product backwards, each a
    fresh q-sized tensor. Nothing of qkv is kept for backward, only the normalised q and k.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, scale: torch.Tensor):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # Norms in at least fp32, so that under autocast a bf16 q keeps its precision and stays bf16.
        acc = torch.promote_types(qkv.dtype, torch.float32)
        inv_q = scale / torch.linalg.vector_norm(q, dim=-1, keepdim=True, dtype=acc).clamp_min(NORM_EPS)
        inv_k = 1 / torch.linalg.vector_norm(k, dim=-1, keepdim=True, dtype=acc).clamp_min(NORM_EPS)
        # The factor goes first so that the product is laid out like it, contiguous (B_, H, N, d),
        # not like the view q; .contiguous() is then a no-op, there in case that rule ever changes.
        q_hat = (inv_q * q).to(qkv.dtype).contiguous()
        k_hat = (inv_k * k).to(qkv.dtype).contiguous()
        ctx.save_for_backward(q_hat, k_hat, inv_q, inv_k, scale)
        return q_hat, k_hat, v.contiguous()

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        q_hat, k_hat, inv_q, inv_k, scale = ctx.saved_tensors
        bw, heads, n, d = q_hat.shape
        grad = grad_q.new_empty(bw, n, 3, heads, d)
        into_q, into_k, into_v = grad.permute(2, 0, 3, 1, 4).unbind(0)
        # y = c x / |x| gives dL/dx = (c/|x|) g - y (y . g) / (c |x|); inv_q is c/|x| with c the scale
        dot_q = _unit_vector_grad(grad_q, q_hat, inv_q, inv_q / scale.square(), out=into_q)
        _unit_vector_grad(grad_k, k_hat, inv_k, inv_k, out=into_k)
        into_v.copy_(grad_v)
        grad_scale = None
        if ctx.needs_input_grad[1]:  # dL/dc = sum over windows and tokens of (y . g) / c
            grad_scale = (dot_q.sum(dim=(0, 2)).view_as(scale) / scale).to(scale.dtype)
        return grad, grad_scale


def _unit_vector_grad(
    grad: torch.Tensor, y: torch.Tensor, inv_norm: torch.Tensor, coef: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    """Writes inv_norm * grad - coef * (y . grad) * y into ``out``; returns y . grad (at least fp32)."""
    dot = (grad * y).sum(dim=-1, keepdim=True, dtype=inv_norm.dtype)
    # in place rather than out=: torch.compile cannot trace an out= into a strided view
    out.copy_(grad).mul_(inv_norm).addcmul_(y, dot * coef, value=-1)
    return dot


def _shift_bias(region_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(nW, N) region ids -> (nW, 1, N, N) additive mask: -100 between different regions."""
    different = region_ids[:, :, None] != region_ids[:, None, :]
    return (
        torch.zeros(different.shape, dtype=dtype, device=region_ids.device)
        .masked_fill_(different, SHIFT_MASK_VALUE)
        .unsqueeze(1)
    )


class WindowAttention(nn.Module):
    """Multi-head scaled cosine self-attention inside (shifted) windows.

    Parameter names follow the released code: ``qkv`` (no bias), ``q_bias``, ``v_bias``,
    ``logit_scale`` (heads, 1, 1), ``cpb_mlp`` (2 -> 512 -> heads), ``proj``.
    """

    def __init__(
        self,
        dim: int,
        *,
        window: tuple[int, int],
        num_heads: int,
        pretrained_window: tuple[int, int] = (0, 0),
        qkv_bias: bool = True,
        attn_impl: AttnImpl = "sdpa",
        chunk_windows: int = 16,
        cpb_hidden: int = 512,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r}; choose one of {ATTN_IMPLS}")
        if chunk_windows < 1:
            raise ValueError(f"chunk_windows must be >= 1, got {chunk_windows}")
        self.dim = dim
        self.window = window
        self.pretrained_window = pretrained_window
        self.num_heads = num_heads
        self.attn_impl = attn_impl
        self.chunk_windows = chunk_windows

        self.logit_scale = nn.Parameter(torch.empty(num_heads, 1, 1))
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, cpb_hidden, bias=True),
            nn.ReLU(inplace=True),
            nn.Linear(cpb_hidden, num_heads, bias=False),
        )
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.empty(dim))
            self.v_bias = nn.Parameter(torch.empty(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("relative_coords_table", torch.empty(0), persistent=False)
        self.register_buffer("relative_position_index", torch.empty(0, dtype=torch.long), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Recompute the position tables (non-persistent; never loaded from checkpoints)."""
        device = self.logit_scale.device
        self.relative_coords_table = relative_coords_table(self.window, self.pretrained_window).to(device)
        self.relative_position_index = relative_position_index(self.window).to(device)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.logit_scale, math.log(10.0))
        for m in (self.qkv, self.proj, self.cpb_mlp[0], self.cpb_mlp[2]):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        if self.q_bias is not None:
            nn.init.zeros_(self.q_bias)
            nn.init.zeros_(self.v_bias)

    def position_bias(self) -> torch.Tensor:
        """16 * sigmoid(cpb_mlp(table)) gathered for every token pair. Returns (H, N, N)."""
        # The sigmoid runs on the (2Wh-1)*(2Ww-1) table before the gather instead of on N^2 pairs;
        # index_select on the head-major table gives a contiguous result and its backward
        # (index_add) is far faster than that of advanced indexing (index_put with accumulate).
        table = 16 * torch.sigmoid(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads))
        n = self.window[0] * self.window[1]
        return table.t().index_select(1, self.relative_position_index.view(-1)).view(-1, n, n)

    def forward(self, x: torch.Tensor, region_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C) windows; region_ids: (nW, N) shift-region id per token, or None
        when the block is not shifted. Returns (B*nW, N, C)."""
        bw, n, c = x.shape
        qkv_bias = None
        if self.q_bias is not None:
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias).view(bw, n, 3, self.num_heads, c // self.num_heads)
        scale = torch.clamp(self.logit_scale, max=MAX_LOGIT_SCALE).exp()
        q, k, v = CosineHeads.apply(qkv, scale)  # each (B*nW, H, N, d)
        bias = self.position_bias().to(q.dtype)  # (H, N, N)

        if self.attn_impl == "sequential":
            out = self._sequential(q, k, v, bias, region_ids)
        else:
            kernel = _sdpa_kernel if self.attn_impl == "sdpa" else _math_kernel
            if region_ids is None:
                out = kernel(q, k, v, bias.unsqueeze(0))
            else:
                # Windows of one image become extra "heads" so the (nW, H, N, N) mask broadcasts
                # over the batch without being copied B times.
                nw = region_ids.shape[0]
                full = (bias.unsqueeze(0) + _shift_bias(region_ids, q.dtype)).flatten(0, 1).unsqueeze(0)
                fold = (bw // nw, nw * self.num_heads, n, -1)
                out = kernel(q.reshape(fold), k.reshape(fold), v.reshape(fold), full)
                out = out.view(bw, self.num_heads, n, -1)
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)

    def _sequential(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        region_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        n = self.chunk_windows
        # Windows are batch-major, so the (nW, N) region ids repeat every nW windows.
        ids = (
            repeat(None)
            if region_ids is None
            else region_ids.repeat(q.shape[0] // region_ids.shape[0], 1).split(n)
        )
        attend = (
            partial(checkpoint, _attend_chunk, use_reentrant=False)
            if torch.is_grad_enabled()
            else _attend_chunk
        )
        # split rather than slicing: split's backward concatenates the chunks' gradients once,
        # while every slice's backward would fill its own zero gradient as large as q, k or v.
        outs = [
            attend(qc, kc, vc, bias, ic) for qc, kc, vc, ic in zip(q.split(n), k.split(n), v.split(n), ids)
        ]
        return torch.cat(outs)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window={self.window}, pretrained_window={self.pretrained_window}, "
            f"num_heads={self.num_heads}, attn_impl={self.attn_impl}"
            + (f", chunk_windows={self.chunk_windows}" if self.attn_impl == "sequential" else "")
        )


def _attend_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, region_ids: torch.Tensor | None
) -> torch.Tensor:
    """Attention of one chunk of windows; its N x N mask and scores exist only for the chunk."""
    full = bias.unsqueeze(0) if region_ids is None else bias.unsqueeze(0) + _shift_bias(region_ids, q.dtype)
    return _sdpa_kernel(q, k, v, full)
