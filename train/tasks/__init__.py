"""Tasks: SimMIM pretraining, supervised fine-tuning, evaluation."""

from train.config import RunConfig

from .base import Task
from .classification import ClassificationTask, evaluate
from .simmim import SimMIMTask, reconstruct, save_reconstruction_grid


def build_task(cfg: RunConfig) -> Task:
    return SimMIMTask(cfg) if cfg.task.name == "simmim" else ClassificationTask(cfg)


__all__ = [
    "ClassificationTask",
    "SimMIMTask",
    "Task",
    "build_task",
    "evaluate",
    "reconstruct",
    "save_reconstruction_grid",
]
