"""Swin Transformer V2 (arXiv 2111.09883), exact to the released code.

Tokens travel as (B, H, W, C) maps. Blocks and PatchMerging are separate modules so the training
side can wrap them (activation checkpointing, torch.compile, FSDP) from outside; nothing here
knows about distribution. Parameter names follow the official release, so its checkpoints load
without renaming (see ``weights.py`` for the other layouts).

Big models are built on the meta device and materialised with ``to_empty`` + ``init_weights()``,
which also recomputes every non-persistent buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from .attention import AttnImpl, WindowAttention

Pair = tuple[int, int]


def window_partition(x: torch.Tensor, window: Pair) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, Wh*Ww, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def window_token_order(size: Pair, window: Pair, shift: Pair) -> torch.Tensor:
    """Source index (h * W + w) of every token of every window after the cyclic shift, in window
    order: ``x.view(B, H*W, C)[:, order]`` is ``window_partition(roll(x, -shift), window)``.
    Returns (nW*N,) int64."""
    ids = torch.arange(size[0] * size[1]).view(1, *size, 1)
    return window_partition(torch.roll(ids, shifts=(-shift[0], -shift[1]), dims=(1, 2)), window).flatten()


def shift_region_ids(size: Pair, window: Pair, shift: Pair) -> torch.Tensor:
    """Region id of every token of every window after the cyclic shift. Returns (nW, N).

    Tokens of one window that came from different image regions must not attend to each other.
    """
    img = torch.zeros(1, *size, 1)
    region = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            img[:, hs, ws, :] = region
            region += 1
    return window_partition(img, window).squeeze(-1).to(torch.int32)


class _PermuteTokens(torch.autograd.Function):
    """``x.index_select(1, order)`` whose backward gathers with the inverse permutation, where
    index_select's backward would zero a tensor as large as x and scatter-add into it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


class _GELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        # In place: the incoming gradient is the fresh output of fc2's backward, used by nothing else.
        return torch.ops.aten.gelu_backward.grad_input(grad, x, grad_input=grad)


class GELU(nn.Module):
    """Exact GELU (no ``approximate``) whose backward overwrites its incoming gradient instead of
    allocating another tensor of the MLP's hidden size; only for an activation feeding one Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GELUFunction.apply(x)


def add_residual(x: torch.Tensor, branch: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """``x + drop_path(branch)`` in one pass: stochastic depth's per-sample scale (the same random
    draw as timm's ``DropPath``) goes into an addcmul instead of a product and then a sum."""
    if not training or drop_prob == 0.0:
        return x + branch
    keep = 1.0 - drop_prob
    scale = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(keep).div_(keep)
    return torch.addcmul(x, branch, scale)


def _pair(x: int | Sequence[int]) -> Pair:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv + LayerNorm: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformerV2Block(nn.Module):
    """Residual post-norm block: x + drop_path(norm1(attn(x))), then the same for the MLP.

    ``extra_norm`` adds the H/G models' LayerNorm on the main branch after the block.
    """

    def __init__(
        self,
        dim: int,
        *,
        input_resolution: Pair,
        num_heads: int,
        window_size: Pair,
        shift: bool,
        pretrained_window_size: Pair = (0, 0),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
        chunk_windows: int = 16,
        extra_norm: bool = False,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        # A map not larger than the window is attended as one window, without a shift.
        window = tuple(r if r <= w else w for r, w in zip(input_resolution, window_size))
        shift_size = tuple(
            0 if (not shift or r <= w) else w // 2 for r, w in zip(input_resolution, window_size)
        )
        for r, w in zip(input_resolution, window):
            if r % w:
                raise ValueError(
                    f"window {window_size} does not divide the {input_resolution[0]}x{input_resolution[1]} "
                    "feature map; choose img_size and window_size so that every stage's map is a multiple"
                )
        self.window_size: Pair = window
        self.shift_size: Pair = shift_size

        self.attn = WindowAttention(
            dim,
            window=window,
            num_heads=num_heads,
            pretrained_window=pretrained_window_size,
            attn_impl=attn_impl,
            chunk_windows=chunk_windows,
        )
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = drop_path
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=GELU)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim) if extra_norm else None
        self.register_buffer("region_ids", None, persistent=False)
        self.register_buffer("token_order", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("token_restore", torch.empty(0, dtype=torch.long), persistent=False)
        self.reset_buffers()

    def extra_repr(self) -> str:
        return f"window={self.window_size}, shift={self.shift_size}, drop_path={self.drop_path:g}"

    @property
    def shifted(self) -> bool:
        return any(self.shift_size)

    def reset_buffers(self) -> None:
        device = self.norm1.weight.device
        if self.shifted:
            ids = shift_region_ids(self.input_resolution, self.window_size, self.shift_size)
            self.region_ids = ids.to(device)
        order = window_token_order(self.input_resolution, self.window_size, self.shift_size)
        self.token_order = order.to(device)
        self.token_restore = torch.argsort(order).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        shortcut = x
        # Cyclic shift + window partition (and back) as one gather each: torch.roll copies the
        # map once per dim through cat, and the partition's permute copies it again.
        windows = _PermuteTokens.apply(x.reshape(b, h * w, c), self.token_order, self.token_restore)
        windows = self.attn(windows.view(-1, self.window_size[0] * self.window_size[1], c), self.region_ids)
        tokens = _PermuteTokens.apply(windows.view(b, h * w, c), self.token_restore, self.token_order)
        x = add_residual(shortcut, self.norm1(tokens.view(b, h, w, c)), self.drop_path, self.training)
        x = add_residual(x, self.norm2(self.mlp(x)), self.drop_path, self.training)
        if self.norm3 is not None:
            x = self.norm3(x)
        return x


class PatchMerging(nn.Module):
    """V2 downsampling: 2x2 neighbours concatenated, Linear(4C -> 2C) *then* LayerNorm(2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        # channel order (h0w0, h1w0, h0w1, h1w1), as the released code's cat([x0, x1, x2, x3])
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.norm(self.reduction(x))


class SwinTransformerV2Stage(nn.Module):
    """``depth`` blocks at one resolution (every second one shifted), then optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        *,
        input_resolution: Pair,
        depth: int,
        num_heads: int,
        window_size: Pair,
        pretrained_window_size: Pair,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
        attn_impl: AttnImpl,
        chunk_windows: int,
        extra_norm_every: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerV2Block(
                dim,
                input_resolution=input_resolution,
                num_heads=num_heads,
                window_size=window_size,
                shift=j % 2 == 1,
                pretrained_window_size=pretrained_window_size,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[j],
                attn_impl=attn_impl,
                chunk_windows=chunk_windows,
                extra_norm=extra_norm_every > 0 and (j + 1) % extra_norm_every == 0,
            )
            for j in range(depth)
        )
        if downsample and any(r % 2 for r in input_resolution):
            raise ValueError(f"a {input_resolution[0]}x{input_resolution[1]} map cannot be merged 2x2")
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


def _per_stage(value, n: int, name: str) -> list:
    if isinstance(value, (str, int)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but the model has {n} stages")
    return value


class SwinTransformerV2(nn.Module):
    """Swin Transformer V2 classifier (``num_classes=0`` gives pooled features)."""

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 256,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 8,
        pretrained_window_sizes: int | Sequence[int] = 0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        attn_impl: AttnImpl | Sequence[AttnImpl] = "sdpa",
        chunk_windows: int = 16,
        extra_norm_every: int = 0,
    ) -> None:
        super().__init__()
        n = len(depths)
        if len(num_heads) != n:
            raise ValueError(f"depths has {n} stages but num_heads has {len(num_heads)}")
        img = _pair(img_size)
        if any(s % patch_size for s in img):
            raise ValueError(f"img_size {img} is not divisible by patch_size {patch_size}")
        self.img_size = img
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_features = embed_dim * 2 ** (n - 1)
        windows = _per_stage(window_size, n, "window_size")
        pretrained = _per_stage(pretrained_window_sizes, n, "pretrained_window_sizes")
        impls = _per_stage(attn_impl, n, "attn_impl")

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        res = (img[0] // patch_size, img[1] // patch_size)
        self.layers = nn.ModuleList()
        for i in range(n):
            self.layers.append(
                SwinTransformerV2Stage(
                    embed_dim * 2**i,
                    input_resolution=res,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=_pair(windows[i]),
                    pretrained_window_size=_pair(pretrained[i]),
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < n - 1,
                    attn_impl=impls[i],
                    chunk_windows=chunk_windows,
                    extra_norm_every=extra_norm_every,
                )
            )
            if i < n - 1:
                res = (res[0] // 2, res[1] // 2)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @property
    def stride(self) -> int:
        """Pixels per token of the last feature map (32 for the standard 4 stages)."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter and recompute every non-persistent buffer, as the released
        code does: truncated normal (0.02) for Linear layers, unit LayerNorms, and zero
        post-norms (norm1/norm2) so every residual branch starts as the identity."""
        if self.patch_embed.proj.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                m.reset_parameters()
            if hasattr(m, "reset_buffers"):
                m.reset_buffers()
        self.patch_embed.proj.reset_parameters()
        for block in self.blocks():
            for norm in (block.norm1, block.norm2):
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        device = self.norm.weight.device
        self.head = (
            nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        )
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def blocks(self) -> list[SwinTransformerV2Block]:
        return [block for stage in self.layers for block in stage.blocks]

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        """Embedded tokens (B, H/p, W/p, C) -> final normalised map (B, H/s, W/s, num_features)."""
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
