"""``swinv2-train`` / ``python -m train``: run one experiment from the Hydra config in configs/.

swinv2-train experiment=demo_finetune
torchrun --nproc_per_node=8 -m train experiment=simmim_swinv2_base_192 strategy=ddp
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from swinv2 import CheckpointError
from train.config import ConfigError, RunConfig, register_configs, resolve_device, validate
from train.data import BadDataError
from train.distributed import init_distributed, shutdown, world_size_from_env
from train.evaluate import run_evaluation
from train.preemption import REQUEUE_EXIT_CODE, Preempted
from train.trainer import TrainingDiverged, run_training

# Errors a user can cause and fix: one line on stderr, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, BadDataError, TrainingDiverged)

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
log = logging.getLogger("train")


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s][rank {rank}][%(name)s] %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def run(raw: DictConfig) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rank)
    try:
        cfg: RunConfig = OmegaConf.to_object(raw)
        validate(cfg, world_size_from_env())
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    # run_dir/config.yaml is written by the task once the run is accepted: a refused command
    # (e.g. a fresh start in a directory that holds checkpoints) must not replace its record.
    resolved = OmegaConf.to_container(raw, resolve=True)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    env = init_distributed(resolve_device(cfg))
    try:
        if cfg.task.name == "eval":
            result = run_evaluation(cfg, env, resolved)
        else:
            result = run_training(cfg, env, resolved)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Preempted as stop:
        log.warning("%s", stop)
        sys.exit(REQUEUE_EXIT_CODE)
    finally:
        shutdown()
    if env.is_main:
        (run_dir / f"result_{cfg.task.name}.json").write_text(json.dumps(result, indent=2))
        log.info("run directory: %s", run_dir.resolve())
    return result


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
def _app(raw: DictConfig) -> None:
    run(raw)


def main() -> None:
    register_configs()
    _app()


if __name__ == "__main__":
    main()
