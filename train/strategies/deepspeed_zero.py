"""`deepspeed_zero1/2/3`: DeepSpeed's ZeRO engine (the paper trained SwinV2-G with stage 1).

The config under ``configs/strategy/`` is a plain DeepSpeed config. What the experiment already
says (total and micro batch, accumulation steps, precision, gradient clipping) is filled in by
:func:`deepspeed_config`; a value written explicitly must agree, so the two cannot disagree.

DeepSpeed owns clipping, accumulation and the optimizer step: the loop's ``backward`` maps to
``engine.backward`` + ``engine.step`` per micro-batch (the engine applies the update at its own
accumulation boundary, which is the loop's), and ``step`` only reports the grad norm and whether the
engine skipped the update. The optimizer is ours (AdamW groups with weight decay and ``lr_scale``)
passed as a torch optimizer, so DeepSpeed builds no Adam of its own; the timm scheduler keeps writing the LRs
into its param groups, which ZeRO steps.

ZeRO-3 builds the model under ``deepspeed.zero.Init``, so every parameter is partitioned as soon as
its module is built; the weights are then initialised once on rank 0 with the parameters gathered
(a transient full copy per rank on the device) and scattered back. With ``task.init_from`` the
model is built whole on the CPU with the pretrained weights and partitioned by ``initialize``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from swinv2.model import SwinTransformerV2
from swinv2.simmim import SimMIM
from train.config import ConfigError, RunConfig

from .base import OptimizerFactory, StepResult, Strategy

CHECKPOINT_TAG = "deepspeed"  # engine.save_checkpoint writes DIRECTORY/deepspeed/


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """``strategy.deepspeed`` with the experiment's batch sizes, precision and clipping filled in
    where it says "auto" (or nothing); raises ConfigError where it says something else."""
    assert cfg.strategy.deepspeed is not None
    ds = copy.deepcopy(cfg.strategy.deepspeed)
    accum = cfg.optim.accum_steps
    filled: dict[str, Any] = {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch_size // (world_size * accum),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.clip_grad or 0.0,
    }
    for key, value in filled.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(
                f"strategy.deepspeed.{key}={given} disagrees with the experiment ({value}); set it to auto"
            )
        ds[key] = value
    for precision in ("bf16", "fp16"):
        section = ds.setdefault(precision, {})
        enabled = cfg.precision == precision
        if section.get("enabled", "auto") not in ("auto", enabled):
            raise ConfigError(
                f"strategy.deepspeed.{precision}.enabled={section['enabled']} disagrees with "
                f"precision={cfg.precision}; set it to auto"
            )
        section["enabled"] = enabled
    return ds


@contextlib.contextmanager
def _init_weights_deferred() -> Iterator[None]:
    """Skip the ``init_weights()`` that SwinV2 and SimMIM constructors end with: under zero.Init
    their submodules are already partitioned (empty 1-D tensors) by then."""
    classes = (SwinTransformerV2, SimMIM)
    saved = [cls.init_weights for cls in classes]
    for cls in classes:
        cls.init_weights = lambda self: None
    try:
        yield
    finally:
        for cls, fn in zip(classes, saved):
            cls.init_weights = fn


class DeepSpeedStrategy(Strategy):
    def __init__(self, device: torch.device, config: dict[str, Any], *, pretrained: bool) -> None:
        self.device = device
        self.config = config
        self.stage = int(config["zero_optimization"]["stage"])
        self.pretrained = pretrained

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def build_model(self, build: Callable[[str], nn.Module]) -> nn.Module:
        if self.stage != 3 or self.pretrained:
            return build("cpu")
        import deepspeed

        # zero.Init reads the world size from deepspeed.comm, which initialize() would set up later.
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        offload = self.config["zero_optimization"].get("offload_param", {}).get("device", "none")
        with (
            _init_weights_deferred(),
            deepspeed.zero.Init(
                config_dict_or_path=self.config, remote_device=None if offload == "none" else offload
            ),
        ):
            model = build(str(self.device))
        # Under zero.Init each module is partitioned when its constructor returns, so the model-wide
        # init_weights() runs afterwards, with the parameters gathered, once on rank 0.
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if dist.get_rank() == 0:
                model.init_weights()
        return model

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory) -> None:
        import deepspeed

        if self.pretrained or self.stage != 3:
            model.to(self.device)
        optimizer = make_optimizer(model)
        zero = self.config["zero_optimization"]
        if zero.get("offload_optimizer", {}).get("device", "none") != "none":
            # ZeRO-Offload steps on the CPU with DeepSpeed's vectorised Adam (JIT-built on first use).
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            d = optimizer.defaults
            optimizer = DeepSpeedCPUAdam(
                optimizer.param_groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], adamw_mode=True
            )
        self.model, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        self.optimizer = optimizer  # ZeRO keeps stepping this optimizer's param groups, LRs included

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        assert self.model.is_gradient_accumulation_boundary() == sync, "DeepSpeed and the loop disagree"
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss, scale_wrt_gas=False)  # the loop already divides by accum_steps
        self.model.step()  # counts the micro-batch; clips and updates only at the boundary

    def step(self, clip_grad: float | None) -> StepResult:
        norm = self.model.get_global_grad_norm()
        norm = math.nan if norm is None else float(norm)
        skipped = not self.model.was_step_applied() or not math.isfinite(norm)
        return StepResult(grad_norm=norm, skipped=skipped)

    def save(self, directory: Path) -> None:
        self.model.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        path, _ = self.model.load_checkpoint(
            str(directory), tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"{directory / CHECKPOINT_TAG}: no DeepSpeed checkpoint")
