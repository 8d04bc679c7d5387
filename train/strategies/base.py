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
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from train.checkpoint import DCP_DIR

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SCALER_FILE = "scaler.pt"


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

    def build_model(self, build: Callable[[str], nn.Module]) -> nn.Module:
        """The model as ``setup`` wants it; ``build(device)`` is the task's builder. Whole and
        initialised on the CPU here; sharding strategies build on the meta device (or under
        ZeRO-3's partitioned init) so no rank ever holds the whole model."""
        return build("cpu")

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
    def save(self, directory: Path) -> None:
        """Write model, optimizer and scaler state into ``directory``. Called on every rank with the
        same directory (on storage every rank sees); the checkpointer makes it atomic."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote, possibly on a different world size where the format allows."""


class TorchStrategy(Strategy):
    """Shared by strategies whose optimizer is a plain torch optimizer: fp16 loss scaling,
    clipping by global norm, the non-finite guard, and sharded checkpoints through
    ``torch.distributed.checkpoint`` (DCP), which reshard on load to any world size."""

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

    def save(self, directory: Path) -> None:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory / DCP_DIR)
        if _is_rank0():
            torch.save(self.scaler.state_dict(), directory / SCALER_FILE)

    def load(self, directory: Path) -> None:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=directory / DCP_DIR)
        set_state_dict(
            self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        self.scaler.load_state_dict(torch.load(directory / SCALER_FILE, weights_only=True))


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0
