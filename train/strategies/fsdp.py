"""`fsdp`: torch FSDP2 (``fully_shard``) per block and per PatchMerging, then the root.

Parameters, gradients and optimizer state are sharded over all ranks (ZeRO-3; with
``reshard_after_forward=false`` the gathered parameters stay until backward: ZeRO-2 traffic).

Initialisation: the model is built on the meta device, sharded, then ``to_empty`` allocates only
each rank's shards on the target device and ``init_weights()`` fills them and recomputes the
buffers, so no rank ever holds the whole model. With ``task.init_from`` every rank instead builds
the whole model on the CPU with the pretrained weights, and sharding keeps only its own slices
(host memory for one full copy per rank, once; device memory stays sharded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from train.parallelize import apply_fsdp

from .base import OptimizerFactory, TorchStrategy


class FSDPStrategy(TorchStrategy):
    def __init__(
        self,
        device: torch.device,
        precision: str,
        *,
        reshard_after_forward: bool,
        cpu_offload: bool,
        pretrained: bool,
    ) -> None:
        super().__init__(device, precision)
        self.param_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.pretrained = pretrained

    @property
    def module(self) -> nn.Module:
        return self.model  # fully_shard changes modules in place

    def build_model(self, build: Callable[[str], nn.Module]) -> nn.Module:
        return build("cpu" if self.pretrained else "meta")

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> None:
        on_meta = any(p.is_meta for p in model.parameters())
        apply_fsdp(
            model,
            param_dtype=self.param_dtype,
            reshard_after_forward=self.reshard_after_forward,
            cpu_offload=self.cpu_offload,
        )
        if on_meta:
            # With CPU offload the shards live on the CPU and FSDP copies them to the GPU per block.
            model.to_empty(device="cpu" if self.cpu_offload else self.device)
            model.init_weights()  # shards only; buffers are recomputed next to the parameters
        if self.cpu_offload:
            for module in model.modules():  # buffers are not offloaded: the forward needs them on the GPU
                for name, buf in module.named_buffers(recurse=False):
                    setattr(module, name, buf.to(self.device))
        self.model = model
        self.optimizer = make_optimizer(model)

    @contextlib.contextmanager
    def accumulate(self, sync: bool) -> Iterator[None]:
        # Without sync the unsharded gradients accumulate locally; the last micro-batch reduce-scatters.
        self.model.set_requires_gradient_sync(sync)
        yield

    def grad_norm(self, clip_grad: float | None) -> torch.Tensor:
        norm = super().grad_norm(clip_grad)  # clip_grad_norm_ reduces the norm over the shards
        return norm.full_tensor() if isinstance(norm, DTensor) else norm
