"""`single` (one process) and `ddp` (torch DistributedDataParallel): every rank holds the whole
model and optimizer; DDP all-reduces gradients, skipping the all-reduce on accumulation steps."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .base import OptimizerFactory, TorchStrategy


class DataParallelStrategy(TorchStrategy):
    def __init__(
        self, device: torch.device, precision: str, *, distributed: bool, find_unused_parameters: bool = False
    ) -> None:
        super().__init__(device, precision)
        self.distributed = distributed
        self.find_unused_parameters = find_unused_parameters

    @property
    def module(self) -> nn.Module:
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> None:
        model.to(self.device)
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # SwinV2's buffers (position tables, token orders, shift regions) are constants every rank
            # computes itself: synced once at init, not broadcast from rank 0 before every forward.
            self.model = DistributedDataParallel(
                model,
                device_ids=device_ids,
                find_unused_parameters=self.find_unused_parameters,
                forward_sync_buffers=False,
            )
        else:
            self.model = model
        self.optimizer = make_optimizer(model)

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        if self.distributed and not sync:
            return self.model.no_sync()
        return contextlib.nullcontext()
