"""Experiment tracking from rank 0: W&B (imported lazily) and ``metrics.jsonl`` in the run directory.

W&B runs offline unless an API key is configured, so a laptop or an air-gapped cluster needs no
network (``wandb sync`` uploads later). The run id lives in the trainer state, so a resumed job
logs to the same run.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from pathlib import Path
from typing import Any

from train.config import WandbConfig

log = logging.getLogger(__name__)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(cfg: WandbConfig) -> str:
    if not cfg.enabled:
        return "disabled"
    if cfg.mode != "auto":
        return cfg.mode
    return os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")


class Tracker:
    """Logs scalars and images; a no-op on ranks other than 0."""

    def __init__(
        self,
        cfg: WandbConfig,
        *,
        run_dir: Path,
        run_name: str,
        config: dict[str, Any],
        run_id: str | None,
        active: bool,
    ) -> None:
        self.active = active
        self.run_dir = run_dir
        self.run = None
        self.run_id = run_id
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in finish()
        mode = wandb_mode(cfg)
        if mode == "disabled":
            return
        import wandb

        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or run_name,
            tags=list(cfg.tags),
            config=config,
            dir=str(run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            mode=mode,
        )
        self.run_id = self.run.id
        log.info("W&B run %s (%s) in %s", self.run.id, mode, self.run.dir)

    def _wandb(self, call, *args, **kwargs) -> None:
        """W&B is best-effort: its service process can die first (SLURM signals the whole job
        step), and losing a dashboard update must never cost the run or its preemption save.
        metrics.jsonl keeps every value."""
        if self.run is None:
            return
        try:
            call(*args, **kwargs)
        except Exception as err:
            log.warning(
                "W&B stopped working (%s: %s); metrics continue in metrics.jsonl", type(err).__name__, err
            )
            self.run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()
        if self.run is not None:
            self._wandb(self.run.log, metrics, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.active and self.run is not None:
            import wandb

            self._wandb(self.run.log, {key: wandb.Image(str(path))}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.active and self.run is not None:
            self._wandb(self.run.summary.update, values)

    def finish(self) -> None:
        if not self.active:
            return
        self._metrics.close()
        if self.run is not None:
            self._wandb(self.run.finish)
