"""Checkpoints of a run, and reading weights back out of them.

Layout: ``RUN_DIR/checkpoints/step_00001234/`` holding the strategy's own state (``dcp/``, sharded
by ``torch.distributed.checkpoint``, ``deepspeed/``, the engine's checkpoint, or ``fairscale.pt``,
fairscale's consolidated model + optimizer) and ``trainer.pt`` (schedule, trainer state, every
rank's data position and RNG, EMA, the resolved config).

Every checkpoint is written into ``.tmp_step_*`` and renamed once complete, so a kill at any moment
leaves the previous checkpoint loadable; leftovers of a killed save are removed by the next save. A
step saved again (a resumed run re-reaching it) moves the old copy to ``.replaced_step_*`` until the
new one is in place; after a kill in between, the old copy is put back.
Files are read with ``torch.load(weights_only=True)``: nothing beyond tensors and plain containers.

Resuming from a checkpoint that is not the newest moves the newer ones (an abandoned branch) into
``checkpoints/abandoned_<time>/``, so that pruning and ``resume=auto`` only see the resumed branch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from swinv2 import CheckpointError

log = logging.getLogger(__name__)

TRAINER_FILE = "trainer.pt"
DCP_DIR = "dcp"
DEEPSPEED_DIR = "deepspeed"
FAIRSCALE_FILE = "fairscale.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / TRAINER_FILE).is_file())


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Checkpointer:
    """Saves with every rank, keeps the last ``keep_last`` plus every step that is a multiple of
    ``keep_every``, and finds the checkpoint to resume from."""

    def __init__(self, run_dir: Path, *, keep_last: int, keep_every: int, is_main: bool) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.is_main = is_main

    def save(self, step: int, save_strategy, trainer_payload: dict[str, Any] | None) -> Path:
        """``save_strategy(directory)`` runs on every rank; ``trainer_payload`` is rank 0's."""
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        if self.is_main:
            self._restore_replaced()
            for stale in self.root.glob(".tmp_step_*") if self.root.is_dir() else []:
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        save_strategy(tmp)
        _barrier()
        if self.is_main:
            torch.save(trainer_payload, tmp / TRAINER_FILE)
            old = self.root / f".replaced_{final.name}"
            if final.exists():  # the same step saved again (a resumed run re-reaching it)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            self._prune()
            log.info("saved checkpoint %s", final)
        _barrier()
        return final

    def _prune(self) -> None:
        done = checkpoint_dirs(self.run_dir)
        for old in done[: -self.keep_last] if self.keep_last > 0 else []:
            step = int(_STEP_DIR.match(old.name).group(1))
            if not (self.keep_every and step % self.keep_every == 0):
                shutil.rmtree(old, ignore_errors=True)

    def _restore_replaced(self) -> None:
        """Puts back a re-saved step's old copy if a kill came before its new copy was in place."""
        for old in self.root.glob(".replaced_step_*") if self.root.is_dir() else []:
            final = self.root / old.name.removeprefix(".replaced_")
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
                log.warning("%s: its re-save was interrupted; restored the previous copy", final)

    def _abandon_newer(self, resumed: Path) -> None:
        """Moves the checkpoints newer than ``resumed`` (a branch the resumed run replaces) aside."""
        match = _STEP_DIR.match(resumed.name)
        if not match:
            return
        step = int(match.group(1))
        newer = sorted(
            p for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)) and int(m.group(1)) > step
        )
        if not newer:
            return
        aside = self.root / f"abandoned_{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(exist_ok=True)
        for p in newer:
            os.replace(p, aside / p.name)
        log.warning(
            "resuming from %s, not the newest checkpoint: moved the newer %s into %s (kept, not deleted; "
            "pruning and resume=auto no longer see them)",
            resumed.name,
            ", ".join(p.name for p in newer),
            aside,
        )

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint directory to resume from, or None to start fresh. Raises CheckpointError
        rather than silently falling back to something the user did not ask for."""
        if self.is_main:
            self._restore_replaced()
        _barrier()
        existing = checkpoint_dirs(self.run_dir)
        if resume is None:
            if existing:
                raise CheckpointError(
                    f"{self.run_dir} already holds checkpoints ({existing[-1].name}); pass resume=auto to "
                    "continue that run, or choose another run_dir"
                )
            return None
        if resume == "auto":
            if not existing:
                log.info("resume=auto: no checkpoint in %s, starting fresh", self.run_dir)
            return existing[-1] if existing else None
        path = Path(resume)
        if path.name == TRAINER_FILE:
            path = path.parent
        if not (path / TRAINER_FILE).is_file():
            raise CheckpointError(f"resume={resume}: not a complete checkpoint directory (no {TRAINER_FILE})")
        if path.resolve().parent.parent != self.run_dir.resolve():
            raise CheckpointError(
                f"resume={resume} belongs to run directory {path.resolve().parent.parent}, not {self.run_dir}; "
                f"set run_dir to that directory to continue it, or use task.init_from={resume} to start from "
                "its weights"
            )
        if self.is_main:
            self._abandon_newer(path)
        _barrier()
        return path


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    file = Path(checkpoint) / TRAINER_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or not ours
        older = [p.name for p in checkpoint_dirs(Path(checkpoint).parent.parent) if p != Path(checkpoint)]
        hint = (
            f"; to resume from the previous one pass resume={Path(checkpoint).parent / older[-1]}"
            if older
            else ""
        )
        raise CheckpointError(f"{file} is unreadable ({type(err).__name__}: {err}){hint}") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory or weights file from a file, a checkpoint directory, or a run
    directory (its newest checkpoint)."""
    p = Path(path)
    if p.is_file() or (p / TRAINER_FILE).is_file():
        return p
    found = checkpoint_dirs(p)
    if found:
        return found[-1]
    raise CheckpointError(
        f"{path}: no checkpoint there (expected a weights file, a step_* directory or a run directory)"
    )


def read_model_weights(path: str | Path) -> dict[str, torch.Tensor] | str | Path:
    """Full (unsharded) model weights of any checkpoint, on CPU, for ``swinv2.load_pretrained`` and
    export: a DCP checkpoint is gathered, a DeepSpeed one consolidated (ZeRO-3 too), a fairscale one
    read as it is (already whole); a weights file is returned as its path for the model library to read."""
    p = resolve_checkpoint(path)
    if p.is_file():
        return p
    try:
        if (p / DCP_DIR).is_dir():
            from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

            with warnings.catch_warnings():  # reading every shard in one process is the point here
                warnings.filterwarnings("ignore", message="torch.distributed is unavailable")
                return _load_state_dict_from_keys("model", checkpoint_id=str(p / DCP_DIR))["model"]
        if (p / DEEPSPEED_DIR).is_dir():
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return get_fp32_state_dict_from_zero_checkpoint(str(p / DEEPSPEED_DIR))
        if (p / FAIRSCALE_FILE).is_file():
            return torch.load(p / FAIRSCALE_FILE, map_location="cpu", weights_only=True)["model"]
    except Exception as err:
        raise CheckpointError(f"{p}: cannot read its model weights ({type(err).__name__}: {err})") from None
    raise CheckpointError(
        f"{p}: none of {DCP_DIR}/, {DEEPSPEED_DIR}/ or {FAIRSCALE_FILE} inside; is it a checkpoint of this "
        "project?"
    )
