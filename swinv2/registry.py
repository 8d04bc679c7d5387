"""Named SwinV2 variants and the one builder. Names follow timm where timm has the model."""

from __future__ import annotations

import contextlib
import difflib
from typing import Any

import torch

from .model import SwinTransformerV2

_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
# H and G: head dim 32, plus the extra main-branch LayerNorm every 6 blocks (paper section 3.4).
_H = dict(embed_dim=352, depths=(2, 2, 18, 2), num_heads=(11, 22, 44, 88), extra_norm_every=6)
_G = dict(embed_dim=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128), extra_norm_every=6)
# Fine-tunes of the 22K models trained at 192 px with window 12 (the last stage's 6x6 map).
_FROM_22K = dict(pretrained_window_sizes=(12, 12, 12, 6))

VARIANTS: dict[str, dict[str, Any]] = {
    "swinv2_tiny_window8_256": dict(_T, img_size=256, window_size=8),
    "swinv2_tiny_window16_256": dict(_T, img_size=256, window_size=16),
    "swinv2_small_window8_256": dict(_S, img_size=256, window_size=8),
    "swinv2_small_window16_256": dict(_S, img_size=256, window_size=16),
    "swinv2_base_window8_256": dict(_B, img_size=256, window_size=8),
    "swinv2_base_window16_256": dict(_B, img_size=256, window_size=16),
    "swinv2_base_window12_192": dict(_B, img_size=192, window_size=12, num_classes=21841),
    "swinv2_large_window12_192": dict(_L, img_size=192, window_size=12, num_classes=21841),
    "swinv2_base_window12to16_192to256": dict(_B, **_FROM_22K, img_size=256, window_size=16),
    "swinv2_base_window12to24_192to384": dict(_B, **_FROM_22K, img_size=384, window_size=24),
    "swinv2_large_window12to16_192to256": dict(_L, **_FROM_22K, img_size=256, window_size=16),
    "swinv2_large_window12to24_192to384": dict(_L, **_FROM_22K, img_size=384, window_size=24),
    "swinv2_huge": dict(_H, img_size=192, window_size=12),
    "swinv2_giant": dict(_G, img_size=192, window_size=12),
}


def list_models() -> list[str]:
    return sorted(VARIANTS)


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of a named variant with ``overrides`` applied."""
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}: {hint}")
    return {**VARIANTS[name], **{k: v for k, v in overrides.items() if v is not None}}


def build_model(
    name: str, *, num_classes: int | None = None, device: str | torch.device | None = None, **overrides: Any
) -> SwinTransformerV2:
    """Build a named variant, e.g. ``build_model("swinv2_tiny_window8_256", num_classes=10)``.

    Any constructor argument can be overridden (``embed_dim``, ``depths``, ``num_heads``,
    ``patch_size``, ``img_size``, ``window_size``, ``attn_impl``, ...), which also gives
    free-form tiny models for tests. ``device="meta"`` builds without allocating memory;
    materialise with ``model.to_empty(device=...)`` then ``model.init_weights()``.
    """
    kwargs = model_config(name, num_classes=num_classes, **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return SwinTransformerV2(**kwargs)
