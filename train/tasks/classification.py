"""Supervised training and fine-tuning, and evaluation (top-1 / top-5 / loss)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from swinv2 import LoadReport, build_model, load_pretrained
from train.checkpoint import read_model_weights
from train.data import PAD_LABEL, build_mixup
from train.distributed import all_reduce_sum

from .base import Task

log = logging.getLogger(__name__)


class ClassificationTask(Task):
    loader_task = "supervised"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        aug = cfg.data.aug
        self.mixup = build_mixup(aug, cfg.data.num_classes) if cfg.task.name == "finetune" else None
        self.label_smoothing = aug.label_smoothing
        self.soft_ce = SoftTargetCrossEntropy()
        self.load_report: LoadReport | None = None  # what build_model loaded from task.init_from

    def build_model(self, device: str | torch.device) -> nn.Module:
        cfg = self.cfg
        model = build_model(
            cfg.model.name, num_classes=cfg.data.num_classes, device=device, **cfg.model.overrides()
        )
        if cfg.task.init_from:
            # a weights file, or a checkpoint / run directory of this project (its newest checkpoint)
            report = load_pretrained(model, read_model_weights(cfg.task.init_from))
            log.info("initialised from %s: %s", cfg.task.init_from, report)
            self.load_report = report
        return model

    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            images, soft = self.mixup(images, target)
            return self.soft_ce(model(images).float(), soft)
        return F.cross_entropy(model(images).float(), target, label_smoothing=self.label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast) -> dict[str, float]:
    """Top-1, top-5 and mean cross-entropy over every sample of ``loader`` on all ranks.
    Padding samples (label -1, added so every rank runs the same number of batches) are ignored."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, count
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images).float()
        real = labels != PAD_LABEL
        logits, labels = logits[real], labels[real]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        totals += torch.stack(
            [
                hits[:, :1].any(1).sum(),
                hits.any(1).sum(),
                F.cross_entropy(logits, labels, reduction="sum"),
                torch.tensor(float(labels.numel()), device=device),
            ]
        ).to(totals.dtype)
    all_reduce_sum(totals)
    model.train(was_training)
    n = max(totals[3].item(), 1.0)
    return {
        "top1": 100 * totals[0].item() / n,
        "top5": 100 * totals[1].item() / n,
        "loss": totals[2].item() / n,
        "samples": int(totals[3].item()),
    }
