"""SimMIM random mask generator (released SimMIM `MaskGenerator`, made seedable for exact resume)."""

import math

import numpy as np

from train.data.config import MaskConfig


class MaskGenerator:
    """Samples `ceil(mask_ratio * cells)` of the (img_size / mask_patch_size)^2 grid cells and returns
    the mask at the model's patch grid: an int64 array (img_size / model_patch_size,) * 2, 1 = masked.
    """

    def __init__(self, img_size: int, cfg: MaskConfig) -> None:
        if img_size % cfg.mask_patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by mask.mask_patch_size {cfg.mask_patch_size}")
        if cfg.mask_patch_size % cfg.model_patch_size:
            raise ValueError(
                f"mask.mask_patch_size {cfg.mask_patch_size} must be divisible by "
                f"mask.model_patch_size {cfg.model_patch_size}"
            )
        if not 0.0 <= cfg.mask_ratio <= 1.0:
            raise ValueError(f"mask.mask_ratio must lie in [0, 1], got {cfg.mask_ratio}")
        self.rand_size = img_size // cfg.mask_patch_size
        self.scale = cfg.mask_patch_size // cfg.model_patch_size
        self.token_count = self.rand_size**2
        self.mask_count = math.ceil(self.token_count * cfg.mask_ratio)

    def __call__(self, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng if rng is not None else np.random.default_rng()
        idx = rng.permutation(self.token_count)[: self.mask_count]
        mask = np.zeros(self.token_count, dtype=np.int64)
        mask[idx] = 1
        mask = mask.reshape(self.rand_size, self.rand_size)
        return mask.repeat(self.scale, axis=0).repeat(self.scale, axis=1)
