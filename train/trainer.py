"""The step-based training loop shared by every task and strategy.

One optimizer step = ``optim.accum_steps`` micro-batches of ``batch_size / (world * accum)``
images per rank. The loop's progress lives in ``TrainState``; checkpoints save it with the model,
optimizer, schedule, scaler, EMA, every rank's data position and RNG, and the W&B run id.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3
from tqdm import tqdm

from swinv2 import CheckpointError
from train.checkpoint import Checkpointer, read_trainer_state
from train.config import ConfigError, RunConfig
from train.data import build_loader
from train.data.loader import StreamLayoutError
from train.distributed import DistEnv, all_reduce_sum, broadcast_object
from train.optim import build_optimizer, build_scheduler
from train.parallelize import apply_activation_checkpointing, apply_compile
from train.preemption import Preempted, PreemptionWatch
from train.state import TrainState, rng_state, seed_all, set_rng_state
from train.strategies import build_strategy
from train.tasks import build_task, evaluate, reconstruct, save_reconstruction_grid
from train.tracking import Tracker

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


def write_config_record(path: Path, resolved_config: dict[str, Any]) -> None:
    """The run's resolved config as YAML: written only once the run was accepted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(resolved_config))


def autocast_for(cfg: RunConfig, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Trainer:
    def __init__(self, cfg: RunConfig, env: DistEnv, resolved_config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.env = env
        self.run_dir = Path(cfg.run_dir)
        self.resolved_config = resolved_config
        self.task = build_task(cfg)
        self.autocast = autocast_for(cfg, env.device)
        self.micro_batch = cfg.batch_size // (env.world_size * cfg.optim.accum_steps)
        self.state = TrainState()
        self.checkpointer = Checkpointer(
            self.run_dir,
            keep_last=cfg.checkpoint.keep_last,
            keep_every=cfg.checkpoint.keep_every,
            is_main=env.is_main,
        )
        self._saved_at: tuple[int, int] | None = None  # (step, epoch) of the last checkpoint

    # ----------------------------------------------------------------- setup
    def _loader(self, split: str):
        cfg, env = self.cfg, self.env
        task = self.task.loader_task if split == "train" else "eval"
        return build_loader(
            cfg.data,
            task=task,
            img_size=self._img_size(),
            batch_size=self.micro_batch,
            rank=env.rank,
            world_size=env.world_size,
            seed=cfg.seed,
            aug=cfg.data.aug,
            mask=cfg.data.mask,
        )

    def _img_size(self) -> int:
        from swinv2 import model_config

        size = model_config(self.cfg.model.name, **self.cfg.model.overrides())["img_size"]
        return size if isinstance(size, int) else size[0]

    def setup(self) -> None:
        cfg, env = self.cfg, self.env
        seed_all(cfg.seed)  # identical initial weights on every rank
        self.train_loader = self._loader("train")
        self.val_loader = self._loader("val") if cfg.task.name == "finetune" and cfg.data.val_path else None
        self.steps_per_epoch = len(self.train_loader) // cfg.optim.accum_steps
        if self.steps_per_epoch == 0:
            raise ConfigError(self._too_few_batches())
        total = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total

        self.strategy = build_strategy(cfg, env)
        model = self.strategy.build_model(self.task.build_model)
        # Memory features wrap blocks before the strategy shards them (see train/parallelize.py).
        if cfg.strategy.activation_checkpointing:
            apply_activation_checkpointing(model, cfg.strategy.activation_checkpointing)
        if cfg.strategy.compile:
            apply_compile(model)
        self.strategy.setup(model, lambda m: build_optimizer(m, cfg.optim, total_batch=cfg.batch_size))
        self.scheduler = build_scheduler(
            self.strategy.optimizer,
            cfg.optim,
            total_batch=cfg.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            epochs=cfg.epochs,
        )
        self.ema = (
            ModelEmaV3(self.strategy.module, decay=cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        )
        seed_all(cfg.seed + env.rank)  # per-rank augmentation / drop-path randomness
        self._maybe_resume()
        if env.is_main and self.resolved_config:
            # Only now: a refused or failed resume must leave the existing run's record as it was.
            write_config_record(self.run_dir / "config.yaml", self.resolved_config)
        self.scheduler.step_update(self.state.step)
        self.tracker = Tracker(
            cfg.wandb,
            run_dir=self.run_dir,
            run_name=cfg.name,
            config=self.resolved_config,
            run_id=self.state.wandb_run_id,
            active=env.is_main,
        )
        self.state.wandb_run_id = broadcast_object(self.tracker.run_id)

    def _too_few_batches(self) -> str:
        cfg, batches, accum = self.cfg, len(self.train_loader), self.cfg.optim.accum_steps
        text = (
            f"optim.accum_steps={accum} needs {accum} micro batches per rank in an epoch, but the training data "
            f"gives {batches} of {self.micro_batch} per rank (batch_size={cfg.batch_size}); "
        )
        fits = batches * self.micro_batch // accum  # the largest micro batch that fills `accum` steps
        if getattr(self.task, "mixup", None) is not None:
            fits -= fits % 2
        if fits:
            step = self.env.world_size * accum
            text += f"use batch_size={fits * step} (or a smaller multiple of {step}), "
        return text + "lower optim.accum_steps, or add data"

    def _maybe_resume(self) -> None:
        path = self.checkpointer.resolve(self.cfg.resume)
        if path is None:
            return
        ckpt = read_trainer_state(path)
        try:
            self.strategy.load(path)
        except Exception as err:
            raise CheckpointError(
                f"{path}: cannot restore model/optimizer ({type(err).__name__}: {err})"
            ) from err
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and "ema" in ckpt:
            self.ema.load_state_dict(ckpt["ema"])
        self.state.load_state_dict(ckpt["state"])
        ranks = ckpt["ranks"]
        if len(ranks) == self.env.world_size:
            try:
                self.train_loader.load_state_dict(ranks[self.env.rank]["data"])
            except StreamLayoutError as err:
                raise ConfigError(self._layout_mismatch(path, err, ckpt.get("config") or {})) from None
            set_rng_state(ranks[self.env.rank]["rng"])
        else:
            log.warning(
                "checkpoint was written by %d ranks, this run has %d: model and optimizer reshard, but the data "
                "stream restarts epoch %d from its first sample",
                len(ranks),
                self.env.world_size,
                self.state.epoch,
            )
        self._saved_at = (self.state.step, self.state.epoch)
        log.info("resumed from %s at step %d (epoch %d)", path, self.state.step, self.state.epoch)

    def _layout_mismatch(self, path: Path, err: StreamLayoutError, saved_config: dict[str, Any]) -> str:
        """Which settings must match the checkpoint's for its data position to mean the same samples."""
        saved, now = err.saved, err.current
        fixes = []
        if saved.get("num_workers") != now["num_workers"]:
            workers = (saved_config.get("data") or {}).get("num_workers")  # as set (0 and 1 read alike)
            if workers is None or max(1, workers) != saved.get("num_workers"):
                workers = saved.get("num_workers")
            fixes.append(f"data.num_workers={workers} (this run: {self.cfg.data.num_workers})")
        if saved.get("batch_size") != now["batch_size"]:
            old = saved_config.get("batch_size"), (saved_config.get("optim") or {}).get("accum_steps")
            setting = (
                f"batch_size={old[0]} and optim.accum_steps={old[1]}"
                if None not in old
                else "batch_size / optim.accum_steps"
            )
            fixes.append(
                f"{setting} (a micro batch of {saved.get('batch_size')} per rank; this run: {now['batch_size']})"
            )
        if saved.get("seed") != now["seed"]:
            fixes.append(f"seed={saved.get('seed')} (this run: {now['seed']})")
        if (saved.get("samples"), saved.get("units")) != (now["samples"], now["units"]):
            fixes.append(
                f"the data.train_path it was saved with ({saved.get('units')} shards, {saved.get('samples')} "
                f"samples; this run: {now['units']}, {now['samples']})"
            )
        text = (
            f"resume from {path}: its data position is for another data stream; to continue exactly, set "
            f"{', '.join(fixes) or 'the settings it was saved with'}"
        )
        if self.cfg.task.name == "finetune":
            text += f"; or start a new run_dir from its weights with task.init_from={path}"
        return text

    # ------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        state = self.state
        bar = tqdm(
            total=self.total_steps,
            initial=state.step,
            disable=not self.env.is_main,
            dynamic_ncols=True,
            desc="train",
        )
        window = {"loss": 0.0, "n": 0, "images": 0, "t": time.perf_counter()}
        with PreemptionWatch() as preemption:
            self._loop(window, bar, preemption)
        bar.close()
        return self._summary()

    def _loop(self, window: dict, bar: tqdm, preemption: PreemptionWatch) -> None:
        cfg, state = self.cfg, self.state
        while state.step < self.total_steps:
            self.train_loader.set_epoch(state.epoch)
            batches = iter(self.train_loader)
            epoch_start = time.perf_counter()
            epoch_loss = torch.zeros(2, dtype=torch.float64)
            while (
                state.step < self.total_steps
                and state.step - state.epoch * self.steps_per_epoch < self.steps_per_epoch
            ):
                loss, images, target = self._train_step(batches)
                epoch_loss += torch.tensor([loss, 1.0], dtype=torch.float64)
                window["loss"] += loss
                window["n"] += 1
                window["images"] += self.micro_batch * cfg.optim.accum_steps * self.env.world_size
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == self.total_steps:
                    self._log_window(window, bar)
                if cfg.task.vis_every and state.step % cfg.task.vis_every == 0:
                    self._save_vis(images, target)
                if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                    self.save()
                if preemption.any_rank_signalled():
                    self.save()
                    bar.close()
                    raise Preempted(state.step)
            epoch_done = state.step - state.epoch * self.steps_per_epoch >= self.steps_per_epoch
            self._end_epoch(epoch_loss, time.perf_counter() - epoch_start, finished=epoch_done)

    def _train_step(self, batches) -> tuple[float, torch.Tensor, torch.Tensor]:
        cfg, state, strategy = self.cfg, self.state, self.strategy
        accum = cfg.optim.accum_steps
        total = torch.zeros((), device=self.env.device)
        for micro in range(accum):
            images, target = next(batches)
            images = images.to(self.env.device, non_blocking=True)
            target = target.to(self.env.device, non_blocking=True)
            with strategy.accumulate(sync=micro == accum - 1):
                with self.autocast():
                    loss = self.task.loss(strategy.model, images, target)
                strategy.backward(loss / accum)
            total += loss.detach().float() / accum
        result = strategy.step(cfg.optim.clip_grad)  # syncs once for the grad norm; read the loss after it
        total = total.item()
        state.step += 1
        state.samples_seen += self.micro_batch * accum * self.env.world_size
        self.scheduler.step_update(state.step)
        if result.skipped:
            state.nonfinite_streak += 1
            state.nonfinite_total += 1
            log.warning(
                "step %d: non-finite gradient (loss %.4g): update skipped (%d in a row)",
                state.step,
                total,
                state.nonfinite_streak,
            )
            if state.nonfinite_streak >= cfg.optim.max_nonfinite:
                raise TrainingDiverged(
                    f"{state.nonfinite_streak} steps in a row had a non-finite loss or gradient (last at step "
                    f"{state.step}); lower optim.base_lr, raise optim.warmup_epochs, or use precision=bf16"
                )
        else:
            state.nonfinite_streak = 0
            if self.ema is not None:
                self.ema.update(strategy.module, step=state.step)
        self._last_grad_norm = result.grad_norm
        return total, images, target

    def _log_window(self, window: dict, bar: tqdm) -> None:
        mean = all_reduce_sum(torch.tensor([window["loss"], window["n"]], dtype=torch.float64))
        loss = (mean[0] / max(mean[1], 1)).item()
        elapsed = time.perf_counter() - window["t"]
        lr = max(g["lr"] for g in self.strategy.optimizer.param_groups)
        metrics = {
            "train/loss": loss,
            "train/lr": lr,
            "train/grad_norm": self._last_grad_norm,
            "train/images_per_s": window["images"] / max(elapsed, 1e-9),
            "train/epoch": self.state.epoch,
            "train/nonfinite_steps": self.state.nonfinite_total,
        }
        self.tracker.log(metrics, self.state.step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{metrics['train/images_per_s']:.0f}")
        window.update(loss=0.0, n=0, images=0, t=time.perf_counter())

    def _save_vis(self, images: torch.Tensor, mask: torch.Tensor, rows: int = 8) -> None:
        """Every rank reconstructs its first images (sharded strategies need all of them in the
        forward); rank 0 saves and logs its grid."""
        images, mask = images[:rows], mask[:rows]
        with self.autocast():
            pred = reconstruct(self.strategy.model, images, mask)
        if not self.env.is_main:
            return
        path = save_reconstruction_grid(
            self.strategy.module,
            images,
            mask,
            pred,
            mean=self.train_loader.mean,
            std=self.train_loader.std,
            path=self.run_dir / "vis" / f"step_{self.state.step:08d}.png",
        )
        self.tracker.log_image("simmim/reconstruction", path, self.state.step)

    def _end_epoch(self, epoch_loss: torch.Tensor, seconds: float, *, finished: bool) -> None:
        cfg, state = self.cfg, self.state
        totals = all_reduce_sum(epoch_loss.clone())
        line = f"epoch {state.epoch}: loss {totals[0] / max(totals[1], 1):.4f}, {seconds:.0f}s"
        stats = self.train_loader.stats
        if stats.get("bad"):
            line += f", {stats['bad']} bad samples skipped"
            self.tracker.log({"data/bad_samples": stats["bad"]}, state.step)
        last = state.step >= self.total_steps
        if self.val_loader is not None and (
            last or (finished and cfg.task.eval_every and (state.epoch + 1) % cfg.task.eval_every == 0)
        ):
            line += self._validate()
        if finished:
            state.epoch += 1
        self.save()
        if self.env.is_main:
            log.info(line)

    def _validate(self) -> str:
        metrics = evaluate(self.strategy.module, self.val_loader, self.env.device, self.autocast)
        logged = {f"val/{k}": v for k, v in metrics.items()}
        text = f", val top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}"
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.val_loader, self.env.device, self.autocast)
            logged.update({f"val_ema/{k}": v for k, v in ema.items()})
            text += f", EMA top-1 {ema['top1']:.2f}"
        self.tracker.log(logged, self.state.step)
        if metrics["top1"] > self.state.best.get("top1", -1.0):
            self.state.best = {"top1": metrics["top1"], "top5": metrics["top5"], "step": self.state.step}
        return text

    # ---------------------------------------------------------- checkpoints
    def save(self) -> None:
        """A checkpoint of the current step, written by every rank (once per step and epoch)."""
        if self._saved_at == (self.state.step, self.state.epoch):
            return
        ranks = _gather({"data": self.train_loader.state_dict(), "rng": rng_state()})
        payload = None
        if self.env.is_main:
            payload = {
                "scheduler": self.scheduler.state_dict(),
                "state": self.state.state_dict(),
                "ranks": ranks,
                "config": self.resolved_config,
            }
            if self.ema is not None:
                payload["ema"] = self.ema.state_dict()
        self.checkpointer.save(self.state.step, self.strategy.save, payload)
        self._saved_at = (self.state.step, self.state.epoch)

    def _summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"step": self.state.step, "run_dir": str(self.run_dir)}
        if self.state.best:
            summary.update({f"best_{k}": v for k, v in self.state.best.items()})
            if self.env.is_main:
                best = self.state.best
                log.info(
                    "best top-1 %.2f%% (top-5 %.2f%%) at step %d", best["top1"], best["top5"], best["step"]
                )
        self.tracker.summary(summary)
        self.tracker.finish()
        return summary


def run_training(cfg: RunConfig, env: DistEnv, resolved_config: dict[str, Any]) -> dict[str, Any]:
    trainer = Trainer(cfg, env, resolved_config)
    trainer.setup()
    return trainer.fit()
