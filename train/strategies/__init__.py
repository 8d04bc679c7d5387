"""Parallelism strategies, selected with ``strategy=NAME``."""

from __future__ import annotations

from train.config import RunConfig
from train.distributed import DistEnv

from .base import StepResult, Strategy
from .data_parallel import DataParallelStrategy

STRATEGIES = ("single", "ddp")


def build_strategy(cfg: RunConfig, env: DistEnv) -> Strategy:
    name = cfg.strategy.name
    if name == "single":
        if env.world_size > 1:
            raise ValueError(
                f"strategy=single runs one process but WORLD_SIZE={env.world_size}; use strategy=ddp"
            )
        return DataParallelStrategy(env.device, cfg.precision, distributed=False)
    if name == "ddp":
        return DataParallelStrategy(
            env.device,
            cfg.precision,
            distributed=env.world_size > 1,
            find_unused_parameters=cfg.strategy.find_unused_parameters,
        )
    raise ValueError(f"strategy={name!r} is not valid; choose one of {', '.join(STRATEGIES)}")


__all__ = ["STRATEGIES", "Strategy", "StepResult", "build_strategy"]
