"""Shared by the tests that launch real runs: a tiny synthetic run (start-up dominates its cost)
and the bitwise comparison of checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from train.checkpoint import DCP_DIR, checkpoint_dirs

TINY_MODEL = [
    "model.img_size=32",
    "model.embed_dim=16",
    "model.depths=[1,1]",
    "model.num_heads=[1,2]",
    "model.window_size=4",
]
# 64 synthetic images, 10 classes, 8 per step: an epoch is 8 steps.
TINY_RUN = [
    "data=synthetic",
    "data.synthetic_samples=64",
    "data.num_classes=10",
    *TINY_MODEL,
    "batch_size=8",
    "wandb.mode=offline",
]
# The same on 2 ranks, started by a launcher (torchrun, srun).
TINY_DDP_RUN = [
    *TINY_RUN,
    "data.num_workers=0",
    "optim.warmup_epochs=0",
    "optim.warmup_steps=2",
    "optim.scale_lr=false",
    "optim.base_lr=2e-3",
    "log_every=2",
    "strategy=ddp",
]


def newest_state(run_dir: Path) -> dict:
    """Model and optimizer tensors of the newest checkpoint of ``run_dir``, gathered from DCP."""
    return _load_state_dict_from_keys(checkpoint_id=str(checkpoint_dirs(run_dir)[-1] / DCP_DIR))


def assert_bitwise_equal(a, b, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}/{i}")
    else:
        assert a == b, f"{path}: {a} != {b}"
