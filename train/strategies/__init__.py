"""Parallelism strategies, selected with ``strategy=NAME`` (``configs/strategy/NAME.yaml``).

``train.config.validate`` has already refused what cannot work on this device and world size.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from train.config import STRATEGIES, RunConfig
from train.distributed import DistEnv

from .base import StepResult, Strategy
from .data_parallel import DataParallelStrategy


def build_strategy(cfg: RunConfig, env: DistEnv) -> Strategy:
    name = cfg.strategy.name
    pretrained = bool(cfg.task.init_from)
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
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is not valid; choose one of {', '.join(STRATEGIES)}")
    _ensure_process_group(env)
    if name == "fsdp":
        from .fsdp import FSDPStrategy

        return FSDPStrategy(
            env.device,
            cfg.precision,
            reshard_after_forward=cfg.strategy.reshard_after_forward,
            cpu_offload=cfg.strategy.cpu_offload,
            pretrained=pretrained,
        )
    if name == "fairscale":
        from .fairscale_oss import FairscaleStrategy

        return FairscaleStrategy(env.device, cfg.precision)
    from .deepspeed_zero import DeepSpeedStrategy, deepspeed_config

    return DeepSpeedStrategy(env.device, deepspeed_config(cfg, env.world_size), pretrained=pretrained)


def _ensure_process_group(env: DistEnv) -> None:
    """Sharding strategies need a process group even for one process (a plain ``python`` run)."""
    if not dist.is_initialized():
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # DeepSpeed reads these, as torchrun sets them
            os.environ.setdefault(key, "1" if key == "WORLD_SIZE" else "0")
        backend = "nccl" if env.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


__all__ = ["STRATEGIES", "Strategy", "StepResult", "build_strategy"]
