"""Everything about a run's progress that a checkpoint must restore, in one object."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    samples_seen: int = 0  # over all ranks
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    best: dict[str, float] = field(default_factory=dict)  # best top1/top5 and the step reached
    wandb_run_id: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
