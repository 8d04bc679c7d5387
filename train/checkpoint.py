"""Checkpoints of a run: ``RUN_DIR/checkpoints/step_00001234/checkpoint.pt``.

Each one is written to a temporary directory and renamed into place, so a checkpoint directory
is complete or absent; a kill at any moment leaves the previous one loadable. Files are read with
``torch.load(weights_only=True)``: nothing is unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from swinv2 import CheckpointError

log = logging.getLogger(__name__)

FILE = "checkpoint.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / FILE).is_file())


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], *, keep_last: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(payload, tmp / FILE)
    if final.exists():  # the same step saved again (e.g. a resumed run ending at it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file, a checkpoint directory, or a run directory (its newest)."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / FILE).is_file():
        return p / FILE
    found = checkpoint_dirs(p)
    if found:
        return found[-1] / FILE
    raise CheckpointError(
        f"{path}: no checkpoint there (expected a file, a step_* directory, or a run directory)"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = resolve_checkpoint(path)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or not ours
        raise CheckpointError(f"{file}: not a readable checkpoint ({type(err).__name__}: {err})") from None
