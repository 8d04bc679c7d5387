"""What the training loop needs from a parallelism strategy.

A strategy owns the wrapped model, the optimizer and the mixed-precision gradient scaler: it
decides how gradients are synchronised (or sharded), clipped and applied. The loop only calls
``accumulate`` / ``backward`` / ``step``, so every strategy trains the same experiment.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class StepResult:
    grad_norm: float
    skipped: bool  # a non-finite gradient: the update was not applied


class Strategy(ABC):
    model: nn.Module  # what the loop calls forward on (may be a wrapper)
    optimizer: torch.optim.Optimizer

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The plain model underneath any wrapper (for evaluation and weights export)."""

    @abstractmethod
    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> None: ...

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch; ``sync=False`` on all but the last one of an accumulation."""
        return contextlib.nullcontext()

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def step(self, clip_grad: float | None) -> StepResult: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TorchStrategy(Strategy):
    """Shared by strategies whose optimizer is a plain torch optimizer: fp16 loss scaling,
    clipping by global norm, and the non-finite guard."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def grad_norm(self, clip_grad: float | None) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad else math.inf)

    def step(self, clip_grad: float | None) -> StepResult:
        self.scaler.unscale_(self.optimizer)
        norm = float(self.grad_norm(clip_grad))
        # Gradients are reduced before this point, so every rank sees the same norm and skips together.
        skipped = not math.isfinite(norm)
        if not skipped:
            self.scaler.step(self.optimizer)
        self.scaler.update()  # after an overflow the fp16 scale backs off
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(grad_norm=norm, skipped=skipped)
