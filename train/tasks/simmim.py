"""SimMIM pretraining: reconstruct the masked pixels of an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from swinv2 import SimMIM, build_model
from swinv2.simmim import local_mean_std

from .base import Task


class SimMIMTask(Task):
    loader_task = "simmim"

    def build_model(self, device: str | torch.device) -> nn.Module:
        encoder = build_model(self.cfg.model.name, num_classes=0, device=device, **self.cfg.model.overrides())
        return SimMIM(
            encoder,
            norm_target=self.cfg.task.norm_target,
            norm_target_window=self.cfg.task.norm_target_window,
        )

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss, _ = model(images, target)
        return loss


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM's predicted pixels in eval mode, through the strategy's wrapped model: under FSDP and
    ZeRO-3 the forward gathers sharded parameters, so every rank must call this at the same step."""
    was_training = model.training
    model.eval()
    _, pred = model(images, mask)
    model.train(was_training)
    return pred.float()


def save_reconstruction_grid(
    model: SimMIM,
    images: torch.Tensor,
    mask: torch.Tensor,
    pred: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    path: Path,
) -> Path:
    """PNG with one row per image: input | masked input | reconstruction (masked pixels filled in).

    ``pred`` is ``reconstruct``'s output; ``model`` (unwrapped) gives the patch size and target
    normalisation. With normalised targets the model predicts locally normalised pixels, so the
    prediction is mapped back with the true image's local mean and std."""
    images = images.float()
    if model.norm_target:
        mean_local, std_local = local_mean_std(images, model.norm_target_window)
        pred = pred * std_local + mean_local
    p = model.encoder.patch_size
    pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(images.dtype)
    filled = images * (1 - pixel_mask) + pred * pixel_mask
    masked = images * (1 - pixel_mask)
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    panels = [((x * s + m).clamp(0, 1) * 255).byte() for x in (images, masked, filled)]
    grid = torch.cat([torch.cat(list(panel), dim=1) for panel in panels], dim=2)  # (C, rows*H, 3*W)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).cpu().numpy())).save(path)
    return path
