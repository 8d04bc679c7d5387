"""A task says which model to build, which batches to read, and what the loss is."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from train.config import RunConfig


class Task(ABC):
    #: the data pipeline's batch kind: "simmim" (images, mask) or "supervised" (images, labels)
    loader_task: str

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def build_model(self, device: str | torch.device) -> nn.Module:
        """The model with initialised (or pretrained) weights, on ``device``."""

    @abstractmethod
    def loss(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
