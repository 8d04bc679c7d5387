"""SimMIM masked image modelling (arXiv 2111.09886) around a SwinV2 encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import SwinTransformerV2


def local_mean_std(images: torch.Tensor, window: int = 47) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std of every pixel's ``window`` x ``window`` neighbourhood, clipped at
    the borders. (B, C, H, W) -> two tensors of the same shape."""
    if window % 2 != 1:
        raise ValueError(f"the target normalisation window must be odd, got {window}")
    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(images, **pool, count_include_pad=False)
    mean_sq = F.avg_pool2d(images**2, **pool, count_include_pad=False)
    # pixels inside the image that each window covers (fewer at the borders)
    count = F.avg_pool2d(torch.ones_like(images[:1, :1]), **pool, count_include_pad=True) * window**2
    var = ((mean_sq - mean**2) * count / (count - 1)).clamp(min=0.0)
    return mean, (var + 1e-6).sqrt()


def normalize_targets(images: torch.Tensor, window: int = 47) -> torch.Tensor:
    """The SwinV2 SimMIM target: every pixel normalised by its local mean and std."""
    mean, std = local_mean_std(images, window)
    return (images - mean) / std


class SimMIM(nn.Module):
    """Masked image modelling: masked patch tokens are replaced by a learnable token right after
    the patch embedding; a 1x1 conv + PixelShuffle decodes the last feature map back to pixels;
    the loss is L1 on masked pixels only."""

    def __init__(
        self, encoder: SwinTransformerV2, *, norm_target: bool = True, norm_target_window: int = 47
    ) -> None:
        super().__init__()
        if encoder.num_classes:
            encoder.reset_classifier(0)
        self.encoder = encoder
        self.norm_target = norm_target
        self.norm_target_window = norm_target_window
        self.mask_token = nn.Parameter(torch.empty(1, 1, 1, encoder.embed_dim))
        stride = encoder.stride
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, stride**2 * encoder.in_chans, kernel_size=1),
            nn.PixelShuffle(stride),
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.mask_token.is_meta:
            return
        self.encoder.init_weights()
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder[0].reset_parameters()

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), mask (B, H/p, W/p) with 1 = masked -> predicted pixels (B, 3, H, W)."""
        tokens = self.encoder.patch_embed(images)  # (B, H/p, W/p, C)
        w = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * (1.0 - w) + self.mask_token.to(tokens.dtype) * w
        features = self.encoder.forward_stages(tokens)  # (B, H/s, W/s, F)
        # contiguous: a channels-last input would give the 1x1 conv's weight a channels-last gradient,
        # which DDP's flat gradient buckets must copy (and warn about) every step
        return self.decoder(features.permute(0, 3, 1, 2).contiguous())

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, reconstruction)."""
        pred = self.reconstruct(images, mask)
        target = normalize_targets(images, self.norm_target_window) if self.norm_target else images
        p = self.encoder.patch_size
        pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(pred.dtype)
        l1 = F.l1_loss(pred.float(), target.float(), reduction="none")
        loss = (l1 * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / self.encoder.in_chans
        return loss, pred
