"""Parallelism and memory features, applied to a SwinV2 from outside the model.

The order matters and is always the same (torchtitan's ``parallelize``):

1. :func:`apply_activation_checkpointing` wraps blocks, so the recomputed region is one block;
2. :func:`apply_compile` compiles each (possibly wrapped) block, so checkpointing is traced into it;
3. sharding: :func:`apply_fsdp` calls ``fully_shard`` per block and per PatchMerging, then on the
   root, so each block's parameters are gathered just before it runs and freed after.

Sequential self-attention is part of the model's math (``model.attn_impl`` / ``model.chunk_windows``)
and composes with all three: it only changes how a block computes its attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from swinv2.model import SwinTransformerV2


def encoder_of(model: nn.Module) -> SwinTransformerV2:
    """The SwinTransformerV2 itself, or the one inside a SimMIM wrapper."""
    encoder = getattr(model, "encoder", model)
    assert isinstance(encoder, SwinTransformerV2), f"not a SwinV2 model: {type(model).__name__}"
    return encoder


def apply_activation_checkpointing(model: nn.Module, stages: Sequence[bool]) -> None:
    """Recompute the activations of every block of the stages marked true in the backward pass.

    Non-reentrant ``torch.utils.checkpoint`` (it works with DDP, FSDP2, DeepSpeed and torch.compile,
    and preserves the RNG state so DropPath recomputes identically). Parameter names keep working:
    the wrapper forwards attributes and strips its prefix from state dicts.
    """
    encoder = encoder_of(model)
    assert len(stages) == len(encoder.layers), f"{len(stages)} flags for {len(encoder.layers)} stages"
    for stage, on in zip(encoder.layers, stages):
        if on:
            for i, block in enumerate(stage.blocks):
                stage.blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_compile(model: nn.Module) -> None:
    """``torch.compile`` each block in place (names unchanged). Blocks of one stage share shapes,
    so one graph serves a whole stage; the rest of the model (embedding, merging, head) stays eager."""
    for stage in encoder_of(model).layers:
        for block in stage.blocks:
            block.compile()


def apply_fsdp(
    model: nn.Module,
    *,
    param_dtype: torch.dtype | None,
    reshard_after_forward: bool,
    cpu_offload: bool,
) -> None:
    """FSDP2 ``fully_shard`` per block and per PatchMerging, then the root (patch embedding, final
    norm, head or SimMIM decoder). Gradients are reduced in fp32 even with bf16 parameters."""
    kwargs = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for stage in encoder_of(model).layers:
        for block in stage.blocks:
            fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
        if stage.downsample is not None:
            fully_shard(stage.downsample, reshard_after_forward=reshard_after_forward, **kwargs)
    # The root's parameters are used last in backward: keeping them gathered saves one all-gather.
    fully_shard(model, reshard_after_forward=False, **kwargs)
