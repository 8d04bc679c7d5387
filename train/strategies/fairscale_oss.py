"""`fairscale`: fairscale's OSS (optimizer state sharded) + ShardedDataParallel (each gradient is
reduced only to the rank that owns its optimizer shard): ZeRO stage 2, for clusters pinned to
fairscale. An optional extra (``pip install -e '.[fairscale]'``); fairscale's last release is from
2022 and its own FSDP needs CUDA: use ``strategy=fsdp`` (torch FSDP2) for parameter sharding.

Checkpoints are consolidated: ``save`` gathers the optimizer shards to rank 0
(``OSS.consolidate_state_dict``), which writes one whole model + optimizer file; ``load`` reads it on
every rank and each keeps its own shard, so any world size can resume it. The file holds tensors and
plain containers only, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from train.checkpoint import FAIRSCALE_FILE

from .base import OptimizerFactory, TorchStrategy


def _import_fairscale():
    try:
        import fairscale  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "strategy=fairscale needs the optional extra: pip install -e '.[fairscale]'"
        ) from err
    from fairscale.nn.data_parallel import ShardedDataParallel
    from fairscale.optim import OSS
    from fairscale.optim.grad_scaler import ShardedGradScaler

    return OSS, ShardedDataParallel, ShardedGradScaler


class FairscaleStrategy(TorchStrategy):
    def __init__(self, device: torch.device, precision: str) -> None:
        super().__init__(device, precision)
        self._oss, self._sdp, scaler = _import_fairscale()
        if precision == "fp16":  # the fp16 overflow check must see every rank's gradient shard
            self.scaler = scaler()

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> None:
        model.to(self.device)
        plain = make_optimizer(model)
        d = plain.defaults
        # OSS re-creates the same optimizer class on each rank's share of our param groups.
        self.optimizer = self._oss(
            plain.param_groups, optim=type(plain), lr=d["lr"], betas=d["betas"], eps=d["eps"]
        )
        # No reduce buckets: bucketed gradients are views into ShardedDDP's buffers, which the loop's
        # zero_grad(set_to_none=True) detaches (the next step then reduces stale buffers). Direct
        # per-parameter reduction also frees each non-owned gradient as soon as it is sent.
        self.model = self._sdp(model, self.optimizer, reduce_buffer_size=0)

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if sync else self.model.no_sync()

    def grad_norm(self, clip_grad: float | None) -> torch.Tensor:
        # Each rank holds only the reduced gradients of its shard: OSS combines the shard norms.
        return self.optimizer.clip_grad_norm(clip_grad if clip_grad else float("inf"))

    def save(self, directory: Path) -> None:
        self.optimizer.consolidate_state_dict(recipient_rank=0)  # collective
        if dist.get_rank() == 0:
            state = {
                "model": self.module.state_dict(),
                "optim": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
            }
            torch.save(state, directory / FAIRSCALE_FILE)
        dist.barrier()

    def load(self, directory: Path) -> None:
        state = torch.load(directory / FAIRSCALE_FILE, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])
        self.scaler.load_state_dict(state["scaler"])
