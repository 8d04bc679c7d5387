"""The typed config schema of a run, registered with Hydra's ConfigStore, and its validation.

YAML groups under ``configs/`` supply values; unknown keys are rejected by the schema itself.
``validate`` checks everything else a user can get wrong *before* any process group or data
loader starts, and raises ``ConfigError`` with one line naming the setting and a valid choice.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from swinv2 import ATTN_IMPLS, list_models
from train.data.config import SOURCES, DataConfig

TASKS = ("simmim", "finetune", "eval")
STRATEGIES = (
    "single", "ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "fairscale"
)  # fmt: skip
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "multistep")


class ConfigError(ValueError):
    """A setting the user can fix; the message names it."""


@dataclass
class ModelConfig:
    """A registered variant plus optional overrides of its constructor arguments (null: keep)."""

    name: str = "swinv2_tiny_window8_256"
    img_size: int | None = None
    patch_size: int | None = None
    in_chans: int | None = None
    embed_dim: int | None = None
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    window_size: Any = None  # int, or one per stage
    pretrained_window_sizes: Any = None  # int, or one per stage (0: none)
    drop_path_rate: float | None = None
    attn_impl: Any = None  # sdpa | math | sequential, or one per stage
    chunk_windows: int | None = None  # windows per chunk of sequential attention
    extra_norm_every: int | None = None

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "name" and v is not None}


@dataclass
class TaskConfig:
    name: str = "finetune"  # simmim | finetune | eval
    # Weights to start from (finetune) or to evaluate (eval): any layout swinv2.load_pretrained reads.
    init_from: str | None = None
    # SimMIM: regress pixels normalised by their local mean/std (the SwinV2 recipe)
    norm_target: bool = True
    norm_target_window: int = 47
    # SimMIM: save/log an input | masked | reconstruction grid every N steps (0: never)
    vis_every: int = 0
    # finetune: evaluate every N epochs and at the end of the run (0: only at the end)
    eval_every: int = 1
    # eval: measure images/s at this per-rank batch instead of accuracy
    throughput: bool = False
    throughput_steps: int = 20


@dataclass
class OptimConfig:
    """AdamW with the released recipes' schedule; LRs are for a total batch of 512."""

    base_lr: float = 5e-4
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    scale_lr: bool = True  # lr = base_lr * total_batch / 512
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    clip_grad: float | None = 5.0
    layer_decay: float | None = None  # layer-wise LR decay (SimMIM fine-tuning: 0.75)
    schedule: str = "cosine"  # cosine | multistep
    warmup_epochs: float = 20
    warmup_steps: int | None = None  # overrides warmup_epochs (the SwinV2-G recipe: 30k)
    decay_epochs: list[int] = field(default_factory=list)  # multistep milestones
    decay_rate: float = 0.1
    accum_steps: int = 1
    ema_decay: float | None = None  # e.g. 0.9998; null: no EMA
    max_nonfinite: int = 20  # consecutive skipped non-finite steps before the run stops


@dataclass
class StrategyConfig:
    """How the model is distributed and which memory features are applied (see train/parallelize.py)."""

    name: str = "single"  # single | ddp | fsdp | deepspeed_zero1/2/3 | fairscale
    find_unused_parameters: bool = False  # ddp
    # Non-reentrant checkpointing of every block of the stages marked true, e.g. [true, true, true, false].
    activation_checkpointing: list[bool] | None = None
    compile: bool = False  # torch.compile per block (after checkpointing, before sharding)
    reshard_after_forward: bool = True  # fsdp: free gathered params after forward (ZeRO-3); false: ZeRO-2
    cpu_offload: bool = False  # fsdp: params, grads and optimizer state live on the CPU
    # deepspeed_*: a plain DeepSpeed config; batch sizes, precision and clipping left "auto" are
    # filled from the experiment (a value given explicitly must agree with it).
    deepspeed: dict[str, Any] | None = None


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "swinv2-train"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    # offline unless an API key is configured (WANDB_API_KEY or ~/.netrc); online / offline force it
    mode: str = "auto"


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also every N optimizer steps (0: at every epoch end and at the end only)
    keep_last: int = 2  # the newest N checkpoints are kept (0: keep every one)
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: none)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    name: str = "run"
    run_dir: str = "runs/run"
    resume: str | None = None  # auto | PATH
    epochs: float = 300
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    batch_size: int = 1024  # total over all ranks and accumulation steps
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 0
    log_every: int = 10  # log train/ metrics every N optimizer steps (>= 1) and at the last step
    device: str = "auto"  # auto | cpu | cuda


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def _choice(value: Any, choices: tuple[str, ...], setting: str) -> None:
    if value not in choices:
        raise ConfigError(f"{setting}={value!r} is not valid; choose one of {', '.join(choices)}")


def _existing(path: str, setting: str) -> None:
    if path and not path.startswith(("pipe:", "http://", "https://", "s3://", "gs://")):
        if "{" not in path and "*" not in path and not Path(path).exists():
            raise ConfigError(f"{setting}={path!r} does not exist")


def model_kwargs(cfg: RunConfig, num_classes: int) -> dict[str, Any]:
    return {"num_classes": num_classes, **cfg.model.overrides()}


def validate(cfg: RunConfig, world_size: int) -> None:
    """Raise ConfigError on the first setting that cannot work."""
    _choice(cfg.task.name, TASKS, "task.name")
    _choice(cfg.precision, PRECISIONS, "precision")
    _choice(cfg.optim.schedule, SCHEDULES, "optim.schedule")
    _choice(cfg.data.source, SOURCES, "data.source")
    _choice(cfg.wandb.mode, ("auto", "online", "offline", "disabled"), "wandb.mode")
    _choice(cfg.device, ("auto", "cpu", "cuda"), "device")
    if cfg.model.name not in list_models():
        import difflib

        close = difflib.get_close_matches(cfg.model.name, list_models(), n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose one of {', '.join(list_models())}"
        raise ConfigError(f"model.name={cfg.model.name!r} is unknown; {hint}")
    impls = cfg.model.attn_impl
    for impl in [impls] if isinstance(impls, str) else impls or []:
        _choice(impl, ATTN_IMPLS, "model.attn_impl")

    # Building on the meta device checks windows, heads and image size without allocating.
    from swinv2 import build_model

    try:
        model = build_model(cfg.model.name, device="meta", **model_kwargs(cfg, cfg.data.num_classes))
    except ValueError as err:
        raise ConfigError(f"model ({cfg.model.name}): {err}") from None

    if cfg.optim.accum_steps < 1:
        raise ConfigError(f"optim.accum_steps={cfg.optim.accum_steps} is not valid; use 1 or more")
    per_step = world_size * cfg.optim.accum_steps
    if cfg.batch_size < per_step or cfg.batch_size % per_step:
        raise ConfigError(
            f"batch_size={cfg.batch_size} does not divide by world size {world_size} x optim.accum_steps "
            f"{cfg.optim.accum_steps}; use a multiple of {per_step}"
        )
    _validate_mixup_batch(cfg, world_size)
    _validate_intervals(cfg)
    if cfg.task.name == "simmim":
        mask = cfg.data.mask
        size = model.img_size
        if mask.model_patch_size != model.patch_size:
            raise ConfigError(
                f"data.mask.model_patch_size={mask.model_patch_size} must equal the model's patch_size "
                f"{model.patch_size}"
            )
        if any(s % mask.mask_patch_size for s in size) or mask.mask_patch_size % model.patch_size:
            raise ConfigError(
                f"data.mask.mask_patch_size={mask.mask_patch_size} must divide the image size {size[0]} and be "
                f"a multiple of the patch size {model.patch_size}"
            )
        if not 0 < mask.mask_ratio < 1:
            raise ConfigError(f"data.mask.mask_ratio={mask.mask_ratio} must be in (0, 1)")
    if cfg.task.name == "eval" and not cfg.task.init_from and not cfg.task.throughput:
        raise ConfigError("task=eval needs task.init_from=PATH (a checkpoint in any supported layout)")
    if cfg.data.source != "synthetic":
        needs_train = cfg.task.name != "eval"
        if needs_train and not cfg.data.train_path:
            raise ConfigError(f"data.train_path is empty; set it to the {cfg.data.source} training data")
        if needs_train:
            _existing(cfg.data.train_path, "data.train_path")
        if cfg.task.name != "simmim" and cfg.data.val_path:
            _existing(cfg.data.val_path, "data.val_path")
        if cfg.task.name == "eval" and not cfg.data.val_path:
            raise ConfigError("task=eval needs data.val_path")
    if cfg.task.init_from:
        _existing(cfg.task.init_from, "task.init_from")
    if cfg.resume not in (None, "auto"):
        _existing(cfg.resume, "resume")
    if cfg.epochs <= 0 and not cfg.max_steps:
        raise ConfigError("epochs must be > 0 (or set max_steps)")
    if cfg.optim.clip_grad is not None and not math.isfinite(cfg.optim.clip_grad):
        raise ConfigError("optim.clip_grad must be a finite number or null")
    if cfg.precision == "fp16" and resolve_device(cfg) == "cpu":
        raise ConfigError("precision=fp16 needs a GPU; use precision=bf16 on CPU")
    _validate_strategy(cfg, world_size, num_stages=len(model.layers))


def _validate_mixup_batch(cfg: RunConfig, world_size: int) -> None:
    """timm's Mixup/CutMix mixes a batch with its reverse and needs an even micro batch per rank."""
    aug = cfg.data.aug
    per_step = world_size * cfg.optim.accum_steps
    micro = cfg.batch_size // per_step
    if cfg.task.name == "finetune" and (aug.mixup > 0 or aug.cutmix > 0) and micro % 2:
        raise ConfigError(
            f"batch_size={cfg.batch_size} gives an odd micro batch of {micro} per rank (world size {world_size} x "
            f"optim.accum_steps {cfg.optim.accum_steps}); data.aug.mixup/cutmix need an even one: use "
            f"batch_size={(micro + 1) * per_step}, or data.aug.mixup=0 data.aug.cutmix=0"
        )


# Step and epoch intervals the loop takes modulo, and what 0 means for each.
_INTERVALS = {
    "task.eval_every": "only at the end of the run",
    "task.vis_every": "never",
    "checkpoint.every_steps": "at epoch ends only",
    "checkpoint.keep_last": "keep every checkpoint",
    "checkpoint.keep_every": "none",
}


def _validate_intervals(cfg: RunConfig) -> None:
    if cfg.log_every < 1:
        raise ConfigError(
            f"log_every={cfg.log_every} is not valid; use 1 or more (optimizer steps between logs)"
        )
    for setting, zero in _INTERVALS.items():
        group, key = setting.split(".")
        value = getattr(getattr(cfg, group), key)
        if value < 0:
            raise ConfigError(f"{setting}={value} is not valid; use 0 ({zero}) or a positive number")


def _validate_strategy(cfg: RunConfig, world_size: int, *, num_stages: int) -> None:
    s = cfg.strategy
    _choice(s.name, STRATEGIES, "strategy.name")
    on_cpu = resolve_device(cfg) == "cpu"
    if s.name == "single" and world_size > 1:
        raise ConfigError(f"strategy=single runs one process but WORLD_SIZE={world_size}; use strategy=ddp")
    if s.activation_checkpointing is not None and len(s.activation_checkpointing) != num_stages:
        raise ConfigError(
            f"strategy.activation_checkpointing has {len(s.activation_checkpointing)} entries; the model has "
            f"{num_stages} stages (e.g. [true, true, true, false])"
        )
    sharded = s.name == "fsdp" or s.name == "deepspeed_zero3"
    if sharded and cfg.optim.ema_decay:
        raise ConfigError(
            f"optim.ema_decay needs whole parameters on every rank; strategy={s.name} shards them"
        )
    if s.name == "fsdp" and s.cpu_offload and on_cpu:
        raise ConfigError("strategy.cpu_offload moves parameters off a GPU; on CPU set it to false")
    if s.name.startswith("deepspeed"):
        _validate_deepspeed(cfg, world_size, on_cpu=on_cpu)
    if s.name == "fairscale":
        if importlib.util.find_spec("fairscale") is None:
            raise ConfigError("strategy=fairscale needs the optional extra: pip install -e '.[fairscale]'")


def _validate_deepspeed(cfg: RunConfig, world_size: int, *, on_cpu: bool) -> None:
    s = cfg.strategy
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"strategy={s.name} needs deepspeed: pip install deepspeed")
    if not s.deepspeed:
        raise ConfigError(
            f"strategy={s.name} has no 'deepspeed:' section; use configs/strategy/{s.name}.yaml"
        )
    zero = s.deepspeed.get("zero_optimization", {})
    stage = int(s.name[-1])
    if zero.get("stage") != stage:
        raise ConfigError(
            f"strategy={s.name} has zero_optimization.stage={zero.get('stage')}; it must be {stage}"
        )
    offloaded = [
        k for k in ("offload_optimizer", "offload_param") if zero.get(k, {}).get("device", "none") != "none"
    ]
    if offloaded and on_cpu:
        raise ConfigError(
            f"zero_optimization.{offloaded[0]} moves state off a GPU; on CPU use strategy={s.name}"
        )
    if s.compile and stage == 3:
        raise ConfigError(
            "strategy.compile with deepspeed_zero3 is not supported; use strategy=fsdp to compile"
        )
    from train.strategies.deepspeed_zero import deepspeed_config

    deepspeed_config(cfg, world_size)  # raises where the DeepSpeed config disagrees with the experiment


def resolve_device(cfg: RunConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
