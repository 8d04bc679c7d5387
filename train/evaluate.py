"""task=eval: accuracy of a checkpoint in any layout, or throughput (images/s) at a batch size."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from swinv2 import CheckpointError
from train.checkpoint import checkpoint_dirs
from train.config import ConfigError, RunConfig
from train.data import build_loader
from train.distributed import DistEnv, all_reduce_sum
from train.tasks import ClassificationTask, evaluate
from train.trainer import autocast_for, write_config_record

log = logging.getLogger(__name__)


# Heads that make the checkpoint's accuracy meaningful (see swinv2.LoadReport.head).
USABLE_HEADS = ("loaded", "sliced_22k_to_1k")


def run_evaluation(
    cfg: RunConfig, env: DistEnv, resolved_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``resolved_config`` is recorded in run_dir once the checkpoint was accepted (config.yaml, or
    config_eval.yaml in a training run's directory, whose own record it must not replace)."""
    task = ClassificationTask(cfg)
    if cfg.task.throughput:  # speed does not depend on the weights
        model = task.build_model(device="cpu")
    else:
        model = _build_with_usable_head(task, cfg)
    model = model.to(env.device).eval()
    if env.is_main and resolved_config:
        run_dir = Path(cfg.run_dir)
        name = "config_eval.yaml" if checkpoint_dirs(run_dir) else "config.yaml"
        write_config_record(run_dir / name, resolved_config)
    autocast = autocast_for(cfg, env.device)
    batch = cfg.batch_size // env.world_size
    if cfg.task.throughput:
        return _throughput(model, cfg, env, batch, autocast)
    loader = build_loader(
        cfg.data,
        task="eval",
        img_size=model.img_size[0],
        batch_size=batch,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.seed,
        aug=cfg.data.aug,
        mask=cfg.data.mask,
    )
    metrics = evaluate(model, loader, env.device, autocast)
    if env.is_main:
        log.info(
            "eval %s on %d images: top-1 %.2f%%, top-5 %.2f%%, loss %.4f",
            cfg.task.init_from,
            metrics["samples"],
            metrics["top1"],
            metrics["top5"],
            metrics["loss"],
        )
    return metrics


def _build_with_usable_head(task: ClassificationTask, cfg: RunConfig) -> torch.nn.Module:
    """The model with task.init_from's weights; raises unless its head was loaded (or mapped
    22k->1k): a fresh head would report chance-level accuracy as the checkpoint's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*the head is re-initialised")  # the error below says it
        model = task.build_model(device="cpu")
    report = task.load_report
    path, classes = cfg.task.init_from, cfg.data.num_classes
    if report is None or report.head in USABLE_HEADS:
        return model
    if report.head in ("dropped", "none"):
        raise ConfigError(
            f"data.num_classes={classes} builds a model without a classification head; task=eval needs one: "
            "set data.num_classes to the checkpoint's number of classes"
        )
    if report.head == "fresh":
        raise CheckpointError(
            f"task.init_from={path} has no classification head (a SimMIM or feature-only checkpoint), so its "
            f"accuracy would be chance level; fine-tune it first: task=finetune task.init_from={path}"
        )
    raise ConfigError(
        f"task.init_from={path} has a head for {report.head_classes} classes but data.num_classes={classes}; "
        f"set data.num_classes={report.head_classes} (only a 21841-class head maps to 1000 classes)"
    )


@torch.no_grad()
def _throughput(model, cfg: RunConfig, env: DistEnv, batch: int, autocast) -> dict[str, Any]:
    images = torch.randn(batch, model.in_chans, *model.img_size, device=env.device)
    for _ in range(3):  # warm-up: allocator, kernels
        with autocast():
            model(images)
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(cfg.task.throughput_steps):
        with autocast():
            model(images)
    if env.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    total = all_reduce_sum(torch.tensor([batch * cfg.task.throughput_steps / seconds], dtype=torch.float64))
    result = {"images_per_s": total.item(), "batch_per_rank": batch, "precision": cfg.precision}
    if env.is_main:
        log.info(
            "throughput: %.1f images/s (%d ranks x batch %d, %s)",
            total.item(),
            env.world_size,
            batch,
            cfg.precision,
        )
    return result
